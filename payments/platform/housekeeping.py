"""Housekeeping that runs beside the API in every process: expired idempotency keys go, the
ledger is checked, and the pool's use is sampled for /metrics."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import structlog

from payments.platform import metrics
from payments.platform.db import DB_ERRORS, Q

log = structlog.get_logger(__name__)

SWEEP_BATCH_MAX = 1000  # keys deleted per statement, so a sweep never holds locks for long
SWEEP_BATCHES_MAX = 100  # statements per sweep; the rest waits for the next one


async def sweep_expired_keys(pool: asyncpg.Pool) -> int:
    """Delete idempotency keys past their retention; return how many went."""
    deleted = 0
    for _ in range(SWEEP_BATCHES_MAX):
        status = await pool.execute(Q.delete_expired_idempotency_keys, SWEEP_BATCH_MAX)
        count = int(status.split()[-1])
        deleted += count
        if count < SWEEP_BATCH_MAX:
            break
    return deleted


async def sweep_forever(pool: asyncpg.Pool, interval_s: float) -> None:
    """Sweep every interval_s until cancelled; a failed sweep is logged and tried again later."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            deleted = await sweep_expired_keys(pool)
        except DB_ERRORS as error:
            log.warning("idempotency_sweep_failed", error=type(error).__name__)
            continue
        if deleted:
            log.info("idempotency_keys_expired", deleted=deleted)


async def check_ledger(pool: asyncpg.Pool, window_s: float = 600) -> int:
    """Count what breaks the books: a currency whose entries do not sum to zero, or an account
    whose balance is not the sum of its entries, over all of them; and what reconciliation finds
    (sql/0006, book_discrepancies_v1) in the transfers, entries and payments of the last
    `window_s`. Each is counted and logged as an error."""
    imbalances = await pool.fetch(Q.ledger_imbalances)
    for row in imbalances:
        log.error("ledger_invariant_violated", scope=row["scope"], name=row["name"],
                  difference_minor=row["difference"])  # fmt: skip
    discrepancies = await pool.fetch(Q.recent_book_discrepancies, window_s)
    for row in discrepancies:
        log.error("ledger_invariant_violated", scope=row["kind"], transaction_id=row["transaction_id"],
                  entry_id=row["entry_id"], payment_id=row["payment_id"])  # fmt: skip
    found = len(imbalances) + len(discrepancies)
    metrics.LEDGER_INVARIANT_VIOLATIONS.inc(found)
    return found


async def check_ledger_forever(pool: asyncpg.Pool, interval_s: float) -> None:
    """Every interval_s; each check looks back two intervals, so that none is missed."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await check_ledger(pool, window_s=2 * interval_s)
        except DB_ERRORS as error:
            log.warning("ledger_check_failed", error=type(error).__name__)


async def sample_pool_forever(pool: asyncpg.Pool, interval_s: float) -> None:
    """Connections open and in use, for payments_db_pool_connections."""
    while True:
        size = pool.get_size()
        metrics.DB_POOL_CONNECTIONS.labels(state="open").set(size)
        metrics.DB_POOL_CONNECTIONS.labels(state="in_use").set(size - pool.get_idle_size())
        await asyncio.sleep(interval_s)


async def sample_payment_queue(pool: asyncpg.Pool, latest: dict[str, Any]) -> None:
    """Payments waiting and in hand, the oldest one's wait and the workers alive (heartbeats), into
    `latest` (what /ready reports, so that it costs no query) and the payments_payment_* gauges
    (every API process samples the same queue; the gauges show the most recent sample of a live
    process)."""
    row = await pool.fetchrow(Q.payment_queue)
    assert row is not None
    latest.update(dict(row))
    metrics.PAYMENT_QUEUE.labels(state="pending").set(row["pending"])
    metrics.PAYMENT_QUEUE.labels(state="processing").set(row["processing"])
    metrics.PAYMENT_OLDEST_PENDING_AGE.set(row["oldest_pending_age_s"])


async def sample_payment_queue_forever(
    pool: asyncpg.Pool, interval_s: float, latest: dict[str, Any]
) -> None:
    while True:
        try:
            await sample_payment_queue(pool, latest)
        except DB_ERRORS as error:
            log.warning("payment_queue_sample_failed", error=type(error).__name__)
        await asyncio.sleep(interval_s)
