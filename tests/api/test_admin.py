"""Admin routes: 401 without a token, 403 for everyone but an admin, and for an admin any account
and transaction, the queues (read through an index, never the whole payments table) and the
response cache's Redis, which answers connected:false rather than 500 when Redis is down."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from payments.platform.embedded import RedisServer
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.users import User, make_admin, send

ADMIN_GETS = (
    "/api/v1/admin/accounts/{account}",
    "/api/v1/admin/transactions/{transaction}",
    "/api/v1/admin/audit-logs",
    "/api/v1/admin/audit-logs/verify",
    "/api/v1/queue/stats",
    "/api/v1/cache/stats",
)


async def test_every_admin_route_is_401_without_a_token_403_for_a_user_200_for_an_admin(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    sent = await send(client, alice, bob.account_number, "1.00")
    assert sent.status_code == 201
    for template in ADMIN_GETS:
        path = template.format(account=bob.account_number, transaction=sent.json()["id"])
        anonymous = await client.get(path)
        assert (anonymous.status_code, anonymous.json()["code"]) == (401, "invalid_token"), path
        refused = await client.get(path, headers=alice.auth)
        assert (refused.status_code, refused.json()["code"]) == (403, "forbidden"), path
        assert refused.headers["content-type"] == "application/problem+json"
        allowed = await client.get(path, headers=admin.auth)
        assert allowed.status_code == 200, (path, allowed.text)
        assert allowed.headers["content-type"] == "application/json"


async def test_an_admin_reads_anyones_account_and_transaction(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    sent = await send(client, alice, bob.account_number, "12.50")
    assert sent.status_code == 201

    account = await client.get(f"/api/v1/admin/accounts/{bob.account_number}", headers=admin.auth)
    assert account.json() | {"created_at": None, "id": None} == {
        "id": None, "account_number": bob.account_number, "currency": "USD",
        "balance": "1012.50", "created_at": None, "kind": "customer", "user_id": bob.user_id,
        "owner_email": bob.email,
    }  # fmt: skip
    assert b": " not in account.content and b", " not in account.content  # compact JSON
    funding = await client.get("/api/v1/admin/accounts/FUNDUSD", headers=admin.auth)
    assert (funding.json()["kind"], funding.json()["user_id"]) == ("funding", None)

    transaction = await client.get(
        f"/api/v1/admin/transactions/{sent.json()['id']}", headers=admin.auth
    )
    assert transaction.json() == sent.json()
    for path in ("/api/v1/admin/accounts/AC0000000000NONE", "/api/v1/admin/accounts/%00",
                 "/api/v1/admin/transactions/999999", "/api/v1/admin/transactions/x1"):  # fmt: skip
        missing = await client.get(path, headers=admin.auth)
        assert (missing.status_code, missing.json()["code"]) == (404, "not_found"), path


async def test_queue_stats_count_the_payments_not_yet_final(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    for amount in ("1.00", "2.00", "3.00"):
        accepted = await client.post(
            "/api/v1/payments", json={"to_account_number": bob.account_number, "amount": amount},
            headers={**alice.auth, "Idempotency-Key": uuid.uuid4().hex},
        )  # fmt: skip
        assert accepted.status_code == 202
    await db.execute(
        "UPDATE payment SET status = 'PROCESSING', lease_until = now() + interval '30 seconds',"
        " created_at = created_at - interval '1 minute' WHERE id = 1"
    )
    await db.execute("UPDATE payment SET created_at = now() - interval '90 seconds' WHERE id = 2")

    stats = (await client.get("/api/v1/queue/stats", headers=admin.auth)).json()
    assert set(stats) == {"payments", "payroll_jobs", "webhook_deliveries"}
    assert stats["payroll_jobs"] == {"queued": 0, "processing": 0}
    assert stats["webhook_deliveries"] == {"pending": 0, "failed": 0}
    assert (stats["payments"]["pending"], stats["payments"]["processing"]) == (2, 1)
    assert 90 <= stats["payments"]["oldest_pending_age_s"] < 120


async def test_the_payment_counts_are_read_through_the_partial_index(db: asyncpg.Pool) -> None:
    """With sequential scans priced out, the plan uses payment_due_idx: its predicate covers the
    query's, so the counts never need the settled payments."""
    from payments.platform.db import Q

    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(row[0] for row in await conn.fetch("EXPLAIN " + Q.payments_queue_stats))
    assert "payment_due_idx" in plan, plan


async def test_cache_stats_report_redis_and_the_hit_ratio(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, settings: Settings
) -> None:
    admin = await make_admin(client, db)
    for _ in range(3):  # a miss that fills, then hits
        assert (await client.get("/api/v1/accounts", headers=alice.auth)).status_code == 200
    stats = (await client.get("/api/v1/cache/stats", headers=admin.auth)).json()
    assert set(stats) == {"connected", "keys", "hit_ratio", "memory_bytes", "default_ttl_s"}
    assert stats["connected"] is True
    assert stats["default_ttl_s"] == settings.cache_ttl_s
    assert stats["keys"] >= 1
    assert stats["memory_bytes"] > 0
    assert 0 < stats["hit_ratio"] < 1


async def test_cache_stats_with_redis_down_are_200_and_not_connected(
    client: httpx.AsyncClient, db: asyncpg.Pool, settings: Settings, own_redis: RedisServer
) -> None:
    admin = await make_admin(client, db)
    async with serving(settings.model_copy(update={"redis_url": own_redis.url})) as http:
        own_redis.stop()
        response = await http.get("/api/v1/cache/stats", headers=admin.auth)
        assert response.status_code == 200
        stats = response.json()
        assert (stats["connected"], stats["keys"], stats["memory_bytes"]) == (False, None, None)
        assert stats["default_ttl_s"] == settings.cache_ttl_s


@pytest.mark.parametrize("query", ["action=Auth.Login", "action=a.", "actor_id=x", "actor_id=-1",
                                   "limit=0", "cursor=nope"])  # fmt: skip
async def test_bad_audit_log_filters_are_422(
    client: httpx.AsyncClient, db: asyncpg.Pool, query: str
) -> None:
    admin = await make_admin(client, db)
    response = await client.get(f"/api/v1/admin/audit-logs?{query}", headers=admin.auth)
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
