"""Idempotency: reads the body of a POST once (within the size limit) and its Idempotency-Key."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.errors import PAYLOAD_TOO_LARGE, ApiError
from payments.idempotency import IdempotencyRequest, fingerprint, is_money_moving, read_key
from payments.models import parse_json


class IdempotencyMiddleware:
    """Hands the handler the parsed body (scope["payments.body"]) and, for a principal's POST with
    a key, its IdempotencyRequest (scope["payments.idempotency"]).

    Keeps: a money-moving POST never reaches its handler without a valid key; the key is scoped
    to the principal (the handler claims it in PostgreSQL with the principal's id)."""

    def __init__(self, app: ASGIApp, *, body_bytes_max: int) -> None:
        self.app = app
        self.body_bytes_max = body_bytes_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        principal = scope.get("payments.principal")
        key = None
        if principal is not None:
            required = is_money_moving(scope["method"], scope["path"])
            key = read_key(Headers(scope=scope), required=required)
        body = await read_body(receive, self.body_bytes_max)
        payload = parse_json(body) if body.strip() else None
        scope["payments.body"] = payload
        if key is not None:
            scope["payments.idempotency"] = IdempotencyRequest(
                key, fingerprint(scope["method"], scope["path"], payload)
            )
        await self.app(scope, replay(body, receive), send)


async def read_body(receive: Receive, bytes_max: int) -> bytes:
    """The whole body, or 413 as soon as it grows past bytes_max."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > bytes_max:
            raise ApiError(PAYLOAD_TOO_LARGE, f"the body is larger than {bytes_max} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body again, once, then waits on the client as before."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again
