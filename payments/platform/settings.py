"""Settings: how a field names its environment variable and parses it, and the platform's own
section. Each domain keeps its section beside its code (http/settings.py, identity/settings.py,
money/settings.py); payments/settings.py puts them together and reads the environment once."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


class SettingsError(ValueError):
    """A setting has a value we cannot use; the message names the variable, never its value."""


def parse_duration_s(name: str, text: str) -> int:
    """'15m' -> 900. Durations take s, m, h or d."""
    seconds = parse_duration(name, text)
    if seconds < 1 or seconds != int(seconds):
        raise SettingsError(f"{name} must be a whole number of seconds or more, like 30s or 15m")
    return int(seconds)


def parse_duration(name: str, text: str) -> float:
    """'250ms' -> 0.25, '15m' -> 900.0."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise SettingsError(f"{name} must be a duration like 250ms, 30s, 15m, 24h or 7d")
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def parse_text(variable: str, text: str) -> str:
    return text


def parse_seconds(variable: str, text: str) -> float:
    return parse_duration(variable, text)


class Env(NamedTuple):
    """Field metadata: the environment variable that sets the field, and how its text is read.
    Fields without one are internal limits, set in code."""

    variable: str
    parse: Any = parse_text


class RateLimit(BaseModel):
    """`count` requests per `period_s` seconds."""

    model_config = ConfigDict(frozen=True)

    name: str
    count: int
    period_s: int

    @classmethod
    def parser(cls, name: str) -> Any:
        """A parse function for the tier `name`, for its field's Env marker."""
        return lambda variable, text: cls.parse(name, variable, text)

    @classmethod
    def parse(cls, name: str, variable: str, text: str) -> RateLimit:
        count_text, _, period_text = text.partition("/")
        if not count_text.isdigit() or int(count_text) < 1:
            raise SettingsError(f"{variable} must look like 100/15m")
        return cls(
            name=name, count=int(count_text), period_s=parse_duration_s(variable, period_text)
        )


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments are skipped; quotes around a value are removed."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip().removeprefix("export ").strip()] = value.strip().strip("'\"")
    return values


class Section(BaseModel):
    """A domain's part of the settings: frozen, and no field that is not declared."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class PlatformSettings(Section):
    """Where the service runs and what it runs on: servers, processes, the edge, logs."""

    env: Annotated[Literal["development", "test", "production"], Env("ENV")] = "development"
    # Embedded servers and the development JWT key live here.
    data_dir: Annotated[Path, Env("DATA_DIR")] = Path(".data")
    database_url: Annotated[
        str | None, Env("DATABASE_URL"), Field(pattern=r"^postgres(ql)?://")
    ] = None  # None: embedded
    redis_url: Annotated[str | None, Env("REDIS_URL"), Field(pattern=r"^(rediss?|unix)://")] = (
        None  # None: embedded
    )
    # DATABASE_URL through a pooler in transaction mode (PgBouncer): each transaction may run on
    # another server connection, so nothing may rest on the session (docs/scaling.md).
    database_pooler: Annotated[Literal["none", "transaction"], Env("DATABASE_POOLER")] = "none"
    # A connection straight to PostgreSQL, for what needs a session of its own: migrations (their
    # lock), the worker's LISTEN. None: DATABASE_URL, or, behind a pooler, the worker polls.
    database_direct_url: Annotated[
        str | None, Env("DATABASE_DIRECT_URL"), Field(pattern=r"^postgres(ql)?://")
    ] = None
    # asyncpg's prepared statements kept per connection. None: 100 (asyncpg's default), 0 behind
    # a transaction pooler, which before PgBouncer 1.21 keeps no prepared statement between
    # transactions; with 1.21+ and its max_prepared_statements set, a cache may be turned on.
    database_statement_cache: Annotated[
        int | None, Env("DATABASE_STATEMENT_CACHE"), Field(ge=0, le=10_000)
    ] = None
    host: Annotated[str, Env("HOST"), Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Env("PORT"), Field(ge=1, le=65535)] = 8000
    workers: Annotated[int, Env("WORKERS"), Field(ge=1, le=64)] = 1
    # Set: /metrics leaves the API port for a listener of its own on this one.
    metrics_port: Annotated[int | None, Env("METRICS_PORT"), Field(ge=1, le=65_535)] = None
    # Addresses (or networks) of the proxies whose X-Forwarded-For names the client, comma
    # separated; empty: no proxy is trusted and the client is the peer of the connection.
    forwarded_allow_ips: Annotated[str, Env("FORWARDED_ALLOW_IPS")] = ""
    # Per process, then 503: under the usual limit of 1,024 open files.
    limit_concurrency: Annotated[int, Env("LIMIT_CONCURRENCY"), Field(ge=1)] = 1000
    # An idle client connection is closed after this long.
    keep_alive_timeout_s: Annotated[
        int, Env("KEEP_ALIVE_TIMEOUT", parse_duration_s), Field(ge=1)
    ] = 5
    shutdown_grace_s: int = 10  # in-flight requests get this long to finish on SIGTERM

    log_level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"],
        Env("LOG_LEVEL", lambda variable, text: text.lower()),
    ] = "info"
    # None: console on a terminal, else json.
    log_format: Annotated[Literal["json", "console"] | None, Env("LOG_FORMAT")] = None

    db_pool_size_max: int = 10  # per API process; PostgreSQL allows 100 connections by default
    db_command_timeout_s: float = 10.0  # a statement that takes longer is cancelled
    db_acquire_timeout_s: float = 5.0  # a request that waits longer for a connection gets 503
    db_lock_timeout_s: float = 2.0  # a row lock not had by then: 503, come back (55P03)
    db_retries_max: int = 3  # serialization failures and deadlocks are retried this often
    # A Redis that hangs is treated as a Redis that is down.
    redis_timeout_s: Annotated[float, Env("REDIS_TIMEOUT", parse_seconds), Field(gt=0)] = 0.25

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, text: str) -> str:
        """'10.0.0.5, 10.1.0.0/16' -> '10.0.0.5,10.1.0.0/16'. uvicorn would take a typo for a
        name it never matches, and '*' for every client: both are refused here."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items:
            ipaddress.ip_network(item)  # a ValueError: an address or network it is not
        return ",".join(items)

    @property
    def statement_cache_size(self) -> int:
        if self.database_statement_cache is not None:
            return self.database_statement_cache
        return 0 if self.database_pooler == "transaction" else 100

    @property
    def session_database_url(self) -> str | None:
        """Where a session of our own (a lock held across transactions, LISTEN) may live: the
        direct URL, or DATABASE_URL when it is not a pooler; None when there is no such place."""
        if self.database_direct_url:
            return self.database_direct_url
        return self.database_url if self.database_pooler == "none" else None

    @model_validator(mode="after")
    def check_ports(self) -> PlatformSettings:
        if self.metrics_port == self.port:
            raise ValueError("metrics_port: must differ from the API's port")
        return self
