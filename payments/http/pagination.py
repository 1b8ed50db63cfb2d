"""Keyset pagination: the page size, and signed cursors (a cursor we did not issue is refused).

Cursors are signed with a key of their own, made once by the migrations and kept in the database
(service_key), so every API host shares it and rotating the token key breaks no cursor in flight."""

from __future__ import annotations

import base64
import hashlib
import hmac

from payments.http.body import field_error

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
