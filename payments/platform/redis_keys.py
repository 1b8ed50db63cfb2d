"""Every Redis key, all under "payments:". The keys one request touches share a hash tag, the
user's ({u:<id>}) or, for anonymous requests, the client address's ({ip:<address>}), so that the
admission script over them runs unchanged on Redis Cluster."""

from __future__ import annotations

import hashlib


def user_tag(user_id: int) -> str:
    return f"{{u:{user_id}}}"


def client_tag(address: str) -> str:
    return f"{{ip:{address}}}"


def login_tag(email_digest: str) -> str:
    """The keys of one account's login attempts, whichever address they come from."""
    return f"{{login:{email_digest}}}"


def denylist_ready(user_id: int) -> str:
    """Present while Redis holds every recent revocation of this user's sessions. A Redis that
    restarted has lost them; they are copied back from PostgreSQL before Redis is trusted again."""
    return f"payments:{user_tag(user_id)}:denylist-ready"


def revoked_family(user_id: int, family_id: str) -> str:
    """Set while a login session's access tokens are refused (for one access-token lifetime)."""
    return f"payments:{user_tag(user_id)}:revoked-family:{family_id}"


def revoked_token(user_id: int, token_id: str) -> str:
    """Set while one access token (by jti) is refused, until it would have expired anyway."""
    return f"payments:{user_tag(user_id)}:revoked-token:{token_id}"


def rate_limit(tag: str, tier: str) -> str:
    """The GCRA theoretical arrival time of one tier for one user or client address."""
    return f"payments:{tag}:rate:{tier}"


def refusal_audit(tag: str) -> str:
    """Per rate-limit tier (a field each), until when this user's or address's last 429 of that
    tier stands for the others in the audit log."""
    return f"payments:{tag}:refusal-audit"


def idempotency(user_id: int, key: str) -> str:
    """The fast copy of a key's answer, or its in-flight marker. The client's key is hashed: it
    may hold any printable character and up to 255 of them."""
    digest = hashlib.sha256(key.encode()).hexdigest()[:32]
    return f"payments:{user_tag(user_id)}:idempotency:{digest}"


def cache_version(user_id: int) -> str:
    """Bumped by every write that changes what the user reads; cached entries carry the version
    they were read under, and an entry of an older version is a miss."""
    return f"payments:{user_tag(user_id)}:cache-version"


def cache_entry(user_id: int, view: str) -> str:
    return f"payments:{user_tag(user_id)}:cache:{view}"
