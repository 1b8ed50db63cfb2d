"""Exactly once under faults: a worker SIGKILLed again and again while it settles a few thousand
payments, some of the kills while a settlement's transaction is open. Afterwards every accepted
payment is final exactly once, each SUCCEEDED one has one transaction and two ledger entries,
the money is all there, and the books balance."""

from __future__ import annotations

import asyncio
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

PAYERS = 40
OPENING_MINOR = 10_000  # 100.00 each: some payments will not be affordable at their turn
PAYMENTS = 2_000
KILLS_MIN = 20
SETTLE_QUERY = "%settle_payments_v1%"


async def open_payers(db: asyncpg.Pool) -> list[tuple[int, str]]:
    users = []
    for index in range(PAYERS):
        body = await db.fetchval(Q.register_user, f"payer{index}@example.com", "P", "x" * 40,
                                 "USD", OPENING_MINOR)  # fmt: skip
        users.append(body)
    rows = await db.fetch(
        "SELECT u.id, a.account_number FROM app_user u JOIN account a ON a.user_id = u.id ORDER BY u.id"
    )
    return [(row["id"], row["account_number"]) for row in rows]


async def accept_payments(db: asyncpg.Pool, payers: list[tuple[int, str]]) -> None:
    rng = random.Random(20261130)

    async def accept(index: int) -> None:
        (payer, _), (_, payee) = rng.sample(payers, 2)
        row = await db.fetchrow(Q.create_payment, payer, f"k{index}", uuid.uuid4().bytes * 2,
                                3600, None, payee, f"{rng.randint(1, 2500) / 100:.2f}", None, None)  # fmt: skip
        assert row["status"] == 202, row["body"]

    for start in range(0, PAYMENTS, 100):
        await asyncio.gather(*(accept(i) for i in range(start, start + 100)))


async def settling(db: asyncpg.Pool) -> bool:
    """Whether a worker's settlement statement is running: its transaction is open now."""
    return bool(await db.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'payments-worker'"
        " AND state = 'active' AND query LIKE $1", SETTLE_QUERY))  # fmt: skip


async def final_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval(
        "SELECT count(*) FROM payment WHERE status IN ('SUCCEEDED', 'FAILED')"))  # fmt: skip


async def test_a_worker_killed_twenty_times_settles_every_payment_once(
    db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path
) -> None:
    await reset_books(db)
    payers = await open_payers(db)
    await accept_payments(db, payers)
    rng = random.Random(7)
    kills = kills_mid_transaction = 0
    while kills < KILLS_MIN and await final_count(db) < PAYMENTS:
        worker = start_worker(database_url, redis_url, tmp_path, WORKER_CONCURRENCY="4")
        try:
            # Wait for a settlement in flight (or a moment), then kill at once, or a little later.
            for _ in range(300):
                if await settling(db):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(rng.choice([0, 0, 0.005, 0.02, 0.1]))
            kills_mid_transaction += await settling(db)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
        kills += 1
    assert kills >= KILLS_MIN, f"all settled after {kills} kills: too few payments for the test"
    print(
        f"\n{kills} kills, {kills_mid_transaction} with a settlement open, {await final_count(db)} final"
    )
    assert kills_mid_transaction >= 5

    worker = start_worker(
        database_url, redis_url, tmp_path, WORKER_CONCURRENCY="4"
    )  # the last one runs to the end
    try:
        for _ in range(600):
            if await final_count(db) == PAYMENTS:
                break
            await asyncio.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0  # a graceful stop
    await assert_settled_exactly_once(db)
    await reset_books(db)


async def assert_settled_exactly_once(db: asyncpg.Pool) -> None:
    states = dict(await db.fetch("SELECT status, count(*) FROM payment GROUP BY 1"))
    assert set(states) <= {"SUCCEEDED", "FAILED"}, states
    assert sum(states.values()) == PAYMENTS
    assert states["SUCCEEDED"] > PAYMENTS // 2
    transfers = await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'payment'")
    assert transfers == states["SUCCEEDED"]  # one transaction each, and none without a payment
    mismatched = await db.fetchval(
        "SELECT count(*) FROM payment p LEFT JOIN transfer t ON t.id = p.transfer_id"
        " WHERE p.status = 'SUCCEEDED' AND (t.amount_minor IS DISTINCT FROM p.amount_minor"
        "  OR t.source_account_id <> p.source_account_id OR t.target_account_id <> p.target_account_id)")  # fmt: skip
    assert mismatched == 0
    entries = await db.fetchval(
        "SELECT count(*) FROM transfer t WHERE t.kind = 'payment'"
        " AND (SELECT count(*) FROM ledger_entry e WHERE e.transfer_id = t.id) <> 2")  # fmt: skip
    assert entries == 0
    reasons = await db.fetch("SELECT DISTINCT failure_reason FROM payment WHERE status = 'FAILED'")
    assert {row[0] for row in reasons} <= {"insufficient_funds", "settlement_error"}
    held = await db.fetchval("SELECT sum(balance_minor) FROM account WHERE kind = 'customer'")
    assert held == PAYERS * OPENING_MINOR  # money moved between payers, none made or lost
    await assert_books_balance(db)
