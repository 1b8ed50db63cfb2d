"""The worker's webhooks job: claim due deliveries under a lease, send each in a task of its own
(no database connection held while a receiver thinks), record how it went in a short transaction
after. A worker that dies between the two leaves the delivery claimed until its lease runs out,
and then it is sent again: delivery is at least once, and receivers deduplicate by event id."""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from dataclasses import dataclass

import aiohttp
import asyncpg
import structlog
from cryptography.fernet import InvalidToken

from payments.platform import metrics
from payments.platform.db import DB_ERRORS, Q
from payments.settings import Settings
from payments.webhooks.addresses import UrlRefused, checked_target
from payments.webhooks.sealing import Sealer
from payments.webhooks.signing import delivery_headers

log = structlog.get_logger(__name__)
EXCERPT_READ_BYTES_MAX = 1024  # of a receiver's answer; the rest is never read
SECRETS_OPENED_MAX = 1024  # endpoint secrets a worker keeps opened (forgotten all at once past it)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one attempt came to."""

    delivered: bool
    duration_ms: int
    status_code: int | None = None
    error: str | None = None
    excerpt: str | None = None


def retry_delay_s(attempt: int, *, base_s: float, cap_s: float, draw: float) -> float:
    """Full jitter (AWS, "Exponential Backoff And Jitter"): anywhere from 0 up to base * 2^(n-1),
    capped, after the n-th attempt failed; draw is uniform in [0, 1). It spreads the retries of many
    deliveries that failed together better than a fixed or half-random wait."""
    return draw * min(cap_s, base_s * 2.0 ** (attempt - 1))


class WebhookJob:
    """Sends deliveries, at most webhook_concurrency_max at once per process: one loop claims only
    as many as there are free places, and each send runs as a task of its own, so a slow or dead
    receiver holds one place for at most WEBHOOK_TIMEOUT, never the loop, another receiver, a
    database connection, or a payment's settlement."""

    name = "webhooks"
    channel = "webhook_due"  # emit_event_v1 and redelivery notify it
    loops: int | None = 1  # the claiming loop; the sending is the tasks'

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sealer = Sealer(settings)
        self.guarded = settings.env == "production"
        self.lease_s = max(settings.payment_lease_s, math.ceil(settings.webhook_timeout_s) + 1)
        self.sending: dict[int, tuple[str, asyncio.Task[None]]] = {}  # id: (lease owner, task)
        self.place_freed = asyncio.Event()
        self.per_host: dict[str, int] = {}  # host: deliveries in flight to it
        self.session: aiohttp.ClientSession | None = None  # its connections, kept per host
        self.finished: list[tuple[asyncpg.Record, str, Outcome]] = []  # sent, not yet recorded
        self.finished_added = asyncio.Event()
        self.recorder: asyncio.Task[None] | None = None
        self.opened: dict[str, str] = {}  # sealed secret: secret
        self.sampled_at = 0.0
        self.caught_up = False  # the last claim found fewer due than it asked for
        self.random = random.Random()  # noqa: S311 - jitter, not a secret

    async def claim(self, pool: asyncpg.Pool, worker: str) -> list[int]:
        """Due deliveries, as many as there are free places (waiting a moment for one)."""
        if self.recorder is None:
            self.recorder = asyncio.create_task(self.record_forever(pool))
        await self.sample_queue(pool)
        settings = self.settings
        if self.caught_up:
            await asyncio.sleep(settings.webhook_batch_wait_s)
        while True:
            # Cleared before looking, so that a send finishing while we look (or claim) wakes the
            # wait below at once: the sends can all finish within the claim's round trip.
            self.place_freed.clear()
            if self.room_to_claim():
                free = settings.webhook_concurrency_max - len(self.sending)
                busy = [host for host, count in self.per_host.items()
                        if count >= settings.webhook_host_in_flight_max]  # fmt: skip
                wanted = min(free, settings.webhook_claim_max)
                rows = await pool.fetch(Q.claim_webhook_deliveries, worker, wanted, self.lease_s,
                                        settings.webhook_max_attempts, busy)  # fmt: skip
                self.caught_up = len(rows) < wanted
                if rows or not busy:
                    break
                # What is due goes to hosts that have their share in flight: wait for one to finish.
            if not await self.a_send_finished():
                return []
        for row in rows:
            task = asyncio.create_task(self.deliver(pool, worker, row))
            self.sending[row["id"]] = (worker, task)
            self.per_host[row["host"]] = self.per_host.get(row["host"], 0) + 1
        return [row["id"] for row in rows]

    async def a_send_finished(self) -> bool:
        """Wait for a send to finish (since place_freed was cleared); False when none did within
        the poll interval."""
        try:
            await asyncio.wait_for(self.place_freed.wait(), self.settings.worker_poll_interval_s)
        except TimeoutError:
            return False
        return True

    def room_to_claim(self) -> bool:
        """Enough free places for a claim worth its round trip, or nothing in flight at all."""
        settings = self.settings
        free = settings.webhook_concurrency_max - len(self.sending)
        return free >= min(settings.webhook_claim_min, settings.webhook_concurrency_max) or (
            not self.sending
        )

    async def settle(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> bool:
        """The claimed deliveries are on their way already (claim started their tasks)."""
        return True

    async def release(self, pool: asyncpg.Pool, worker: str, ids: list[int]) -> None:
        await pool.execute(Q.release_webhook_deliveries, worker, ids)

    async def deliver(self, pool: asyncpg.Pool, worker: str, row: asyncpg.Record) -> None:
        """Send one delivery, and hand the attempt to the recorder; the place is freed either way."""
        try:
            outcome = await self.attempt(row)
            self.finished.append((row, worker, outcome))
            self.finished_added.set()
        except Exception:  # a bug: logged; the lease runs out and the delivery is sent again
            log.exception("webhook_delivery_crashed", delivery_id=row["id"])
        finally:
            self.sending.pop(row["id"], None)
            left = self.per_host.pop(row["host"], 1) - 1
            if left:
                self.per_host[row["host"]] = left
            self.place_freed.set()

    async def attempt(self, row: asyncpg.Record) -> Outcome:
        """POST the event's stored bytes, signed, to the address checked just now; no database."""
        started = time.monotonic()

        def failed(
            error: str, status_code: int | None = None, excerpt: str | None = None
        ) -> Outcome:
            duration_ms = round((time.monotonic() - started) * 1000)
            return Outcome(False, duration_ms, status_code, error[:200], excerpt)

        timeout_s = self.settings.webhook_timeout_s
        try:
            async with asyncio.timeout(timeout_s):  # the whole attempt, resolving included
                target = await checked_target(row["url"], guarded=self.guarded)
                body = row["payload"].encode()
                headers = delivery_headers(self.secret(row["secret_sealed"]), row["event_id"],
                                           body, int(time.time()))  # fmt: skip
                if target.host_header is not None:
                    headers["Host"] = target.host_header
                async with self.client().post(
                    target.url, data=body, headers=headers, allow_redirects=False,
                    server_hostname=target.server_name,
                ) as response:  # fmt: skip
                    excerpt = await read_excerpt(
                        response, self.settings.webhook_response_excerpt_max
                    )
        except UrlRefused as refused:
            return failed(f"refused: the URL {refused}")
        except InvalidToken:
            return failed("the endpoint's secret cannot be opened with WEBHOOK_SECRET_KEY")
        except TimeoutError:
            return failed(f"no answer within {timeout_s:g} s")
        except aiohttp.ClientError as error:
            return failed(f"{type(error).__name__}: {str(error)[:150]}")
        duration_ms = round((time.monotonic() - started) * 1000)
        if 200 <= response.status < 300:
            return Outcome(True, duration_ms, response.status, None, excerpt)
        return failed(f"answered {response.status}", response.status, excerpt)

    def client(self) -> aiohttp.ClientSession:
        """The process's HTTP client (made in the running loop, on first use). aiohttp, not httpx:
        measured sending to a local receiver 16 at a time, it costs about 300 µs of CPU a request
        where httpx cost 2,600. Its pool keeps connections per host, address, TLS server name and
        TLS settings, at most webhook_host_in_flight_max to one host."""
        if self.session is None:
            settings = self.settings
            self.session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=settings.webhook_concurrency_max,
                                               limit_per_host=settings.webhook_host_in_flight_max),
                timeout=aiohttp.ClientTimeout(total=settings.webhook_timeout_s),
                trust_env=False,  # no proxy from the environment between us and the address checked
            )  # fmt: skip
        return self.session

    def secret(self, sealed: str) -> str:
        """An endpoint's secret, opened once for many deliveries (the process keeps a few)."""
        secret = self.opened.get(sealed)
        if secret is None:
            if len(self.opened) >= SECRETS_OPENED_MAX:
                self.opened.clear()
            secret = self.opened[sealed] = self.sealer.open(sealed)
        return secret

    async def record_forever(self, pool: asyncpg.Pool) -> None:
        """Record finished attempts as they come, up to webhook_record_batch_max a transaction: one
        commit for many deliveries, which is most of what a delivery costs PostgreSQL."""
        while True:
            await self.finished_added.wait()
            if len(self.finished) < self.settings.webhook_record_batch_max:
                await asyncio.sleep(self.settings.webhook_batch_wait_s)  # others finishing now
            try:
                await self.record_finished(pool)
            except Exception:  # a bug: logged; those deliveries are sent again after their lease
                log.exception("webhook_recorder_failed")

    async def record_finished(self, pool: asyncpg.Pool) -> None:
        batch = self.finished[: self.settings.webhook_record_batch_max]
        del self.finished[: len(batch)]
        if not self.finished:
            self.finished_added.clear()
        if batch:
            await self.record(pool, batch)

    async def record(
        self, pool: asyncpg.Pool, batch: list[tuple[asyncpg.Record, str, Outcome]]
    ) -> None:
        """The attempts, in a transaction of their own. When that fails their leases run out and
        the deliveries are sent again: at least once."""
        settings = self.settings
        delays_s = [retry_delay_s(row["attempt"], base_s=settings.webhook_retry_base_s,
                                  cap_s=settings.webhook_retry_cap_s, draw=self.random.random())
                    for row, _, _ in batch]  # fmt: skip
        try:
            rows = await pool.fetch(
                Q.record_webhook_attempts, [row["id"] for row, _, _ in batch],
                [worker for _, worker, _ in batch], [row["attempt"] for row, _, _ in batch],
                [o.delivered for _, _, o in batch], [o.status_code for _, _, o in batch],
                [o.duration_ms for _, _, o in batch], [o.error for _, _, o in batch],
                [o.excerpt for _, _, o in batch], delays_s, settings.webhook_max_attempts,
            )  # fmt: skip
        except (*DB_ERRORS, OSError) as error:
            log.warning("webhook_attempts_not_recorded", deliveries=len(batch),
                        error=type(error).__name__)  # fmt: skip
            return
        recorded = {row["id"]: row["outcome"] for row in rows}
        now = time.time()
        for row, _, outcome in batch:
            result = recorded[row["id"]]
            metrics.WEBHOOK_ATTEMPTS.labels(outcome=result).inc()
            if outcome.delivered:
                metrics.WEBHOOK_DELIVERY_LATENCY.observe(max(0.0, now - row["created_at"]))
            elif result == "failed":
                log.warning("webhook_delivery_failed", delivery_id=row["id"],
                            event_id=row["event_id"], attempts=row["attempt"], error=outcome.error)  # fmt: skip

    async def sample_queue(self, pool: asyncpg.Pool) -> None:
        """The pending and failed gauges, at most every webhook_queue_sample_interval_s."""
        if time.monotonic() - self.sampled_at < self.settings.webhook_queue_sample_interval_s:
            return
        self.sampled_at = time.monotonic()
        row = await pool.fetchrow(Q.webhook_queue_stats)
        metrics.WEBHOOK_DELIVERIES.labels(state="pending").set(row["pending"])
        metrics.WEBHOOK_DELIVERIES.labels(state="failed").set(row["failed"])

    async def stop(self, pool: asyncpg.Pool, grace_s: float) -> None:
        """On shutdown: the sends in flight get grace_s to finish; the rest are cancelled and
        given back, so nobody waits for their lease."""
        tasks = [task for _, task in self.sending.values()]
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        unfinished = dict(self.sending)
        for _, task in unfinished.values():
            task.cancel()
        await asyncio.gather(*(task for _, task in unfinished.values()), return_exceptions=True)
        by_owner: dict[str, list[int]] = {}
        for delivery_id, (owner, _) in unfinished.items():
            by_owner.setdefault(owner, []).append(delivery_id)
        for owner, ids in by_owner.items():
            with contextlib.suppress(*DB_ERRORS, OSError):
                await self.release(pool, owner, ids)
        if self.recorder is not None:
            self.recorder.cancel()
            await asyncio.gather(self.recorder, return_exceptions=True)
        while self.finished:  # what was sent is recorded, or sent again after its lease
            await self.record_finished(pool)
        if self.session is not None:
            await self.session.close()


async def read_excerpt(response: aiohttp.ClientResponse, characters_max: int) -> str | None:
    """The start of a receiver's answer, as text, for the delivery log; the rest is not read."""
    read = b""
    while len(read) < EXCERPT_READ_BYTES_MAX:
        chunk = await response.content.read(EXCERPT_READ_BYTES_MAX - len(read))
        if not chunk:
            break
        read += chunk
    text = read.decode("utf-8", errors="replace").replace("\x00", "")[:characters_max]
    return text or None
