"""Idempotency keys: which requests need one, how a key is read and checked, the request's
fingerprint, and the stored answer sent back. The durable claim and the answer live in PostgreSQL
(sql/0002_money_functions.sql) and commit in the same statement as the money they guard."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import Message, Receive, Scope

from payments.http.body import canonical_json, parse_json
from payments.http.errors import (
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    PAYLOAD_TOO_LARGE,
    PROBLEM_MEDIA_TYPE,
    ApiError,
)

KEY_PATTERN = re.compile(r"^[\x20-\x7E]{1,255}$")
_REVERSE_PATH = re.compile(r"^/api/v1/transactions/[^/]+/reverse$")


def is_money_moving(method: str, path: str) -> bool:
    """POSTs that move money: they need an Idempotency-Key and count against the transfer tier."""
    return method == "POST" and (path == "/api/v1/transactions" or bool(_REVERSE_PATH.match(path)))


@dataclass(frozen=True, slots=True)
class IdempotencyRequest:
    """A request's key and fingerprint, handed from the middleware to the handler."""

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


@dataclass(frozen=True, slots=True)
class Answer:
    """What a money function answered: the layers outside store it in Redis when PostgreSQL
    stored it with the key, and invalidate the cached reads of the users whose books changed."""

    status: int
    body: bytes
    stored: bool
    parties: tuple[int, ...]


def stored_response(status: int, body: bytes, *, replayed: bool) -> Response:
    """An answer rendered by the database, sent as it was stored; a replay says so."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    return Response(body, status_code=status, headers=headers, media_type=media_type)


def answer_response(scope: Scope, row: Any) -> Response:
    """The response for a money function's row (status, body, replayed, stored, parties), with
    the answer left in the scope for the idempotency and cache layers."""
    body = row["body"].encode()
    parties = tuple(user_id for user_id in row["parties"] or () if user_id is not None)
    scope["payments.answer"] = Answer(row["status"], body, row["stored"], parties)
    return stored_response(row["status"], body, replayed=row["replayed"])


@dataclass(slots=True)
class PreparedRequest:
    """A POST's body and key, read once before admission. Errors wait until the idempotency layer,
    so that a bad request is still counted by the rate limiter first."""

    body: bytes = b""
    payload: Any = None
    key: str | None = None
    fingerprint: bytes = b""
    error: ApiError | None = None


async def prepare_request(
    scope: Scope, receive: Receive, *, body_bytes_max: int
) -> tuple[PreparedRequest, Receive]:
    """Read the body (413 past body_bytes_max), parse it, and read the principal's key."""
    prepared = PreparedRequest()
    try:
        prepared.body = await read_body(receive, body_bytes_max)
        prepared.payload = parse_json(prepared.body) if prepared.body.strip() else None
        if scope.get("payments.principal") is not None:
            required = is_money_moving(scope["method"], scope["path"])
            prepared.key = read_key(Headers(scope=scope), required=required)
            if prepared.key is not None:
                prepared.fingerprint = fingerprint(scope["method"], scope["path"], prepared.payload)
    except ApiError as error:
        prepared.error = error
        prepared.key = None
    return prepared, replay(prepared.body, receive)


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
