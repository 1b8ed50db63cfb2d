"""Each state of a key in Redis and in PostgreSQL: new, in flight, stale, finished, reused,
expired, and forgotten by Redis."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from redis.asyncio import Redis

from payments.http.idempotency import fingerprint
from payments.platform import redis_keys
from payments.platform.housekeeping import sweep_expired_keys
from tests.api.users import User, send
from tests.books import balance_minor, transfer_count


async def plant_marker(
    redis: Redis, user: User, key: str, body: dict[str, object], ttl_ms: int
) -> None:
    """The in-flight marker a request with this key and body leaves while it runs."""
    redis_key = redis_keys.idempotency(user.user_id, key)
    await redis.hset(
        redis_key, "fingerprint", fingerprint("POST", "/api/v1/transactions", body).hex()
    )
    await redis.pexpire(redis_key, ttl_ms)


async def test_a_key_in_flight_is_409_and_another_body_422(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis, db: asyncpg.Pool
) -> None:
    body = {"to_account_number": bob.account_number, "amount": "3.00"}
    await plant_marker(redis, alice, "running", body, ttl_ms=30_000)
    busy = await send(client, alice, bob.account_number, "3.00", key="running")
    assert (busy.status_code, busy.json()["code"]) == (409, "idempotency_key_in_use")
    assert busy.headers["retry-after"] == "1"
    other = await send(client, alice, bob.account_number, "4.00", key="running")
    assert (other.status_code, other.json()["code"]) == (422, "idempotency_key_reused")
    assert await transfer_count(db) == 0


async def test_a_stale_marker_frees_the_key(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis, db: asyncpg.Pool
) -> None:
    """A request that crashed leaves its marker; once it expires the retry runs, once."""
    body = {"to_account_number": bob.account_number, "amount": "3.00"}
    await plant_marker(redis, alice, "crashed", body, ttl_ms=150)
    await asyncio.sleep(0.3)
    response = await send(client, alice, bob.account_number, "3.00", key="crashed")
    assert response.status_code == 201
    assert await transfer_count(db) == 1


async def test_the_fast_copy_is_the_stored_answer(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis
) -> None:
    first = await send(client, alice, bob.account_number, "3.00", key="copied")
    stored = await redis.hgetall(redis_keys.idempotency(alice.user_id, "copied"))
    assert stored[b"status"] == b"201"
    assert stored[b"body"] == first.content
    assert 0 < await redis.ttl(redis_keys.idempotency(alice.user_id, "copied")) <= 86400


async def test_a_retry_after_redis_lost_everything_replays_from_postgres(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis, db: asyncpg.Pool
) -> None:
    first = await send(client, alice, bob.account_number, "8.00", key="durable")
    await redis.flushdb()
    again = await send(client, alice, bob.account_number, "8.00", key="durable")
    assert again.status_code == 201
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == first.content
    assert await transfer_count(db) == 1
    assert await balance_minor(db, bob.account_number) == 100800
    # ...and Redis has its copy again.
    assert (await redis.hget(redis_keys.idempotency(alice.user_id, "durable"), "status")) == b"201"


async def test_a_refused_request_frees_its_marker(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis
) -> None:
    yen = (await client.post("/api/v1/accounts", json={"currency": "JPY"}, headers=bob.auth)).json()
    refused = await send(client, alice, yen["account_number"], "1.5", key="fix-me")
    assert refused.json()["code"] == "validation_error"
    assert await redis.exists(redis_keys.idempotency(alice.user_id, "fix-me")) == 0


async def test_a_key_past_its_retention_is_new_again(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis, db: asyncpg.Pool
) -> None:
    await send(client, alice, bob.account_number, "2.00", key="old")
    await db.execute("UPDATE idempotency_key SET expires_at = now() - interval '1 second'")
    await redis.delete(redis_keys.idempotency(alice.user_id, "old"))
    again = await send(client, alice, bob.account_number, "2.00", key="old")
    assert again.status_code == 201
    assert "idempotent-replayed" not in again.headers
    assert await transfer_count(db) == 2


async def test_the_sweep_deletes_expired_keys_and_keeps_history(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    for n in range(3):
        await send(client, alice, bob.account_number, "1.00", key=f"k{n}")
    await db.execute(
        "UPDATE idempotency_key SET expires_at = now() - interval '1 second' WHERE key <> 'k2'"
    )
    assert await sweep_expired_keys(db) == 2
    assert await db.fetchval("SELECT array_agg(key) FROM idempotency_key") == ["k2"]
    assert await transfer_count(db) == 3
