"""The response cache for the reads users repeat: their account list and first history page."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.admission import Admission, AfterBatch
from payments.http.idempotency import Answer
from payments.platform import metrics, redis_keys
from payments.services import Services

VERSION_TTL_S = 86400  # longer than any entry lives, so an entry never outlives its version


class ResponseCacheMiddleware:
    """Serves a fresh entry from admission's read; fills a miss; bumps the version of every user
    a write touched before that write answers.

    Keeps: a client always reads its own writes, and a recipient sees money that arrived. Entries
    carry the version they were read under: a fill that raced a write stores an old version, which
    readers treat as a miss, so a stale page is never served."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or "payments.after" not in scope:
            await self.app(scope, receive, send)
            return
        view: str | None = scope.get("payments.cache_view")
        if view is None:
            await self.app(scope, receive, invalidating(scope, send))
            return
        admission: Admission = scope["payments.http.admission"]
        if admission.cached_body is not None:
            metrics.CACHE_LOOKUPS.labels(result="hit").inc()
            hit = Response(admission.cached_body, media_type="application/json",
                           headers={"Cache-Status": "payments; hit"})  # fmt: skip
            await hit(scope, receive, send)
            return
        metrics.CACHE_LOOKUPS.labels(result="miss").inc()
        await self.app(scope, receive, self.filling(scope, send, view, admission.cache_version))

    def filling(self, scope: Scope, send: Send, view: str, version: str | None) -> Send:
        """Hold the response until its body is complete, queue the fill, then let it go."""
        principal = scope["payments.principal"]
        batch: AfterBatch = scope["payments.after"]
        ttl_ms = self.services.settings.cache_ttl_s * 1000
        held: list[Message] = []
        chunks: list[bytes] = []

        async def send_filling(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)["Cache-Status"] = "payments; fwd=miss"
                held.append(message)
                return
            if message["type"] != "http.response.body" or not held:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            start = held.pop()
            if start["status"] == 200 and version is not None:
                entry = redis_keys.cache_entry(principal.user_id, view)
                batch.add("HSET", entry, "version", version, "body", b"".join(chunks))
                batch.add("PEXPIRE", entry, ttl_ms)
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})

        return send_filling


def invalidating(scope: Scope, send: Send) -> Send:
    """Bump the cache version of every user whose books the handler's answer changed."""
    batch: AfterBatch = scope["payments.after"]

    async def send_invalidating(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer: Answer | None = scope.get("payments.answer")
            for user_id in answer.parties if answer is not None else ():
                version_key = redis_keys.cache_version(user_id)
                batch.add("INCR", version_key)
                batch.add("EXPIRE", version_key, VERSION_TTL_S)
        await send(message)

    return send_invalidating
