"""The audit log, from Python. Security events without a database transaction of their own
(logins, failed logins, logouts, 429s, admin requests) are queued in memory and written by one
task per process, a batch per statement, so the request they describe never waits for the
database. Events that belong to a change (a reversal, an API key) are written by the change's
own SQL, in its transaction, through audit_v1 (sql/0007_audit_log.sql), which also chains them."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypedDict

import asyncpg
import structlog
from starlette.types import Scope

from payments.http.rate_limit import client_address
from payments.http.state import state_of
from payments.platform import metrics
from payments.platform.db import Q
from payments.settings import Settings

log = structlog.get_logger(__name__)

# The columns' limits (sql/0003): a longer value is cut rather than losing the whole batch.
TARGET_CHARS_MAX = 200
IP_CHARS_MAX = 64
REQUEST_ID_CHARS_MAX = 128
CLOSE_TIMEOUT_S = 5.0  # at shutdown, how long the last rows may take to be written


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One row to be: never a password, token or key in any field."""

    at: datetime
    actor_id: int | None
    action: str
    target: str | None
    ip: str | None
    request_id: str | None
    details: str  # JSON text


def printable(text: str) -> str:
    """Text PostgreSQL takes: no NUL, no lone surrogate (a path may carry either, percent-encoded);
    one such value would otherwise lose its whole batch."""
    return text.encode("utf-8", "replace").decode("utf-8").replace("\x00", "\ufffd")


def details_text(details: dict[str, Any] | None) -> str:
    clean = {
        key: printable(value) if isinstance(value, str) else value
        for key, value in (details or {}).items()
    }
    return json.dumps(clean, separators=(",", ":"), ensure_ascii=False)


class Origin(TypedDict):
    ip: str
    request_id: str


def origin(scope: Scope) -> Origin:
    """The request's client address (FORWARDED_ALLOW_IPS-aware, as the limiter sees it) and id."""
    return {"ip": client_address(scope), "request_id": state_of(scope).request_id}


class AuditLog:
    """A bounded queue of events and the task that writes them: every audit_flush_interval_s, or
    as soon as audit_batch_max are waiting, in one INSERT (the chain's trigger orders and hashes
    them). It never blocks a request: when the queue is full (the database down or far behind),
    an event is dropped, counted in payments_audit_events_dropped_total and logged."""

    def __init__(self, settings: Settings) -> None:
        self.interval_s = settings.audit_flush_interval_s
        self.batch_max = settings.audit_batch_max
        self.queue_max = settings.audit_queue_max
        self.queue: deque[AuditEvent] = deque()
        self.batch_ready = asyncio.Event()
        self.writing = asyncio.Lock()  # one batch at a time, so flush() waits for one in flight
        self.dropped_unlogged = 0
        self.pool: asyncpg.Pool | None = None
        self.task: asyncio.Task[None] | None = None

    def record(
        self, action: str, *, actor_id: int | None, ip: str | None, request_id: str | None,
        target: str | None = None, details: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """Queue one event; returns at once."""
        if len(self.queue) >= self.queue_max:
            metrics.AUDIT_EVENTS_DROPPED.labels(reason="queue_full").inc()
            self.dropped_unlogged += 1
            return
        self.queue.append(AuditEvent(
            at=datetime.now(UTC), actor_id=actor_id, action=action,
            target=printable(target[:TARGET_CHARS_MAX]) if target is not None else None,
            ip=printable(ip[:IP_CHARS_MAX]) if ip is not None else None,
            request_id=printable(request_id[:REQUEST_ID_CHARS_MAX]) if request_id else None,
            details=details_text(details),
        ))  # fmt: skip
        if len(self.queue) >= self.batch_max:
            self.batch_ready.set()

    def start(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.task = asyncio.create_task(self.write_forever())

    async def close(self) -> None:
        """Stop the task and write what is still queued (at most CLOSE_TIMEOUT_S)."""
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        try:
            await asyncio.wait_for(self.flush(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            log.warning("audit_events_unwritten", count=len(self.queue))

    async def write_forever(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):  # the interval passed: write what is there
                await asyncio.wait_for(self.batch_ready.wait(), self.interval_s)
            self.batch_ready.clear()
            await self.flush()

    async def flush(self) -> int:
        """Write every queued event, a batch per statement; return how many were written."""
        written = 0
        async with self.writing:
            while self.queue:
                batch = [self.queue.popleft() for _ in range(min(self.batch_max, len(self.queue)))]
                written += await self.write(batch)
        if self.dropped_unlogged:
            log.warning("audit_events_dropped", count=self.dropped_unlogged, reason="queue_full")
            self.dropped_unlogged = 0
        return written

    async def write(self, batch: list[AuditEvent]) -> int:
        """One INSERT for the batch. A batch the database refuses is dropped, counted and
        logged: holding it would hold every event after it too."""
        assert self.pool is not None, "start() gives the audit log its pool"
        columns = [
            [getattr(event, name) for event in batch]
            for name in ("at", "actor_id", "action", "target", "ip", "request_id", "details")
        ]
        try:
            await self.pool.execute(Q.insert_audit_events, *columns)
        except Exception as error:  # the database down, or a row it refuses: never the request's
            metrics.AUDIT_EVENTS_DROPPED.labels(reason="db_error").inc(len(batch))
            log.warning("audit_events_dropped", count=len(batch), reason="db_error",
                        error=type(error).__name__)  # fmt: skip
            return 0
        metrics.AUDIT_EVENTS_WRITTEN.inc(len(batch))
        return len(batch)
