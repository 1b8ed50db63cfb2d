"""The worker's payroll job: claim a payroll job under a lease, pay its next batch of items in
one transaction (one statement), give it back on shutdown. The worker loop (payments/worker.py)
runs it beside the payments job."""

from __future__ import annotations

import asyncpg
import structlog

from payments.payments.jobs import invalidate_cached_reads
from payments.platform.db import RETRYABLE, UNREACHABLE, Q
from payments.platform.redis_link import AnyRedis
from payments.settings import Settings

log = structlog.get_logger(__name__)
FINISHED = frozenset({"COMPLETED", "COMPLETED_WITH_FAILURES"})


class PayrollJob:
    """Pays payroll items: each batch's transfers, item states and new checkpoint commit in one
    transaction, and an item already final is never paid again, so a worker killed at any point
    pays nobody twice. One claim is one batch: a loop keeps the job it holds (its lease renewed
    by each batch) until the job is done, and a loop asked to stop stops between batches."""

    name = "payroll"
    channel = "payroll_due"  # create_payroll_job_v1 notifies it when an accepted job commits

    loops: int | None = None  # WORKER_CONCURRENCY

    def __init__(self, settings: Settings, redis: AnyRedis) -> None:
        self.settings = settings
        self.redis = redis

    async def claim(self, pool: asyncpg.Pool, worker: str) -> list[int]:
        """The job this loop holds, else the oldest waiting one (or one whose lease ran out)."""
        rows = await pool.fetch(Q.claim_payroll_job, worker, self.settings.payment_lease_s)
        return [row["id"] for row in rows]

    async def settle(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> bool:
        """The next batch of each claimed job; True when anything was done. A batch that fails
        for a reason of its own (not the database going away) is logged and left to its lease:
        nothing of it committed, and the next claim tries it again."""
        done = False
        for job_id in ids:
            try:
                done = await self.pay_batch(pool, worker, job_id) or done
            except UNREACHABLE:
                raise
            except (*RETRYABLE, asyncpg.PostgresError) as error:
                log.warning("payroll_batch_failed", job_id=job_id, error=type(error).__name__,
                            sqlstate=getattr(error, "sqlstate", None))  # fmt: skip
        return done

    async def pay_batch(self, pool: asyncpg.Pool, worker: str, job_id: int) -> bool:
        row = await pool.fetchrow(Q.pay_payroll_batch, worker, job_id,
                                  self.settings.payroll_batch_size, self.settings.payment_lease_s)  # fmt: skip
        if row is None or row["job_status"] == "LOST":  # another worker took it over
            return False
        await self.invalidate(set(row["parties"]))
        if row["job_status"] in FINISHED:
            log.info("payroll_job_finished", job_id=job_id, status=row["job_status"])
        return True

    async def invalidate(self, user_ids: set[int]) -> None:
        await invalidate_cached_reads(self.redis, user_ids)

    async def release(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> None:
        await pool.execute(Q.release_payroll_jobs, worker, ids)
