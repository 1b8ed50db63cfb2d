"""The signature a receiver checks: `Payments-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(
secret, "<t>.<raw body>")>`, Stripe's scheme. The timestamp is signed with the body, so a receiver
that refuses an old `t` refuses a replayed delivery."""

from __future__ import annotations

import hashlib
import hmac


def signature_header(secret: str, body: bytes, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def delivery_headers(secret: str, event_id: str, body: bytes, timestamp: int) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "Payments-Event-Id": event_id,
        "Payments-Signature": signature_header(secret, body, timestamp),
        "User-Agent": "payments-webhooks/1",
    }
