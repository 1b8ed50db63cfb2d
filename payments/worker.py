"""The worker: `python -m payments worker`. Each job (payments, payroll batches, webhook
deliveries) is an object with claim, settle and release; the loop is the same for all.

WORKER_CONCURRENCY loops per job claim due work with FOR UPDATE SKIP LOCKED under a lease and
settle it; they wake on the job's LISTEN channel, and look again every WORKER_POLL_INTERVAL as a
safety net. LISTEN needs a session of its own: behind a transaction pooler it takes
DATABASE_DIRECT_URL, and without one the loops poll alone. Every HEARTBEAT_INTERVAL_S the
process says it is alive in worker_heartbeat, which /ready reads. Any number of worker processes may run, on any hosts. On SIGTERM or Ctrl-C the loops
stop claiming, finish the batch in hand (it commits or rolls back, never half) and give back what
they claimed and did not settle."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from typing import Protocol

import asyncpg
import structlog

from payments.app import connect_redis
from payments.payments.jobs import PaymentsJob
from payments.payroll.jobs import PayrollJob
from payments.platform.db import DB_ERRORS, UNREACHABLE, Q, create_pool
from payments.settings import Settings
from payments.webhooks.jobs import WebhookJob

log = structlog.get_logger(__name__)
WORKER_APPLICATION_NAME = "payments-worker"  # its connections, in pg_stat_activity
HEARTBEAT_INTERVAL_S = 5.0  # /ready counts a worker gone after three beats missed (queries.sql)
RECONNECT_PAUSE_S = 0.5  # after the database went away, before trying again
BUSY_PAUSE_S = 0.02  # after a batch whose every item was busy elsewhere, before claiming again
SHUTDOWN_GRACE_S = 10.0  # a batch in hand gets this long to finish on SIGTERM
WEBHOOK_CONNECTIONS = 4  # the webhook sends share these to record their results, a moment each


class Job(Protocol):
    name: str
    channel: str
    loops: int | None  # claim loops per process; None: WORKER_CONCURRENCY

    async def claim(self, pool: asyncpg.Pool, worker: str) -> list[int]: ...
    async def settle(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> bool: ...
    async def release(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> None: ...


class Worker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, jobs: list[Job]) -> None:
        self.settings = settings
        self.pool = pool
        self.jobs = jobs
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.stopping = asyncio.Event()
        self.due = {job.channel: asyncio.Event() for job in jobs}

    async def run(self) -> bool:
        """Run the loops until asked to stop; False when one broke (the process should end with
        an error, so that its supervisor starts a sound one)."""
        log.info("worker_started", worker=self.id, jobs=[job.name for job in self.jobs],
                 concurrency=self.settings.worker_concurrency)  # fmt: skip
        loops = [
            asyncio.create_task(self.loop(job, f"{self.id}:{job.name}:{index}"))
            for job in self.jobs
            for index in range(job.loops or self.settings.worker_concurrency)
        ]
        listener = asyncio.create_task(self.listen())
        heartbeat = asyncio.create_task(self.beat())
        stopping = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([*loops, listener, stopping],
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        failed = [task for task in done if task is not stopping and not self.stopping.is_set()]
        for task in failed:  # a loop may end only when asked to: this one broke
            log.error("worker_loop_failed", worker=self.id, error=repr(task.exception()))
        self.stopping.set()
        _, pending = await asyncio.wait(loops, timeout=SHUTDOWN_GRACE_S)
        for task in [*pending, listener, heartbeat]:
            task.cancel()
        await asyncio.gather(*pending, listener, heartbeat, stopping, return_exceptions=True)
        with contextlib.suppress(*DB_ERRORS):
            await asyncio.wait_for(self.pool.execute(Q.worker_stopped, self.id), 1.0)
        log.info("worker_stopped", worker=self.id)
        return not failed

    async def loop(self, job: Job, owner: str) -> None:
        """Claim, settle, repeat; wait for a notification (or the poll interval) when idle. Each
        loop holds its claims under a lease owner of its own."""
        due = self.due[job.channel]
        while not self.stopping.is_set():
            due.clear()  # before the claim: a notification during it is not lost
            try:
                ids = await job.claim(self.pool, owner)
            except DB_ERRORS as error:
                log.warning("worker_claim_failed", job=job.name, error=type(error).__name__)
                await self.pause(RECONNECT_PAUSE_S)
                continue
            if not ids:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(due.wait(), self.settings.worker_poll_interval_s)
                continue
            try:
                if not await self.settle(job, owner, ids):
                    await self.pause(BUSY_PAUSE_S)
            except asyncio.CancelledError:  # past the shutdown grace: give the batch back
                with contextlib.suppress(*DB_ERRORS):
                    await asyncio.shield(job.release(self.pool, owner, ids))
                raise

    async def settle(self, job: Job, owner: str, ids: list[int]) -> bool:
        """Settle what this loop claimed; True when anything was. While the database is away
        the same batch is tried again (it is still ours until its lease runs out)."""
        while True:
            try:
                return await job.settle(self.pool, owner, ids)
            except UNREACHABLE as error:
                log.warning("worker_settle_failed", job=job.name, error=type(error).__name__)
                if self.stopping.is_set():
                    return False  # the lease gives them to another worker
                await self.pause(RECONNECT_PAUSE_S)

    async def beat(self) -> None:
        """This process is alive: its row in worker_heartbeat, every HEARTBEAT_INTERVAL_S."""
        while not self.stopping.is_set():
            try:
                await self.pool.execute(Q.worker_heartbeat, self.id)
            except DB_ERRORS as error:
                log.warning("worker_heartbeat_failed", error=type(error).__name__)
            await self.pause(HEARTBEAT_INTERVAL_S)

    async def listen(self) -> None:
        """One connection LISTENs on every job's channel and wakes its loops; when it breaks,
        the loops keep polling while it reconnects. Through a transaction pooler a LISTEN
        would be on whichever server connection ran it, and then on nobody's: without a direct
        URL the loops poll alone."""
        url = self.settings.session_database_url
        if url is None:
            log.info("worker_polling_only", reason="DATABASE_URL is a pooler and "
                     "DATABASE_DIRECT_URL is unset", interval_s=self.settings.worker_poll_interval_s)  # fmt: skip
            await self.stopping.wait()  # ending early would count as a broken loop
            return
        while not self.stopping.is_set():
            try:
                connection = await asyncpg.connect(
                    url, server_settings={"application_name": WORKER_APPLICATION_NAME}
                )
            except (*DB_ERRORS, OSError) as error:
                log.warning("worker_listen_failed", error=type(error).__name__)
                await self.pause(RECONNECT_PAUSE_S)
                continue
            try:
                for channel, event in self.due.items():
                    await connection.add_listener(channel, lambda *_, e=event: e.set())
                while not self.stopping.is_set() and not connection.is_closed():
                    await self.pause(1.0)
            except (*DB_ERRORS, OSError) as error:  # the server went away: listen again
                log.warning("worker_listen_failed", error=type(error).__name__)
            finally:
                with contextlib.suppress(*DB_ERRORS, OSError):
                    await connection.close(timeout=1)

    async def pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)


async def run_worker(settings: Settings) -> bool:
    """The worker process: its jobs (payments, payroll, webhook deliveries), its pool (one
    connection per claiming loop, one to spare, and a few for the webhook deliveries' results;
    the listener has a connection of its own), until SIGTERM or SIGINT."""
    redis = connect_redis(settings)
    webhooks = WebhookJob(settings)
    jobs: list[Job] = [PaymentsJob(settings, redis), PayrollJob(settings, redis), webhooks]
    loops = sum(job.loops or settings.worker_concurrency for job in jobs)
    pool = await create_pool(settings, str(settings.database_url),
                             application_name=WORKER_APPLICATION_NAME,
                             size_max=loops + 1 + WEBHOOK_CONNECTIONS)  # fmt: skip
    worker = Worker(settings, pool, jobs)
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, worker.stopping.set)
    try:
        return await worker.run()
    finally:
        await webhooks.stop(pool, SHUTDOWN_GRACE_S)
        await redis.aclose()
        await pool.close()
