"""The worker: `python -m payments worker`. Each job (payments, webhook deliveries; payroll
batches later) is an object with claim, settle and release; the loop is the same for all.

WORKER_CONCURRENCY loops per job claim due work with FOR UPDATE SKIP LOCKED under a lease and
settle it; they wake on the job's LISTEN channel, and look again every WORKER_POLL_INTERVAL as a
safety net. Any number of worker processes may run, on any hosts. On SIGTERM or Ctrl-C the loops
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
from payments.platform.db import DB_ERRORS, UNREACHABLE, create_pool
from payments.settings import Settings
from payments.webhooks.jobs import WebhookJob

log = structlog.get_logger(__name__)
WORKER_APPLICATION_NAME = "payments-worker"  # how /ready counts the workers' connections
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
        stopping = asyncio.create_task(self.stopping.wait())
        done, _ = await asyncio.wait([*loops, listener, stopping],
                                     return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        failed = [task for task in done if task is not stopping and not self.stopping.is_set()]
        for task in failed:  # a loop may end only when asked to: this one broke
            log.error("worker_loop_failed", worker=self.id, error=repr(task.exception()))
        self.stopping.set()
        _, pending = await asyncio.wait(loops, timeout=SHUTDOWN_GRACE_S)
        for task in [*pending, listener]:
            task.cancel()
        await asyncio.gather(*pending, listener, stopping, return_exceptions=True)
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

    async def listen(self) -> None:
        """One connection LISTENs on every job's channel and wakes its loops; when it breaks,
        the loops keep polling while it reconnects."""
        while not self.stopping.is_set():
            try:
                connection = await asyncpg.connect(
                    str(self.settings.database_url),
                    server_settings={"application_name": WORKER_APPLICATION_NAME},
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
    """The worker process: its pool (one connection per payments loop, and one to spare, and a
    few for the webhook deliveries' claims and results; the listener has a connection of its
    own), its jobs, until SIGTERM or SIGINT."""
    concurrency = settings.worker_concurrency
    pool = await create_pool(settings, str(settings.database_url),
                             application_name=WORKER_APPLICATION_NAME,
                             size_max=concurrency + 1 + WEBHOOK_CONNECTIONS)  # fmt: skip
    redis = connect_redis(settings)
    webhooks = WebhookJob(settings)
    worker = Worker(settings, pool, [PaymentsJob(settings, redis), webhooks])
    loop = asyncio.get_running_loop()
    for stop_signal in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(stop_signal, worker.stopping.set)
    try:
        return await worker.run()
    finally:
        await webhooks.stop(pool, SHUTDOWN_GRACE_S)
        await redis.aclose()
        await pool.close()
