"""Redis stopped, frozen and restarted empty in the middle of a run: money still moves exactly
once, the auth tier refuses, the other tiers pass, and revoked tokens stay revoked."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import asyncpg
import httpx

from payments.platform.embedded import RedisServer
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.users import User, new_user, send
from tests.books import balance_minor, transfer_count
from tests.conftest import single_redis_only


@single_redis_only
async def test_redis_going_away_and_coming_back_empty(
    client: httpx.AsyncClient,
    alice: User,
    bob: User,
    db: asyncpg.Pool,
    settings: Settings,
    own_redis: RedisServer,
) -> None:
    leaver = await new_user(client, "leaver")
    async with serving(settings.model_copy(update={"redis_url": own_redis.url})) as http:
        assert (
            await send(http, alice, bob.account_number, "10.00", key="before")
        ).status_code == 201
        assert (
            await http.post("/api/v1/auth/logout", json={}, headers=leaver.auth)
        ).status_code == 204

        own_redis.stop()
        during = await send(http, alice, bob.account_number, "20.00", key="during")
        assert during.status_code == 201
        assert "ratelimit" not in during.headers
        retried = await send(http, alice, bob.account_number, "20.00", key="during")
        assert (retried.status_code, retried.headers.get("idempotent-replayed")) == (201, "true")
        assert (await send(http, alice, bob.account_number, "10.00", key="before")).headers[
            "idempotent-replayed"
        ] == "true"
        racing = await asyncio.gather(
            *(send(http, alice, bob.account_number, "5.00", key="race") for _ in range(20))
        )
        assert [r.status_code for r in racing] == [201] * 20
        assert sum("idempotent-replayed" not in r.headers for r in racing) == 1

        login = await http.post("/api/v1/auth/login", json={"email": alice.email, "password": "x"})
        assert (login.status_code, login.json()["code"]) == (503, "unavailable")
        assert login.headers["retry-after"] == "1"
        accounts = await http.get("/api/v1/accounts", headers=alice.auth)
        assert accounts.status_code == 200
        assert accounts.json()["data"][0]["balance"] == "965.00"
        assert (await http.get("/api/v1/accounts", headers=leaver.auth)).status_code == 401
        ready = await http.get("/api/v1/ready")
        assert ready.status_code == 503
        assert ready.json()["components"] == {
            "postgres": "ok", "redis": "unavailable", "worker": "absent"}  # fmt: skip

        own_redis.start()  # empty: every fast copy and revocation is gone
        again = await send(http, alice, bob.account_number, "20.00", key="during")
        assert (again.status_code, again.headers["idempotent-replayed"]) == (201, "true")
        assert again.content == during.content
        assert (await http.get("/api/v1/accounts", headers=leaver.auth)).status_code == 401
        assert (await http.get("/api/v1/ready")).status_code == 200

    assert await transfer_count(db) == 3
    assert await balance_minor(db, bob.account_number) == 100000 + 1000 + 2000 + 500


@single_redis_only
async def test_a_frozen_redis_does_not_freeze_the_api(
    client: httpx.AsyncClient, alice: User, bob: User, settings: Settings, own_redis: RedisServer
) -> None:
    async with serving(settings.model_copy(update={"redis_url": own_redis.url})) as http:
        await http.get("/api/v1/accounts", headers=alice.auth)
        assert own_redis.process is not None
        os.kill(own_redis.process.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            read = await http.get("/api/v1/accounts", headers=alice.auth)
            moved = await send(http, alice, bob.account_number, "1.00")
            elapsed = time.monotonic() - started
        finally:
            os.kill(own_redis.process.pid, signal.SIGCONT)
        assert (read.status_code, moved.status_code) == (200, 201)
        assert elapsed < 3.0  # two requests, each waiting at most a few Redis timeouts
