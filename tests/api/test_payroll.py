"""Payroll: a job of up to 10,000 payments, every item checked before anything is stored, paid by
the worker in index order, in batches that commit with their checkpoint, each item once."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from payments.payroll.jobs import PayrollJob
from payments.platform.db import Q
from payments.settings import Settings
from tests.api.test_payments import running_worker
from tests.api.users import User, make_admin, send
from tests.books import assert_books_balance, balance_minor

JOBS = "/api/v1/payroll/jobs"


async def open_payees(db: asyncpg.Pool, count: int, currency: str = "USD") -> list[str]:
    """count users with an empty account each, made in the database in one statement."""
    rows = await db.fetch(
        "WITH u AS (INSERT INTO app_user (email, full_name, password_hash)"
        "  SELECT 'payee' || g || '-' || $3 || '@example.com', 'Payee', $2"
        "    FROM generate_series(1, $1) g RETURNING id)"
        " INSERT INTO account (user_id, currency) SELECT id, $4 FROM u RETURNING account_number",
        count, "x" * 40, uuid.uuid4().hex[:8], currency,
    )  # fmt: skip
    # As autovacuum would soon: plans cached while the table held a few rows (seq scans) are
    # planned again for ten thousand.
    await db.execute("ANALYZE account")
    return [row["account_number"] for row in rows]


async def submit(
    client: httpx.AsyncClient, user: User, items: list[dict[str, Any]], *,
    key: str | None = None, **fields: Any,
) -> httpx.Response:  # fmt: skip
    headers = {**user.auth, "Idempotency-Key": key or uuid.uuid4().hex}
    body = {"name": "November payroll", "items": items, **fields}
    return await client.post(JOBS, json=body, headers=headers)


async def finished(
    client: httpx.AsyncClient, user: User, job_id: int, timeout_s: float = 60.0
) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        job: dict[str, Any] = (await client.get(f"{JOBS}/{job_id}", headers=user.auth)).json()
        if job["status"] in ("COMPLETED", "COMPLETED_WITH_FAILURES"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


async def test_a_job_pays_every_item_once_and_shows_its_progress(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    payees = await open_payees(db, 2)
    items = [{"to_account_number": payees[0], "amount": "100.00", "reference": "Ann"},
             {"to_account_number": payees[1], "amount": 250, "currency": "USD"},
             {"to_account_number": bob.account_number, "amount": "0.01"}]  # fmt: skip
    key = uuid.uuid4().hex
    accepted = await submit(client, alice, items, key=key)
    assert accepted.status_code == 202, accepted.text
    job = accepted.json()
    assert accepted.headers["location"] == job["poll_url"] == f"{JOBS}/{job['id']}"
    assert {k: job[k] for k in ("status", "total_items", "processed_items", "checkpoint",
                                "progress", "from_account_number", "started_at")} == {
        "status": "QUEUED", "total_items": 3, "processed_items": 0, "checkpoint": 0,
        "progress": "0/3", "from_account_number": alice.account_number, "started_at": None,
    }  # fmt: skip
    replay = await submit(client, alice, items, key=key)
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (202, "true")
    assert await db.fetchval("SELECT count(*) FROM payroll_job") == 1
    audited = await db.fetchrow("SELECT actor_id, action, target, details FROM audit_log"
                                " WHERE action = 'payroll_job.created'")  # fmt: skip
    assert (audited["actor_id"], audited["target"]) == (alice.user_id, f"payroll_job:{job['id']}")
    assert json.loads(audited["details"])["total_items"] == 3

    async with running_worker(settings, db, redis, PayrollJob):
        done = await finished(client, alice, job["id"])
    assert {k: done[k] for k in ("status", "processed_items", "succeeded_items", "failed_items",
                                 "checkpoint", "progress")} == {
        "status": "COMPLETED", "processed_items": 3, "succeeded_items": 3, "failed_items": 0,
        "checkpoint": 3, "progress": "3/3",
    }  # fmt: skip
    assert done["started_at"] is not None
    assert done["finished_at"] is not None
    assert await balance_minor(db, alice.account_number) == 1000_00 - 350_01
    assert [await balance_minor(db, n) for n in payees] == [100_00, 250_00]
    assert await balance_minor(db, bob.account_number) == 1000_01

    listed = await client.get(f"{JOBS}/{job['id']}/items", headers=alice.auth)
    rows = listed.json()["data"]
    assert [(r["index"], r["status"], r["amount"], r["reference"]) for r in rows] == [
        (1, "SUCCEEDED", "100.00", "Ann"), (2, "SUCCEEDED", "250.00", None),
        (3, "SUCCEEDED", "0.01", None),
    ]  # fmt: skip
    paid = await client.get(f"/api/v1/transactions/{rows[0]['transaction_id']}", headers=alice.auth)
    assert (paid.json()["kind"], paid.json()["to_account_number"]) == ("payroll", payees[0])

    # Someone else's job does not exist for them; an admin may read it.
    assert (await client.get(f"{JOBS}/{job['id']}", headers=bob.auth)).status_code == 404
    assert (await client.get(f"{JOBS}/{job['id']}/items", headers=bob.auth)).status_code == 404
    admin = await make_admin(client, db)
    assert (await client.get(f"{JOBS}/{job['id']}", headers=admin.auth)).json() == done


async def test_a_job_whose_account_runs_dry_fails_exactly_the_unaffordable_items(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    payees = await open_payees(db, 5)
    amounts = ["400.00", "400.00", "400.00", "100.00", "300.00"]  # 1000.00 to spend
    items = [{"to_account_number": n, "amount": a} for n, a in zip(payees, amounts, strict=True)]
    job = (await submit(client, alice, items)).json()
    async with running_worker(settings, db, redis, PayrollJob, payroll_batch_size=2):
        done = await finished(client, alice, job["id"])
    assert (done["status"], done["succeeded_items"], done["failed_items"], done["progress"]) == (
        "COMPLETED_WITH_FAILURES", 3, 2, "5/5",
    )  # fmt: skip
    failed = await client.get(f"{JOBS}/{job['id']}/items?status=FAILED", headers=alice.auth)
    assert [(r["index"], r["failure_reason"], r["transaction_id"])
            for r in failed.json()["data"]] == [(3, "insufficient_funds", None),
                                                (5, "insufficient_funds", None)]  # fmt: skip
    assert [await balance_minor(db, n) for n in payees] == [400_00, 400_00, 0, 100_00, 0]
    assert await balance_minor(db, alice.account_number) == 100_00

    # Pages of two, in index order, to the end.
    seen, cursor = [], None
    while True:
        query = f"?limit=2&cursor={cursor}" if cursor else "?limit=2"
        page = (await client.get(f"{JOBS}/{job['id']}/items{query}", headers=alice.auth)).json()
        seen += [row["index"] for row in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [1, 2, 3, 4, 5]
    bad = await client.get(f"{JOBS}/{job['id']}/items?status=DONE", headers=alice.auth)
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")


async def test_a_batch_paid_as_a_set_chains_every_entry_and_reconciles(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, redis: Redis,
    settings: Settings,
) -> None:  # fmt: skip
    """One payee paid several times within a batch and across batches, an item that cannot be
    afforded between them, and a transfer to the same payee beside the job: every balance is
    the sum of its entries, every chain is whole, and reconciliation finds nothing."""
    payees = await open_payees(db, 2)
    plan = [(payees[0], "100.00"), (payees[1], "50.00"), (payees[0], "200.00"),
            (payees[0], "900.00"), (payees[1], "25.00"), (payees[0], "1.00"),
            (bob.account_number, "10.00")]  # fmt: skip
    items = [{"to_account_number": n, "amount": a} for n, a in plan]
    job = (await submit(client, alice, items)).json()
    async with running_worker(settings, db, redis, PayrollJob, payroll_batch_size=4):
        await send(client, alice, bob.account_number, "3.00")
        done = await finished(client, alice, job["id"])
    assert (done["succeeded_items"], done["failed_items"]) == (6, 1)  # 900.00 was too much
    assert [await balance_minor(db, n) for n in payees] == [301_00, 75_00]
    assert await balance_minor(db, alice.account_number) == 100_000 - 386_00 - 3_00
    broken = await db.fetch(
        "SELECT a.account_number, c.tampered_at FROM account a, ledger_chain_v1(a.id) c"
        " WHERE NOT c.valid"
    )
    assert broken == []
    found = await db.fetch(
        "SELECT kind, entry_id FROM book_discrepancies_v1(NULL, now() - interval '1 hour', now())"
    )
    assert found == []


async def test_every_item_is_checked_before_anything_is_stored(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    good = {"to_account_number": bob.account_number, "amount": "1.00"}
    key = uuid.uuid4().hex
    edge = await submit(client, alice, [good, {**good, "amount": "1.001"}, {**good, "amount": -1},
                                        {**good, "amount": "2000000.00"}], key=key)  # fmt: skip
    assert (edge.status_code, edge.json()["code"]) == (422, "validation_error")
    assert [(e["field"], e["index"]) for e in edge.json()["errors"]] == [
        ("items.1.amount", 2), ("items.2.amount", 3), ("items.3.amount", 4),
    ]  # fmt: skip
    shape = await submit(client, alice, [good, {"amount": "1.00"}], key=key)
    assert (shape.status_code, shape.json()["code"]) == (422, "validation_error")
    assert [e["index"] for e in shape.json()["errors"]] == [2]
    ledger = await submit(client, alice, [good, {**good, "to_account_number": "AC0000000000000000"},
                                          {**good, "to_account_number": alice.account_number},
                                          {**good, "currency": "EUR"}], key=key,
                          from_account_number=alice.account_number)  # fmt: skip
    assert (ledger.status_code, ledger.json()["code"]) == (422, "validation_error")
    assert [(e["field"], e["index"]) for e in ledger.json()["errors"]] == [
        ("items.1.to_account_number", 2), ("items.2.to_account_number", 3), ("items.3.currency", 4),
    ]  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM payroll_job") == 0
    assert await db.fetchval("SELECT count(*) FROM payroll_item") == 0

    # Refused before it ran: the same key takes the corrected job.
    fixed = await submit(client, alice, [good], key=key)
    assert fixed.status_code == 202, fixed.text
    empty = await submit(client, alice, [])
    assert (empty.status_code, empty.json()["code"]) == (422, "validation_error")
    unkeyed = await client.post(JOBS, json={"name": "x", "items": [good]}, headers=alice.auth)
    assert (unkeyed.status_code, unkeyed.json()["code"]) == (400, "idempotency_key_missing")
    too_many = await submit(client, alice, [good] * 10_001)
    assert (too_many.status_code, too_many.json()["code"]) == (422, "validation_error")
    padded = {**good, "reference": "x" * 200}
    huge = await submit(client, alice, [padded] * 10_000)  # over 2 MiB
    assert (huge.status_code, huge.json()["code"]) == (413, "payload_too_large")
    assert await db.fetchval("SELECT count(*) FROM payroll_job") == 1


@pytest.mark.once  # its scale is the worker's and PostgreSQL's alone
async def test_ten_thousand_items_are_each_paid_once(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    payees = await open_payees(db, 10_000)
    items = [{"to_account_number": number, "amount": "0.01"} for number in payees]
    accepted = await submit(client, alice, items)  # about 600 KB: over the usual 64 KiB
    assert accepted.status_code == 202, accepted.text
    async with running_worker(settings, db, redis, PayrollJob):
        done = await finished(client, alice, accepted.json()["id"])
    assert (done["status"], done["checkpoint"], done["progress"]) == (
        "COMPLETED",
        10_000,
        "10000/10000",
    )
    assert await db.fetchval(
        "SELECT count(*) FROM account WHERE account_number = ANY($1) AND balance_minor = 1", payees
    ) == 10_000  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'payroll'") == 10_000
    assert await balance_minor(db, alice.account_number) == 1000_00 - 100_00
    await assert_books_balance(db)


async def test_a_batch_run_again_without_its_checkpoint_pays_nobody_twice(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    """The checkpoint is lost (set back by hand) after a batch committed: running the batch
    again finds its items final, pays none of them again, and counts them as they were."""
    payees = await open_payees(db, 4)
    items = [{"to_account_number": n, "amount": a}
             for n, a in zip(payees, ["600.00", "600.00", "1.00", "1.00"], strict=True)]  # fmt: skip
    job_id = (await submit(client, alice, items)).json()["id"]
    assert await db.fetchval(Q.claim_payroll_job, "w1", 30) == job_id
    first = await db.fetchrow(Q.pay_payroll_batch, "w1", job_id, 3, 30)
    assert (first["job_status"], first["checkpoint"], first["paid"], first["failed"]) == (
        "PROCESSING", 3, 2, 1,
    )  # fmt: skip
    await db.execute("UPDATE payroll_job SET checkpoint = 0, succeeded_items = 0, failed_items = 0"
                     " WHERE id = $1", job_id)  # fmt: skip
    again = await db.fetchrow(Q.pay_payroll_batch, "w1", job_id, 3, 30)
    assert (again["checkpoint"], again["paid"], again["failed"], again["parties"]) == (3, 2, 1, [])
    lost = await db.fetchrow(Q.pay_payroll_batch, "w2", job_id, 3, 30)  # not w2's job
    assert lost["job_status"] == "LOST"
    last = await db.fetchrow(Q.pay_payroll_batch, "w1", job_id, 3, 30)
    assert (last["job_status"], last["checkpoint"], last["paid"]) == (
        "COMPLETED_WITH_FAILURES",
        4,
        1,
    )
    assert await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'payroll'") == 3
    assert [await balance_minor(db, n) for n in payees] == [600_00, 0, 1_00, 1_00]
    stats = await db.fetchrow(Q.payroll_queue_stats)
    assert (stats["queued"], stats["processing"]) == (0, 0)
    body = json.loads(await db.fetchval(Q.payroll_job_of_user, job_id, alice.user_id, False))
    assert (body["succeeded_items"], body["failed_items"]) == (3, 1)
