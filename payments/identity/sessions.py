"""Login sessions (token families): issuing a token pair, rotating refresh tokens with reuse
detection, revoking, and checking an access token or an API key against the revocations."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
import structlog

from payments.http.errors import INVALID_TOKEN, UNAVAILABLE, ApiError
from payments.identity.api_key_cache import api_key_family_id
from payments.identity.tokens import Principal, new_refresh_token, refresh_token_hash
from payments.platform import redis_keys
from payments.platform.db import DB_ERRORS, Q
from payments.platform.redis_link import REDIS_ERRORS
from payments.services import Services

log = structlog.get_logger(__name__)
DENYLIST_READY_TTL_S = 86400  # each user's denylist is re-checked against PostgreSQL daily
KEY_REVOCATION_MARGIN_S = 60  # beyond the key cache's age: clocks, and a lookup still in flight


def token_pair(
    services: Services, *, user_id: int, role: str, family_id: str, refresh: str
) -> dict[str, Any]:
    access = services.tokens.issue(user_id=user_id, role=role, family_id=family_id)
    return {
        "access_token": access.token, "token_type": "Bearer", "expires_in": access.expires_in_s,
        "refresh_token": refresh,
    }  # fmt: skip


async def start(
    services: Services, conn: asyncpg.Connection, *, user_id: int, role: str
) -> dict[str, Any]:
    """A new session for a user who just proved who they are: a token pair."""
    family_id = uuid.uuid4()
    refresh, refresh_hash = new_refresh_token()
    async with conn.transaction():
        await conn.execute(Q.start_token_family, family_id, user_id)
        await conn.execute(Q.insert_refresh_token, family_id, None, refresh_hash,
                           services.settings.refresh_token_ttl_s)  # fmt: skip
    return token_pair(
        services, user_id=user_id, role=role, family_id=str(family_id), refresh=refresh
    )


async def rotate(services: Services, presented: str, *, ip: str, request_id: str) -> dict[str, Any]:
    """Trade a refresh token for a new pair. Each token works once: presenting a used one means it
    was stolen or replayed, so the whole family is revoked (and its access tokens refused), and
    the audit log says so in the same transaction (never the token: the session's id)."""
    async with services.pool.acquire() as conn:
        async with conn.transaction():
            row = await conn.fetchrow(Q.lock_refresh_token, refresh_token_hash(presented))
            if row is None or row["expired"]:
                raise ApiError(INVALID_TOKEN, "the refresh token is unknown or expired")
            if row["used"] or row["revoked"]:
                await conn.execute(Q.revoke_token_family, row["family_id"])
                await conn.execute(
                    Q.audit_event, row["user_id"], "auth.refresh_reused", str(row["family_id"]),
                    ip, request_id, json.dumps({"session_revoked": not row["revoked"]}),
                )  # fmt: skip
                reused = True
            else:
                reused = False
                refresh, refresh_hash = new_refresh_token()
                await conn.execute(Q.use_refresh_token, row["id"])
                await conn.execute(Q.insert_refresh_token, row["family_id"], row["id"], refresh_hash,
                                   services.settings.refresh_token_ttl_s)  # fmt: skip
        user = await conn.fetchrow(Q.user_by_id, row["user_id"])
    if reused:
        log.warning("refresh_token_reused", user_id=row["user_id"], family_id=str(row["family_id"]))
        await deny(services, user_id=row["user_id"], family_id=str(row["family_id"]))
        raise ApiError(INVALID_TOKEN, "the refresh token was already used; the session is revoked")
    return token_pair(services, user_id=user["id"], role=user["role"],
                      family_id=str(row["family_id"]), refresh=refresh)  # fmt: skip


async def end(services: Services, principal: Principal, refresh_token: str | None) -> None:
    """Logout: the caller's session, and the session of the refresh token presented if it is the
    caller's, are revoked in PostgreSQL, then denied in Redis along with this access token."""
    families = {principal.family_id}
    async with services.pool.acquire() as conn:
        if refresh_token is not None:
            other = await conn.fetchval(Q.family_of_refresh_token, refresh_token_hash(refresh_token),
                                        principal.user_id)  # fmt: skip
            if other is not None:
                families.add(str(other))
        async with conn.transaction():
            for family_id in sorted(families):
                await conn.execute(Q.revoke_token_family, uuid.UUID(family_id))
    for family_id in families:
        await deny(services, user_id=principal.user_id, family_id=family_id,
                   token_id=principal.token_id)  # fmt: skip


def revocation_ttl_s(services: Services) -> int:
    """How long a revocation must stay in Redis: as long as a token issued before it may live."""
    return services.settings.access_token_ttl_s + services.settings.jwt_leeway_s


def key_revocation_ttl_s(services: Services) -> int:
    """How long a key's revocation must stay in Redis: as long as a process may still hold the key's
    owner in its cache (api_key_cache.py), with a margin. After that, every process that meets the
    key asks PostgreSQL, which refuses it."""
    return services.settings.api_key_cache_max_age_s + KEY_REVOCATION_MARGIN_S


async def deny(
    services: Services, *, user_id: int, family_id: str, token_id: str | None = None,
    ttl_s: int | None = None,
) -> bool:  # fmt: skip
    """Copy a revocation that PostgreSQL already holds into Redis, where every request looks. The
    marker lives ttl_s seconds, by default as long as an access token. False when Redis could
    neither take the marker nor forget that it knew every revocation of this user: then a
    process may still trust what it remembers."""
    ttl_s = revocation_ttl_s(services) if ttl_s is None else ttl_s
    try:
        async with services.redis.pipeline(transaction=True) as pipe:
            pipe.set(redis_keys.revoked_family(user_id, family_id), "1", ex=ttl_s)
            if token_id is not None:
                pipe.set(redis_keys.revoked_token(user_id, token_id), "1", ex=ttl_s)
            await pipe.execute()
    except REDIS_ERRORS:
        # PostgreSQL holds the revocation; Redis will copy it back before it is trusted again.
        log.warning("redis_unavailable", layer="sessions")
        return await forget_denylist(services, user_id)
    return True


async def forget_denylist(services: Services, user_id: int) -> bool:
    """Redis missed a revocation: until it is restored, PostgreSQL answers for this user. False
    when Redis could not be told either."""
    try:
        await services.redis.delete(redis_keys.denylist_ready(user_id))
    except REDIS_ERRORS:
        return False
    return True


async def revoked_in_database(services: Services, principal: Principal) -> bool:
    """PostgreSQL's word on the token's session, or on the API key, for when Redis cannot give it.
    One that PostgreSQL does not know counts as revoked."""
    try:
        if principal.api_key_id is not None:
            revoked = await services.pool.fetchval(Q.api_key_revoked, principal.api_key_id)
        else:
            revoked = await services.pool.fetchval(
                Q.token_family_revoked, uuid.UUID(principal.family_id)
            )
    except DB_ERRORS:
        raise ApiError(
            UNAVAILABLE, "cannot check the token now", headers={"Retry-After": "1"}
        ) from None
    return revoked is not False


async def restore_denylist(services: Services, user_id: int) -> None:
    """Copy a user's recent revocations, of sessions and of API keys, back into Redis (after it
    lost them), then mark the user's denylist complete. Best effort: until it succeeds,
    PostgreSQL keeps being asked."""
    ttl_s = revocation_ttl_s(services)
    key_ttl_s = key_revocation_ttl_s(services)
    try:
        rows = await services.pool.fetch(Q.recently_revoked_credentials, user_id, ttl_s, key_ttl_s)
        async with services.redis.pipeline(transaction=True) as pipe:
            for row in rows:
                if row["api_key_id"] is None:
                    family_id, marker_ttl_s = row["family_id"], ttl_s
                else:
                    family_id, marker_ttl_s = api_key_family_id(row["api_key_id"]), key_ttl_s
                pipe.set(redis_keys.revoked_family(user_id, family_id), "1", ex=marker_ttl_s)
            pipe.set(redis_keys.denylist_ready(user_id), "1", ex=DENYLIST_READY_TTL_S)
            await pipe.execute()
    except (*REDIS_ERRORS, *DB_ERRORS):
        log.warning("denylist_not_restored", user_id=user_id)
        return
    keys = sum(row["api_key_id"] is not None for row in rows)
    log.info("denylist_restored", user_id=user_id, sessions=len(rows) - keys, api_keys=keys)
