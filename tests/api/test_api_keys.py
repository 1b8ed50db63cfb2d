"""API keys: shown once and stored as a hash, acting as their owner and no one else, refused
where a person's token is needed, at most 20 active, and refused everywhere once revoked."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict
from redis.asyncio import Redis
from starlette.applications import Starlette

from payments.platform import redis_keys
from payments.platform.embedded import RedisServer
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.processes import server
from tests.api.test_round_trips import counting
from tests.api.users import User, new_user, send
from tests.books import balance_minor

KEYS = "/api/v1/api-keys"
CONNECTIONS_PER_WORKER = 3  # kept alive to each of the two workers
CONNECTIONS_MAX = 40  # opened in turn until both workers have theirs


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def as_key(user: User, key: str) -> User:
    """The user, calling with an API key instead of an access token."""
    return dataclasses.replace(user, token=key)


async def accounts_status(http: httpx.AsyncClient, key: str) -> int:
    """GET /accounts with the key: 200 while it is good, 401 once refused."""
    return (await http.get("/api/v1/accounts", headers=bearer(key))).status_code


async def create_key(client: httpx.AsyncClient, user: User, name: str = "shop") -> dict[str, Any]:
    response = await client.post(KEYS, json={"name": name}, headers=user.auth)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_key_is_shown_once_and_stored_only_as_its_hash(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    response = await client.post(KEYS, json={"name": " shop back end "}, headers=alice.auth)
    assert response.status_code == 201, response.text
    created = response.json()
    key = created["key"]
    assert created == {"id": created["id"], "name": "shop back end", "prefix": key[:11],
                       "key": key, "created_at": created["created_at"]}  # fmt: skip
    assert key.startswith("sk_")
    assert len(key) == 3 + 43  # 32 random bytes, url-safe base64
    assert created["created_at"].endswith("Z")

    listed = await client.get(KEYS, headers=alice.auth)
    assert listed.status_code == 200
    assert listed.json() == {"data": [{
        "id": created["id"], "name": "shop back end", "prefix": key[:11],
        "created_at": created["created_at"], "last_used_at": None, "revoked_at": None,
    }], "next_cursor": None}  # fmt: skip
    assert key not in listed.text

    row = await db.fetchrow("SELECT * FROM api_key WHERE id = $1", created["id"])
    assert row["key_hash"] == hashlib.sha256(key.encode()).digest()
    stored = repr(dict(row)) + repr(await db.fetch("SELECT * FROM audit_log"))
    assert key not in stored
    assert key[11:19] not in stored  # past the prefix, nothing of the key is kept


async def test_a_key_acts_as_its_owner(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    key = (await create_key(client, alice))["key"]
    accounts = await client.get("/api/v1/accounts", headers=bearer(key))
    assert accounts.status_code == 200
    assert [a["account_number"] for a in accounts.json()["data"]] == [alice.account_number]

    moved = await send(client, as_key(alice, key), bob.account_number, "12.00")
    assert moved.status_code == 201, moved.text
    assert moved.json()["from_account_number"] == alice.account_number
    assert await balance_minor(db, alice.account_number) == 100000 - 1200
    assert await balance_minor(db, bob.account_number) == 100000 + 1200
    # The idempotency key is the owner's: the same key with the owner's token is a replay.
    replayed = await send(client, alice, bob.account_number, "12.00", key="shared")
    again = await send(client, as_key(alice, key), bob.account_number, "12.00", key="shared")
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == replayed.content


async def test_a_key_moves_and_reads_nothing_of_anyone_else(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    key = (await create_key(client, alice))["key"]
    carol = await new_user(client, "carol")
    theirs = await send(client, bob, carol.account_number, "5.00")
    assert theirs.status_code == 201

    stolen = await send(client, as_key(alice, key), alice.account_number, "10.00",
                        from_account_number=bob.account_number)  # fmt: skip
    assert (stolen.status_code, stolen.json()["code"]) == (422, "unknown_account")
    assert await balance_minor(db, bob.account_number) == 100000 - 500
    for path in (f"/api/v1/accounts/{bob.account_number}",
                 f"/api/v1/transactions/{theirs.json()['id']}"):  # fmt: skip
        read = await client.get(path, headers=bearer(key))
        assert (read.status_code, read.json()["code"]) == (404, "not_found"), path
    listed = (await client.get("/api/v1/transactions", headers=bearer(key))).json()["data"]
    assert [t["kind"] for t in listed] == ["opening"]  # Alice's own, not Bob's to Carol


async def test_key_management_and_logout_take_an_access_token_not_a_key(
    client: httpx.AsyncClient, alice: User
) -> None:
    created = await create_key(client, alice)
    key = created["key"]
    refused = [
        await client.post(KEYS, json={"name": "another"}, headers=bearer(key)),
        await client.get(KEYS, headers=bearer(key)),
        await client.delete(f"{KEYS}/{created['id']}", headers=bearer(key)),
        await client.post("/api/v1/auth/logout", json={}, headers=bearer(key)),
        await client.post("/api/v1/auth/refresh", json={"refresh_token": key}),
    ]
    for response in refused:
        assert (response.status_code, response.json()["code"]) == (401, "invalid_token")
    for response in refused[:4]:
        assert "not an API key" in response.json()["detail"]
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    # Refused, not revoked: the key still works where keys do, and is still listed active.
    assert await accounts_status(client, key) == 200
    assert (await client.get(KEYS, headers=alice.auth)).json()["data"][0]["revoked_at"] is None


async def test_a_key_that_is_not_one_of_ours_is_refused_and_not_remembered(
    client: httpx.AsyncClient, app: Starlette
) -> None:
    for key in ("sk_" + "A" * 43, "sk_short", "sk_" + "A" * 42 + "!", "sk_" + "A" * 44):
        response = await client.get("/api/v1/accounts", headers=bearer(key))
        assert (response.status_code, response.json()["code"]) == (401, "invalid_token"), key
        assert hashlib.sha256(key.encode()).digest() not in app.state.services.api_keys.known


async def test_at_most_20_active_keys_even_when_30_are_asked_for_at_once(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    answers = await asyncio.gather(
        *(client.post(KEYS, json={"name": f"k{n}"}, headers=alice.auth) for n in range(30))
    )
    assert sorted(a.status_code for a in answers) == [201] * 20 + [409] * 10
    refused = next(a for a in answers if a.status_code == 409)
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["code"] == "api_key_limit"
    assert await db.fetchval("SELECT count(*) FROM api_key WHERE revoked_at IS NULL") == 20

    # A revoked key frees its place; other users have places of their own.
    first = next(a.json() for a in answers if a.status_code == 201)
    assert (await client.delete(f"{KEYS}/{first['id']}", headers=alice.auth)).status_code == 204
    await create_key(client, alice)
    assert (await client.post(KEYS, json={"name": "x"}, headers=alice.auth)).status_code == 409
    await create_key(client, bob)


async def test_a_revoked_key_is_refused_at_once(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis, settings: Settings
) -> None:
    created = await create_key(client, alice)
    key = created["key"]
    kept = (await create_key(client, alice, "kept"))["key"]
    assert await accounts_status(client, key) == 200

    deleted = await client.delete(f"{KEYS}/{created['id']}", headers=alice.auth)
    assert deleted.status_code == 204
    assert deleted.content == b""
    refused = await client.get("/api/v1/accounts", headers=bearer(key))
    assert (refused.status_code, refused.json()["code"]) == (401, "invalid_token")
    assert refused.json()["detail"] == "the API key was revoked"
    # Denied in Redis for longer than any process trusts its cache without asking PostgreSQL.
    marker = redis_keys.revoked_family(alice.user_id, f"key-{created['id']}")
    assert await redis.ttl(marker) > settings.api_key_cache_max_age_s
    assert (await send(client, as_key(alice, key), bob.account_number, "1.00")).status_code == 401
    assert await accounts_status(client, kept) == 200

    again = await client.delete(f"{KEYS}/{created['id']}", headers=alice.auth)
    assert again.status_code == 204
    listed = (await client.get(KEYS, headers=alice.auth)).json()["data"]
    assert [k["revoked_at"] is not None for k in listed] == [False, True]


async def test_revoking_a_key_that_is_not_the_callers_is_404(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    created = await create_key(client, alice)
    for user, key_id in ((bob, created["id"]), (alice, 999999), (alice, "nope"), (alice, "1e3")):
        response = await client.delete(f"{KEYS}/{key_id}", headers=user.auth)
        assert (response.status_code, response.json()["code"]) == (404, "not_found"), key_id
    assert await accounts_status(client, created["key"]) == 200
    assert (await client.get(KEYS, headers=bob.auth)).json() == {"data": [], "next_cursor": None}


async def test_the_list_is_paged_newest_first_with_revoked_keys_too(
    client: httpx.AsyncClient, alice: User
) -> None:
    made = [await create_key(client, alice, f"key {n}") for n in range(5)]
    assert (await client.delete(f"{KEYS}/{made[1]['id']}", headers=alice.auth)).status_code == 204
    seen: list[dict[str, Any]] = []
    cursor = None
    for _ in range(5):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get(KEYS, params=params, headers=alice.auth)).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [k["id"] for k in seen] == [k["id"] for k in reversed(made)]
    assert [k["revoked_at"] is not None for k in seen] == [False, False, False, True, False]
    for bad in ({"limit": "0"}, {"limit": "101"}, {"cursor": "forged"}):
        response = await client.get(KEYS, params=bad, headers=alice.auth)
        assert (response.status_code, response.json()["code"]) == (422, "validation_error"), bad


async def test_a_key_name_is_validated(client: httpx.AsyncClient, alice: User) -> None:
    for body in ({}, {"name": ""}, {"name": "   "}, {"name": "x" * 101}, {"name": 7},
                 {"name": "x", "key": "sk_mine"}):  # fmt: skip
        response = await client.post(KEYS, json=body, headers=alice.auth)
        assert (response.status_code, response.json()["code"]) == (422, "validation_error"), body
    assert (
        await client.post(KEYS, json={"name": "x" * 100}, headers=alice.auth)
    ).status_code == 201
    assert (await client.post(KEYS, headers=alice.auth)).status_code == 422


async def test_a_process_looks_a_key_up_once_and_notes_its_use_once_a_minute(
    client: httpx.AsyncClient, alice: User, app: Starlette, db: asyncpg.Pool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    created = await create_key(client, alice)
    await client.get("/api/v1/accounts", headers=alice.auth)  # warm: prepared statements, cache
    with counting(monkeypatch) as first:
        assert await accounts_status(client, created["key"]) == 200
    with counting(monkeypatch) as later:
        assert await accounts_status(client, created["key"]) == 200
    assert first.postgres == 1  # the key's lookup (the accounts came from the response cache)
    assert (later.postgres, later.redis) == (0, 1)
    used_at = await db.fetchval("SELECT last_used_at FROM api_key WHERE id = $1", created["id"])
    assert used_at is not None

    app.state.services.api_keys.known.clear()  # as if a minute had passed: ask again
    await client.get("/api/v1/accounts", headers=bearer(created["key"]))
    assert await db.fetchval("SELECT last_used_at FROM api_key") == used_at  # not a minute ago
    await db.execute("UPDATE api_key SET last_used_at = last_used_at - interval '61 seconds'")
    app.state.services.api_keys.known.clear()
    await client.get("/api/v1/accounts", headers=bearer(created["key"]))
    assert await db.fetchval("SELECT last_used_at FROM api_key") > used_at


async def test_a_process_asks_postgresql_again_once_its_cache_is_old(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, settings: Settings
) -> None:
    """Revoked behind the API's back (no Redis marker): the process trusts its cache for at most
    api_key_cache_max_age_s, then PostgreSQL refuses the key."""
    key = (await create_key(client, alice))["key"]
    async with serving(settings.model_copy(update={"api_key_cache_max_age_s": 1})) as http:
        assert await accounts_status(http, key) == 200
        await db.execute("UPDATE api_key SET revoked_at = now()")
        assert await accounts_status(http, key) == 200
        await asyncio.sleep(1.1)
        assert await accounts_status(http, key) == 401


async def test_a_revoked_key_stays_refused_when_redis_forgets_or_goes_away(
    client: httpx.AsyncClient, alice: User, settings: Settings, own_redis: RedisServer
) -> None:
    """The process has the key's owner in its cache throughout: only the denylist, restored from
    PostgreSQL or replaced by it, can refuse the key."""
    revoked, kept = await create_key(client, alice, "revoked"), await create_key(client, alice)
    async with serving(settings.model_copy(update={"redis_url": own_redis.url})) as http:
        for created in (revoked, kept):
            assert await accounts_status(http, created["key"]) == 200
        assert (await http.delete(f"{KEYS}/{revoked['id']}", headers=alice.auth)).status_code == 204
        assert await accounts_status(http, revoked["key"]) == 401

        own = Redis.from_url(own_redis.url)
        await own.flushdb()  # the revocation and the user's denylist are gone
        await own.aclose()
        assert await accounts_status(http, revoked["key"]) == 401
        assert await accounts_status(http, kept["key"]) == 200

        own_redis.stop()
        assert await accounts_status(http, revoked["key"]) == 401
        assert await accounts_status(http, kept["key"]) == 200
        # Revoked while Redis is down: PostgreSQL holds it and answers until Redis is back, but
        # Redis could not be told, so the answer is 503 (send it again), never a 204 that a
        # Redis coming back with its old data could make untrue.
        refused = await http.delete(f"{KEYS}/{kept['id']}", headers=alice.auth)
        assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
        assert await accounts_status(http, kept["key"]) == 401

        own_redis.start()  # empty
        for created in (revoked, kept):
            assert await accounts_status(http, created["key"]) == 401
        again = await http.delete(f"{KEYS}/{kept['id']}", headers=alice.auth)
        assert again.status_code == 204


def answers_by_process(metrics_dir: Path, route: str, status_class: str) -> dict[str, float]:
    """Requests each API process answered on this route, from its own metrics file."""
    counted: dict[str, float] = {}
    for path in metrics_dir.glob("*/counter_*.db"):  # in the instance's folder
        for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
            _, name, labels, _ = json.loads(key)
            wanted = {"method": "GET", "route": route, "status_class": status_class}
            if name == "payments_http_requests_total" and labels == wanted and value:
                counted[path.stem] = value
    return counted


async def connections_by_worker(
    stack: contextlib.AsyncExitStack, base_url: str, metrics_dir: Path, key: str
) -> dict[str, list[httpx.AsyncClient]]:
    """Keep-alive connections opened one at a time (a burst would all be accepted by one worker),
    each grouped by the worker whose request count its first request moved: that worker now
    holds the key's owner in its cache, and serves the connection until it closes."""
    by_worker: dict[str, list[httpx.AsyncClient]] = {}
    for _ in range(CONNECTIONS_MAX):
        http = await stack.enter_async_context(httpx.AsyncClient(base_url=base_url, timeout=10))
        before = answers_by_process(metrics_dir, "/api/v1/accounts", "2xx")
        assert await accounts_status(http, key) == 200
        after = answers_by_process(metrics_dir, "/api/v1/accounts", "2xx")
        (worker,) = [name for name, count in after.items() if count != before.get(name)]
        by_worker.setdefault(worker, []).append(http)
        if len(by_worker) == 2 and min(map(len, by_worker.values())) >= CONNECTIONS_PER_WORKER:
            return by_worker
    raise AssertionError(f"the connections did not reach both workers: {by_worker}")


@pytest.mark.slow
async def test_a_revoked_key_is_refused_by_every_worker_within_a_second(
    client: httpx.AsyncClient, alice: User, settings: Settings, tmp_path: Path
) -> None:
    """Both workers have the key's owner in their cache; the key is revoked through one request,
    and every request sent after its 204, on connections to either worker, is refused."""
    key = (await create_key(client, alice))["key"]
    key_id = (await client.get(KEYS, headers=alice.auth)).json()["data"][0]["id"]
    metrics_dir = tmp_path / "metrics"
    with server(settings, tmp_path, workers=2, RATE_LIMIT_GLOBAL="100000/1m",
                KEEP_ALIVE_TIMEOUT="60s") as (base_url, _):  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            by_worker = await connections_by_worker(stack, base_url, metrics_dir, key)
            deleted = await by_worker[min(by_worker)][0].delete(
                f"{KEYS}/{key_id}", headers=alice.auth
            )
            assert deleted.status_code == 204
            answered_at = time.monotonic()

            async def first_refusal_s(connections: list[httpx.AsyncClient]) -> float:
                """Seconds from the 204 to this worker's answers, each of which must be 401."""
                answers = await asyncio.gather(
                    *(http.get("/api/v1/accounts", headers=bearer(key)) for http in connections)
                )
                assert [a.status_code for a in answers] == [401] * len(connections)
                return time.monotonic() - answered_at

            delays_s = await asyncio.gather(*map(first_refusal_s, by_worker.values()))
        # While it runs: an instance removes its metrics folder when it ends.
        refused = answers_by_process(metrics_dir, "/api/v1/accounts", "4xx")
    assert refused == {worker: len(c) for worker, c in by_worker.items()}  # on the same workers
    assert max(delays_s) < 1.0, delays_s
