"""API keys as callers: the key's form and hash, and each process's map from a key's hash to its
owner's principal, so that a key costs PostgreSQL one lookup per process and per minute, not one
per request. Revocation is not this map's to notice: every request asks Redis (admission.py)."""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
import time

import asyncpg

from payments.http.errors import INVALID_TOKEN, ApiError
from payments.identity.tokens import Principal
from payments.platform.db import Q
from payments.settings import Settings

API_KEY_PREFIX = "sk_"
API_KEY_BYTES = 32  # random bytes in a key: no guess finds one, so a fast hash stores it safely
# token_urlsafe(32) is 43 characters of the url-safe alphabet; anything else is refused unread.
API_KEY_FORM = re.compile(r"^sk_[A-Za-z0-9_-]{43}$")
SHOWN_PREFIX_CHARS = len(API_KEY_PREFIX) + 8  # what a list shows, to tell keys apart


def new_api_key() -> tuple[str, str, bytes]:
    """A key, the prefix people see, and the SHA-256 we store in its place."""
    key = API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)
    return key, key[:SHOWN_PREFIX_CHARS], api_key_hash(key)


def api_key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def is_api_key(credential: str) -> bool:
    """A Bearer credential in the form of a key (an access token is a JWT, which starts `eyJ`)."""
    return credential.startswith(API_KEY_PREFIX)


def api_key_family_id(api_key_id: int) -> str:
    """The family id of a key's principal: revoking the key denies this family in Redis, the same
    way a logout denies a session's."""
    return f"key-{api_key_id}"


def invalid_api_key() -> ApiError:
    return ApiError(INVALID_TOKEN, "the API key is unknown or revoked",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip


class ApiKeyCache:
    """The principals of the keys this process has seen, each trusted for at most max_age_s after
    PostgreSQL was asked. A revoked key is remembered too, as refused (it cannot become valid
    again); an unknown one is not, so that made-up keys cannot crowd real ones out of the map.
    Concurrent first uses of one key share one lookup.

    Keeps: a key revoked in PostgreSQL is refused here within max_age_s of its revocation; sooner
    is the denylist's work (a revoked key's family stays denied in Redis for longer than this)."""

    def __init__(self, settings: Settings) -> None:
        self.max_age_s = settings.api_key_cache_max_age_s
        self.entries_max = settings.api_key_cache_entries_max
        self.last_used_interval_s = settings.api_key_last_used_interval_s
        # key hash -> (principal, or None for refused; time.monotonic() until which it holds)
        self.known: dict[bytes, tuple[Principal | None, float]] = {}
        self.lookups: dict[bytes, asyncio.Future[Principal | None]] = {}

    async def principal(self, pool: asyncpg.Pool, key: str) -> Principal:
        """The key's owner as a principal; 401 invalid_token for a key unknown or revoked."""
        if not API_KEY_FORM.match(key):
            raise invalid_api_key()
        key_hash = api_key_hash(key)
        known = self.known.get(key_hash)
        if known is not None and time.monotonic() <= known[1]:
            principal = known[0]
        else:
            principal = await self.look_up(pool, key_hash)
        if principal is None:
            raise invalid_api_key()
        return principal

    async def look_up(self, pool: asyncpg.Pool, key_hash: bytes) -> Principal | None:
        """One lookup per key at a time: later callers wait for the first one's answer. It runs as
        a task of its own, so a caller that goes away does not cancel it for the others."""
        lookup = self.lookups.get(key_hash)
        if lookup is None:
            lookup = self.lookups[key_hash] = asyncio.ensure_future(self.ask(pool, key_hash))
            lookup.add_done_callback(lambda _: self.lookups.pop(key_hash, None))
        return await asyncio.shield(lookup)

    async def ask(self, pool: asyncpg.Pool, key_hash: bytes) -> Principal | None:
        # The entry's age counts from before the question: what PostgreSQL answers is at least
        # this fresh, so the entry never outlives a revocation by more than max_age_s.
        held_until = time.monotonic() + self.max_age_s
        row = await pool.fetchrow(Q.api_key_owner, key_hash, self.last_used_interval_s)
        if row is None:
            return None
        principal = None
        if not row["revoked"]:
            family_id = api_key_family_id(row["id"])
            principal = Principal(
                user_id=row["user_id"], role=row["role"], token_id=family_id, family_id=family_id,
                expires_at=int(time.time()) + self.max_age_s, api_key_id=row["id"],
            )  # fmt: skip
        if len(self.known) >= self.entries_max:
            self.known.clear()  # the next requests ask again; memory stays bounded
        self.known[key_hash] = (principal, held_until)
        return principal
