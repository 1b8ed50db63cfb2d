"""Keyset pagination: the page size, and signed cursors (a cursor we did not issue is refused)."""

from __future__ import annotations

import base64
import hashlib
import hmac

from payments.http.body import field_error
from payments.platform.settings import Settings

CURSOR_MAC_BYTES = 12


def page_limit(text: str | None, default: int, maximum: int) -> int:
    if text is None:
        return default
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= maximum:
        raise field_error("limit", f"must be a whole number from 1 to {maximum}")
    return int(text)


def _mac(position: str, settings: Settings) -> bytes:
    key = hashlib.sha256(b"cursor:" + settings.jwt_secret.get_secret_value().encode()).digest()
    return hmac.new(key, position.encode(), hashlib.sha256).digest()[:CURSOR_MAC_BYTES]


def encode_cursor(last_id: int, settings: Settings) -> str:
    position = str(last_id)
    token = position.encode() + b"." + _mac(position, settings)
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode_cursor(cursor: str, settings: Settings) -> int:
    """The id a page continues below; 422 validation_error for a cursor we did not issue."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        position, _, mac = raw.partition(b".")
        if position.isdigit() and hmac.compare_digest(mac, _mac(position.decode(), settings)):
            return int(position)
    except ValueError:
        pass
    raise field_error("cursor", "is not a cursor this service issued")
