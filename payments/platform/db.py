"""The PostgreSQL pool, the named queries `Q` of every domain, and how driver errors become API errors."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

import asyncpg
import structlog

from payments.http.errors import UNAVAILABLE, ApiError
from payments.settings import Settings

log = structlog.get_logger(__name__)

_QUERY_NAME = re.compile(r"^-- name: ([a-z_]+)\s*$", re.MULTILINE)
T = TypeVar("T")


class Queries:
    """Read-only access by name to the blocks of every domain's queries.sql: `Q.transfer_funds`.
    Names are unique across the files."""

    def __init__(self, texts: list[str]) -> None:
        by_name: dict[str, str] = {}
        for text in texts:
            parts = _QUERY_NAME.split(text)
            for name, sql in zip(parts[1::2], parts[2::2], strict=True):
                assert name not in by_name, f"two queries are named {name}"
                by_name[name] = sql.strip()
        self._by_name = MappingProxyType(by_name)

    def __getattr__(self, name: str) -> str:
        try:
            return self._by_name[name]
        except KeyError:
            raise AttributeError(name) from None

    def names(self) -> list[str]:
        return list(self._by_name)


PACKAGE_DIR = Path(__file__).resolve().parents[1]
QUERY_FILES = sorted(PACKAGE_DIR.glob("*/queries.sql"))  # one per domain: money/, identity/, ...
Q = Queries([path.read_text(encoding="utf-8") for path in QUERY_FILES])


async def _keep_session(connection: asyncpg.Connection) -> None:
    """Release a connection as it is: we keep no session state (no SET, LISTEN or session locks),
    so asyncpg's default reset query would be one more round trip per request for nothing."""


class Pool(asyncpg.Pool):  # type: ignore[misc]
    """asyncpg's pool, whose every acquire waits at most acquire_timeout_s for a connection (its
    own fetch, fetchrow and execute acquire through this too): a request that cannot get one in
    time is answered 503 instead of queueing behind a saturated pool for ever."""

    def __init__(self, *args: Any, acquire_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.acquire_timeout_s = acquire_timeout_s

    def acquire(self, *, timeout: float | None = None) -> Any:
        return super().acquire(timeout=timeout or self.acquire_timeout_s)


def server_settings(settings: Settings, application_name: str) -> dict[str, str]:
    """Session settings sent when a connection opens. A transaction pooler (PgBouncer 1.18)
    refuses any but a few of them, and would not carry them to the server connection that runs
    the next transaction anyway: behind one, the timeouts are the role's (ALTER ROLE ... SET, see
    docs/scaling.md) and only the application name is sent."""
    if settings.database_pooler == "transaction":
        return {"application_name": application_name}
    return {
        "application_name": application_name,
        # A statement that outlives the command timeout is cancelled server-side, and a row
        # lock waited for longer than the lock timeout is given up (503, Retry-After).
        "statement_timeout": str(int(settings.db_command_timeout_s * 1000)),
        "lock_timeout": str(int(settings.db_lock_timeout_s * 1000)),
        "idle_in_transaction_session_timeout": "60000",
    }


async def create_pool(
    settings: Settings,
    database_url: str,
    *,
    application_name: str = "payments",
    size_max: int | None = None,
) -> asyncpg.Pool:
    """The process's pool. application_name tells its connections apart in pg_stat_activity
    (a worker's are counted by /ready)."""
    pool = Pool(
        database_url,
        acquire_timeout_s=settings.db_acquire_timeout_s,
        init_size=None,
        min_size=1,
        max_size=size_max or settings.db_pool_size_max,
        max_queries=50_000,  # asyncpg's default: a connection is replaced after this many queries
        max_inactive_connection_lifetime=300.0,  # asyncpg's default
        loop=None,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        command_timeout=settings.db_command_timeout_s,
        reset=_keep_session,
        statement_cache_size=settings.statement_cache_size,
        server_settings=server_settings(settings, application_name),
    )
    await pool
    return pool


# Serialization failures and deadlocks: nothing happened, the statement may run again.
RETRYABLE = (asyncpg.SerializationError, asyncpg.DeadlockDetectedError)
# A lock not had within lock_timeout (SQLSTATE 55P03): nothing happened, but the row is busy;
# the client is asked to come back rather than the request holding a connection longer.
BUSY = (asyncpg.LockNotAvailableError,)
# The server went away, refuses connections, or is shutting down or restarting (SQLSTATE classes
# 08 and 57, which also holds a statement cancelled by statement_timeout): the request cannot be
# served safely now, and a retry with the same idempotency key will be. InternalClientError is
# the same event seen a moment early: when PostgreSQL shuts down, a backend's FATAL error can come
# before its socket closes, and the pool may hand out that connection in between; asyncpg then
# refuses to send on it (make chaos met this). Nothing was sent, and the closed connection is
# dropped at its next release.
UNREACHABLE = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
)


# Anything the database can answer with, or fail by: the housekeeping tasks log it and go on.
DB_ERRORS = (
    OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError,
    asyncpg.InternalClientError,  # a connection caught between a FATAL and its close (UNREACHABLE)
)  # fmt: skip


async def run(settings: Settings, operation: Callable[[], Awaitable[T]]) -> T:
    """Run one database transaction, again on serialization failure or deadlock (nothing of it
    committed), at most db_retries_max times, then 503."""
    for attempt in range(1, settings.db_retries_max + 1):
        try:
            return await operation()
        except RETRYABLE:
            log.warning("db_retry", attempt=attempt)
    raise ApiError(UNAVAILABLE, "the database is busy, try again", headers={"Retry-After": "1"})


def as_unavailable(error: BaseException) -> ApiError | None:
    """A 503 for an error that means PostgreSQL could not be reached or went away mid-request.
    Whether a statement in flight committed is unknown to us: the idempotency key tells a retry."""
    if isinstance(error, UNREACHABLE):
        log.warning("db_unavailable", error=type(error).__name__)
        return ApiError(UNAVAILABLE, "a dependency is unavailable", headers={"Retry-After": "1"})
    if isinstance(error, BUSY):
        log.warning("db_busy", error=type(error).__name__)
        return ApiError(
            UNAVAILABLE, "the database is busy, try again", headers={"Retry-After": "1"}
        )
    return None
