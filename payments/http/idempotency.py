"""Idempotency keys: how a key is read and checked, the request's fingerprint, its part of the
admission round trip, and the layer that replays, refuses or stores answers.

The durable claim and the answer live in PostgreSQL (the money functions of sql/) and commit in
the same statement as the money they guard; Redis holds the fast copy and the in-flight marker."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

import structlog
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.body import canonical_json
from payments.http.errors import (
    IDEMPOTENCY_KEY_IN_USE,
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    IDEMPOTENCY_KEY_REUSED,
    PROBLEM_MEDIA_TYPE,
    ApiError,
)
from payments.http.state import RequestState, state_of
from payments.identity.tokens import Principal
from payments.platform import metrics, redis_keys
from payments.platform.redis_link import REDIS_ERRORS
from payments.services import Services

log = structlog.get_logger(__name__)
KEY_PATTERN = re.compile(r"^[\x20-\x7E]{1,255}$")


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """A request's key and fingerprint, handed from admission to the idempotency layer and the
    handler."""

    key: str
    fingerprint: bytes  # SHA-256 of method, path and canonical JSON body


def read_key(headers: Headers, *, required: bool) -> str | None:
    """The key from `Idempotency-Key` or `X-Idempotency-Key` (two spellings of one key). The IETF
    draft sends it as a structured-field string, so one pair of surrounding quotes is removed."""
    values = {_unquote(value) for name in ("idempotency-key", "x-idempotency-key")
              for value in headers.getlist(name)}  # fmt: skip
    if not values:
        if required:
            raise ApiError(
                IDEMPOTENCY_KEY_MISSING, "this request moves money: send an Idempotency-Key"
            )
        return None
    if len(values) > 1:
        raise ApiError(
            IDEMPOTENCY_KEY_INVALID, "the request carries two different idempotency keys"
        )
    key = values.pop()
    if not KEY_PATTERN.match(key):
        raise ApiError(IDEMPOTENCY_KEY_INVALID, "a key is 1 to 255 printable ASCII characters")
    return key


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def fingerprint(method: str, path: str, body: Any) -> bytes:
    return hashlib.sha256(f"{method} {path}\n{canonical_json(body)}".encode()).digest()


def plan_key(scope: Scope, state: RequestState) -> IdempotencyKey | None:
    """The request's key, when its route takes one and it has a principal to scope it to. A
    missing or malformed key becomes the request's refusal (answered once the limiter counted it)."""
    if state.rules.idempotency == "ignored" or state.principal is None or state.refusal:
        return None
    try:
        key = read_key(Headers(scope=scope), required=state.rules.idempotency == "required")
    except ApiError as error:
        state.refusal = error
        return None
    if key is None:
        return None
    payload = state.body.payload if state.body is not None else None
    return IdempotencyKey(key, fingerprint(scope["method"], scope["path"], payload))


def redis_key(principal: Principal, key: IdempotencyKey) -> str:
    return redis_keys.idempotency(principal.user_id, key.key)


@dataclass(frozen=True, slots=True)
class Answer:
    """What a money function answered: the layers outside store it in Redis when PostgreSQL
    stored it with the key, and invalidate the cached reads of the users whose books changed."""

    status: int
    body: bytes
    stored: bool
    parties: tuple[int, ...]


def stored_response(status: int, body: bytes, *, replayed: bool) -> Response:
    """An answer rendered by the database, sent as it was stored; a replay says so. An accepted
    request (202) says where to follow it: Location is its body's poll_url."""
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    location = json.loads(body).get("poll_url") if status == 202 else None
    if location is not None:
        headers["Location"] = location
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def answer_response(scope: Scope, row: Any) -> Response:
    """The response for a money function's row (status, body, replayed, stored, parties), with
    the answer left in the request state for the idempotency and cache layers."""
    body = row["body"].encode()
    parties = tuple(user_id for user_id in row["parties"] or () if user_id is not None)
    state_of(scope).answer = Answer(row["status"], body, row["stored"], parties)
    return stored_response(row["status"], body, replayed=row["replayed"])


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
        if scope["type"] != "http" or state_of(scope).idempotency_key is None:
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        admission = state.admitted()
        outcome = state.idempotency_outcome = admission.idempotency
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
        if outcome != "new":  # Redis did not answer: PostgreSQL's claim decides alone
            await self.app(scope, receive, send)
            return
        await self.run_storing(scope, receive, send, state)

    async def run_storing(
        self, scope: Scope, receive: Receive, send: Send, state: RequestState
    ) -> None:
        """Run the new request; its marker becomes the stored answer, or goes."""
        assert state.principal is not None
        assert state.idempotency_key is not None
        key_in_redis = redis_key(state.principal, state.idempotency_key)
        batch = state.after_batch()
        ttl_ms = self.services.settings.idempotency_ttl_s * 1000
        started = False

        async def send_storing(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                answer = state.answer
                if answer is not None and answer.stored:
                    batch.add("HSET", key_in_redis, "status", answer.status, "body", answer.body)
                    batch.add("PEXPIRE", key_in_redis, ttl_ms)
                else:
                    batch.add("DEL", key_in_redis)
            await send(message)

        try:
            await self.app(scope, receive, send_storing)
        except BaseException:
            if not started:  # the request failed before it answered: free the key for a retry
                with contextlib.suppress(*REDIS_ERRORS):
                    await self.services.redis.delete(key_in_redis)
            raise
