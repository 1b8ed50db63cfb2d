"""Every Redis key, all under "payments:". Keys one request touches share the user's hash tag
({u:<id>}), so a script over them runs on Redis Cluster too."""

from __future__ import annotations


def user_tag(user_id: int) -> str:
    return f"{{u:{user_id}}}"


def revoked_family(user_id: int, family_id: str) -> str:
    """Set while a login session's access tokens are refused (for one access-token lifetime)."""
    return f"payments:{user_tag(user_id)}:revoked-family:{family_id}"


def revoked_token(user_id: int, token_id: str) -> str:
    """Set while one access token (by jti) is refused, until it would have expired anyway."""
    return f"payments:{user_tag(user_id)}:revoked-token:{token_id}"


def denylist_ready() -> str:
    """Present while the denylist holds every recent revocation. A Redis that restarted has lost
    it, and the revocations are copied back from PostgreSQL before Redis is trusted again."""
    return "payments:denylist-ready"
