"""Exactly once under faults: a worker SIGKILLed again and again while it pays a 10,000-item
payroll job, some kills while a batch's transaction is open, then started once more. Every item
is paid exactly once, the checkpoint and progress reach the total, and the books balance.
PAYROLL_FAULT_KILLS (default 5) sets how many kills at least; CI runs the short form."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import uuid
from pathlib import Path

import asyncpg
import pytest

from payments.platform.db import Q
from tests.api.processes import start_worker
from tests.books import assert_books_balance, reset_books

pytestmark = pytest.mark.slow

ITEMS = 10_000
KILLS_MIN = int(os.environ.get("PAYROLL_FAULT_KILLS", "5"))
BATCH = "100"  # small batches: many commits to be killed between, and in
PAY_QUERY = "%pay_payroll_batch_v1%"


async def submit_job(db: asyncpg.Pool) -> tuple[int, list[str]]:
    await db.fetchval(Q.register_user, "employer@example.com", "E", "x" * 40, "USD", 10_000_000)
    employer = await db.fetchval("SELECT id FROM app_user WHERE email = 'employer@example.com'")
    rows = await db.fetch(
        "WITH u AS (INSERT INTO app_user (email, full_name, password_hash)"
        "  SELECT 'payee' || g || '@example.com', 'Payee', $2 FROM generate_series(1, $1) g"
        "  RETURNING id)"
        " INSERT INTO account (user_id, currency) SELECT id, 'USD' FROM u RETURNING account_number",
        ITEMS, "x" * 40,
    )  # fmt: skip
    await db.execute("ANALYZE account")
    payees = [row["account_number"] for row in rows]
    amounts = [f"{1 + index % 7}.00" for index in range(ITEMS)]  # 40,000.00 of 100,000.00
    row = await db.fetchrow(Q.create_payroll_job, employer, "k", uuid.uuid4().bytes * 2, 3600,
                            "Payroll", None, payees, amounts, [None] * ITEMS, [None] * ITEMS, None, None)  # fmt: skip
    assert row["status"] == 202, row["body"]
    return json.loads(row["body"])["id"], payees


async def paying(db: asyncpg.Pool) -> bool:
    """Whether a worker's batch statement is running: its transaction is open now."""
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'payments-worker'"
        " AND state = 'active' AND query LIKE $1", PAY_QUERY))  # fmt: skip


async def checkpoint(db: asyncpg.Pool, job_id: int) -> int:
    return int(await db.fetchval("SELECT checkpoint FROM payroll_job WHERE id = $1", job_id))


async def test_a_worker_killed_mid_payroll_pays_every_item_exactly_once(
    db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    await reset_books(db)
    job_id, payees = await submit_job(db)
    rng = random.Random(11)
    kills = kills_mid_batch = 0
    while kills < KILLS_MIN and await checkpoint(db, job_id) < ITEMS:
        worker = start_worker(database_url, redis_url, tmp_path, WORKER_CONCURRENCY="2",
                              PAYROLL_BATCH_SIZE=BATCH)  # fmt: skip
        try:
            for _ in range(500):  # a batch in flight (or a moment), then kill at once or soon
                if await paying(db):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.choice([0, 0, 0.005, 0.02, 0.1]))
            kills_mid_batch += await paying(db)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        kills += 1
    reached = await checkpoint(db, job_id)
    print(f"\n{kills} kills, {kills_mid_batch} with a batch open, checkpoint {reached}")
    assert kills >= KILLS_MIN, f"the job finished after {kills} kills: too few items for the test"
    assert 0 < reached < ITEMS
    assert kills_mid_batch >= 1

    worker = start_worker(database_url, redis_url, tmp_path, WORKER_CONCURRENCY="2",
                          PAYROLL_BATCH_SIZE=BATCH)  # the last one runs to the end  # fmt: skip
    try:
        for _ in range(1200):
            if await checkpoint(db, job_id) == ITEMS:
                break
            await asyncio.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0  # a graceful stop
    await assert_paid_exactly_once(db, job_id, payees)
    await reset_books(db)


async def assert_paid_exactly_once(db: asyncpg.Pool, job_id: int, payees: list[str]) -> None:
    job = json.loads(await db.fetchval(Q.payroll_job_of_user, job_id, 0, True))
    assert (job["status"], job["checkpoint"], job["progress"], job["succeeded_items"]) == (
        "COMPLETED", ITEMS, f"{ITEMS}/{ITEMS}", ITEMS,
    )  # fmt: skip
    assert await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'payroll'") == ITEMS
    wrong = await db.fetchval(
        "SELECT count(*) FROM payroll_item i JOIN transfer t ON t.id = i.transfer_id"
        " WHERE i.job_id = $1 AND (t.amount_minor <> i.amount_minor"
        "  OR t.target_account_id <> i.target_account_id)", job_id)  # fmt: skip
    assert wrong == 0
    balances = await db.fetch(
        "SELECT account_number, balance_minor FROM account WHERE account_number = ANY($1)", payees
    )
    expected = {number: (1 + index % 7) * 100 for index, number in enumerate(payees)}
    assert {row["account_number"]: row["balance_minor"] for row in balances} == expected
    await assert_books_balance(db)
