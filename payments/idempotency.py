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

from payments.errors import (
    IDEMPOTENCY_KEY_INVALID,
    IDEMPOTENCY_KEY_MISSING,
    PROBLEM_MEDIA_TYPE,
    ApiError,
)
from payments.models import canonical_json

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


def stored_response(status: int, body: str, *, replayed: bool) -> Response:
    """An answer rendered by the database, sent as it was stored; a replay says so."""
    headers = {"Idempotent-Replayed": "true"} if replayed else None
    media_type = PROBLEM_MEDIA_TYPE if status >= 400 else "application/json"
    return Response(body.encode(), status_code=status, headers=headers, media_type=media_type)
