"""Idempotency: replay a finished key's answer, refuse a key in flight or reused, and keep the
fast copy of every new answer in Redis."""

from __future__ import annotations

import contextlib

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.admission import REDIS_ERRORS, Admission, AfterBatch
from payments.http.errors import IDEMPOTENCY_KEY_IN_USE, IDEMPOTENCY_KEY_REUSED, ApiError
from payments.http.idempotency import Answer, IdempotencyRequest, PreparedRequest, stored_response
from payments.platform import metrics, redis_keys
from payments.services import Services

log = structlog.get_logger(__name__)


class IdempotencyMiddleware:
    """Acts on what admission found for the request's key.

    Keeps: a finished key is replayed from Redis without touching PostgreSQL; a key in flight gets
    409 and a key reused with another request 422, whatever its state; a new request runs once, and
    its in-flight marker becomes the stored answer when PostgreSQL stored one, or is removed so the
    client may retry. Without Redis, the claim in PostgreSQL alone keeps money moving once."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        prepared: PreparedRequest | None = scope.get("payments.request")
        if scope["type"] != "http" or prepared is None:
            await self.app(scope, receive, send)
            return
        if prepared.error is not None:
            raise prepared.error
        scope["payments.body"] = prepared.payload
        principal = scope.get("payments.principal")
        if prepared.key is None or principal is None:
            await self.app(scope, receive, send)
            return
        admission: Admission = scope["payments.http.admission"]
        outcome = admission.idempotency
        scope["payments.idempotency_outcome"] = outcome
        metrics.IDEMPOTENCY_OUTCOMES.labels(outcome=outcome).inc()
        if outcome == "replay":
            response = stored_response(
                admission.stored_status, admission.stored_body, replayed=True
            )
            await response(scope, receive, send)
            return
        if outcome == "reused":
            raise ApiError(IDEMPOTENCY_KEY_REUSED, "this key was used with a different request")
        if outcome == "in_use":
            raise ApiError(IDEMPOTENCY_KEY_IN_USE, "a request with this key is still running",
                           headers={"Retry-After": "1"})  # fmt: skip

        scope["payments.http.idempotency"] = IdempotencyRequest(prepared.key, prepared.fingerprint)
        if outcome != "new":  # Redis did not answer: PostgreSQL's claim decides alone
            await self.app(scope, receive, send)
            return
        redis_key = redis_keys.idempotency(principal.user_id, prepared.key)
        batch: AfterBatch = scope["payments.after"]
        ttl_ms = self.services.settings.idempotency_ttl_s * 1000
        started = False

        async def send_storing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                answer: Answer | None = scope.get("payments.answer")
                if answer is not None and answer.stored:
                    batch.add("HSET", redis_key, "status", answer.status, "body", answer.body)
                    batch.add("PEXPIRE", redis_key, ttl_ms)
                else:
                    batch.add("DEL", redis_key)
            await send(message)

        try:
            await self.app(scope, receive, send_storing)
        except BaseException:
            if not started:  # the request failed before it answered: free the key for a retry
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.services.redis.delete(redis_key)
            raise
