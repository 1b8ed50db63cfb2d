"""The response cache for the reads users repeat: their account list and first history page.

Its part of the admission round trip reads the user's cache version and the entry; after a
write, every user whose books the write changed has their version bumped before the answer goes."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.state import RequestState, state_of
from payments.identity.tokens import Principal
from payments.platform import metrics, redis_keys
from payments.services import Services

VERSION_TTL_S = 86400  # longer than any entry lives, so an entry never outlives its version


def view_of(scope: Scope, state: RequestState) -> str | None:
    """The cached view a GET reads: the route's view, with the only query it may carry (a page
    size, for the history); any other query is not cached."""
    view = state.rules.cached_view
    if scope["method"] != "GET" or view is None:
        return None
    query = scope.get("query_string", b"").decode("latin-1")
    if not query:
        return f"{view}:default" if view == "transactions" else view
    if view != "transactions":
        return None
    if query.startswith("limit=") and "&" not in query and query[6:].isdigit() and len(query) <= 9:
        return f"{view}:{int(query[6:])}"
    return None


def keys_of(principal: Principal, view: str) -> tuple[str, str]:
    """The response cache's part of the admission round trip: the version, and the entry."""
    return redis_keys.cache_version(principal.user_id), redis_keys.cache_entry(
        principal.user_id, view
    )


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
        if scope["type"] != "http" or state_of(scope).admission is None:
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        if state.cache_view is None:
            await self.app(scope, receive, invalidating(state, send))
            return
        admission = state.admitted()
        if admission.cached_body is not None:
            metrics.CACHE_LOOKUPS.labels(result="hit").inc()
            hit = Response(admission.cached_body, media_type="application/json",
                           headers={"Cache-Status": "payments; hit"})  # fmt: skip
            await hit(scope, receive, send)
            return
        metrics.CACHE_LOOKUPS.labels(result="miss").inc()
        await self.app(scope, receive, self.filling(state, send, admission.cache_version))

    def filling(self, state: RequestState, send: Send, version: str | None) -> Send:
        """Hold the response until its body is complete, queue the fill, then let it go."""
        assert state.principal is not None
        assert state.cache_view is not None
        entry = redis_keys.cache_entry(state.principal.user_id, state.cache_view)
        batch = state.after_batch()
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
                batch.add("HSET", entry, "version", version, "body", b"".join(chunks))
                batch.add("PEXPIRE", entry, ttl_ms)
            await send(start)
            await send({"type": "http.response.body", "body": b"".join(chunks), "more_body": False})

        return send_filling


def invalidating(state: RequestState, send: Send) -> Send:
    """Bump the cache version of every user whose books the handler's answer changed."""
    batch = state.after_batch()

    async def send_invalidating(message: Message) -> None:
        if message["type"] == "http.response.start":
            for user_id in state.answer.parties if state.answer is not None else ():
                version_key = redis_keys.cache_version(user_id)
                batch.add("INCR", version_key)
                batch.add("EXPIRE", version_key, VERSION_TTL_S)
        await send(message)

    return send_invalidating
