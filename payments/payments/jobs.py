"""The worker's payments job: claim due payments under a lease, settle them in one transaction
each batch, give back what was not settled. The worker loop (payments/worker.py) runs it."""

from __future__ import annotations

import contextlib

import asyncpg
import structlog

from payments.platform import metrics, redis_keys
from payments.platform.db import RETRYABLE, UNREACHABLE, Q
from payments.platform.redis_link import REDIS_ERRORS, AnyRedis
from payments.settings import Settings

log = structlog.get_logger(__name__)
CACHE_VERSION_TTL_S = 86400  # as the response cache's: longer than any entry lives


class PaymentsJob:
    """Settles payments: a payment's money, its transfer and ledger entries and its final state
    commit in one transaction, so a worker killed at any point settles nothing twice."""

    name = "payments"
    channel = "payment_due"  # create_payment_v1 notifies it when an accepted payment commits
    loops: int | None = None  # WORKER_CONCURRENCY

    def __init__(self, settings: Settings, redis: AnyRedis) -> None:
        self.settings = settings
        self.redis = redis

    async def claim(self, pool: asyncpg.Pool, worker: str) -> list[int]:
        """Due payments, now this worker's under a lease. Those claimed payment_attempts_max
        times without settling fail instead (settlement_error): counted and logged here."""
        settings = self.settings
        rows = await pool.fetch(Q.claim_payments, worker, settings.payment_batch_max,
                                settings.payment_lease_s, settings.payment_attempts_max)  # fmt: skip
        for row in rows:
            if not row["claimed"]:
                metrics.PAYMENTS_SETTLED.labels(outcome="failed").inc()
                log.error("payment_failed_unsettled", payment_id=row["id"],
                          attempts_max=settings.payment_attempts_max)  # fmt: skip
        return [row["id"] for row in rows if row["claimed"]]

    async def settle(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> bool:
        """The batch in one statement; when it fails for a reason of its own (not the database
        going away), each payment alone, so that one bad payment holds up no other: it stays
        claimed until its lease runs out, and fails after payment_attempts_max claims."""
        try:
            return await self.settle_batch(pool, worker, ids)
        except UNREACHABLE:
            raise
        except (*RETRYABLE, asyncpg.PostgresError) as error:
            if len(ids) == 1:
                log.error("payment_not_settled", payment_id=ids[0], error=type(error).__name__,
                          sqlstate=getattr(error, "sqlstate", None))  # fmt: skip
                return False
            log.warning("payment_batch_failed", size=len(ids), error=type(error).__name__,
                        sqlstate=getattr(error, "sqlstate", None))  # fmt: skip
            settled = [await self.settle(pool, worker, [payment_id]) for payment_id in ids]
            return any(settled)

    async def settle_batch(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> bool:
        """True when any payment was settled; False when all were deferred (their accounts were
        busy): the loop then pauses a moment rather than claim them straight back."""
        rows = await pool.fetch(Q.settle_payments, worker, ids)
        parties: set[int] = set()
        settled = False
        for row in rows:
            if row["outcome"] == "deferred":
                continue
            settled = True
            metrics.PAYMENTS_SETTLED.labels(outcome=row["outcome"]).inc()
            metrics.PAYMENT_SETTLE_LATENCY.observe(row["latency_s"])
            parties.update(row["parties"])
        await self.invalidate(parties)
        return settled

    async def invalidate(self, user_ids: set[int]) -> None:
        await invalidate_cached_reads(self.redis, user_ids)

    async def release(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> None:
        await pool.execute(Q.release_payments, worker, ids)


async def invalidate_cached_reads(redis: AnyRedis, user_ids: set[int]) -> None:
    """The cached reads of every user whose books a job changed; best effort (the entries
    expire within CACHE_TTL anyway)."""
    if not user_ids:
        return
    with contextlib.suppress(*REDIS_ERRORS):
        async with redis.pipeline(transaction=False) as pipe:
            for user_id in user_ids:
                pipe.incr(redis_keys.cache_version(user_id))
                pipe.expire(redis_keys.cache_version(user_id), CACHE_VERSION_TTL_S)
            await pipe.execute()
