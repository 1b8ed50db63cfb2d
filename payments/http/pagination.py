"""Keyset pagination: the page size, and signed cursors (a cursor we did not issue is refused).

Cursors are signed with a key of their own, made once by the migrations and kept in the database
(service_key), so every API host shares it and rotating the token key breaks no cursor in flight."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import field_error
from payments.http.responses import page_response
from payments.services import services

CURSOR_MAC_BYTES = 12


def page_limit(text: str | None, default: int, maximum: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
        raise field_error("limit", f"must be a whole number from 1 to {maximum}")
    return int(text)


def _mac(position: str, key: bytes) -> bytes:
    return hmac.new(key, position.encode(), hashlib.sha256).digest()[:CURSOR_MAC_BYTES]


def encode_cursor(last_id: int, key: bytes) -> str:
    position = str(last_id)
    token = position.encode() + b"." + _mac(position, key)
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode_cursor(cursor: str, key: bytes) -> int:
    """The id a page continues below; 422 validation_error for a cursor we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position, _, mac = raw.partition(b".")
        if position.isdigit() and hmac.compare_digest(mac, _mac(position.decode(), key)):
            return int(position)
    except ValueError:
        pass
    raise field_error("cursor", "is not a cursor this service issued")


NO_CURSOR = 2**63 - 1  # ids are below this: the first page starts here


async def keyset_page(
    request: Request, fetch: Callable[[int, int], Awaitable[list[Any]]]
) -> Response:
    """A page of rows (id, body) newest first: `fetch(before_id, limit)` reads one row more than
    the page holds, which says whether a next page exists."""
    found = services(request)
    settings = found.settings
    limit = page_limit(
        request.query_params.get("limit"), settings.page_size_default, settings.page_size_max
    )
    cursor = request.query_params.get("cursor")
    before_id = decode_cursor(cursor, found.cursor_key) if cursor is not None else NO_CURSOR
    rows = await fetch(before_id, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["id"], found.cursor_key) if len(rows) > limit else None
    return page_response([row["body"] for row in page], next_cursor)
