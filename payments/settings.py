"""Settings: every knob is an environment variable (or a line of `.env`), read once at start-up."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

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


class RateLimit(BaseModel):
    """`count` requests per `period_s` seconds."""

    model_config = ConfigDict(frozen=True)

    name: str
    count: int
    period_s: int

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


class Settings(BaseModel):
    """The service's configuration. Defaults serve a developer on a fresh machine."""

    model_config = ConfigDict(frozen=True)

    env: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path(".data")  # embedded servers and the development JWT key live here
    database_url: str | None = None  # unset: start the embedded PostgreSQL
    redis_url: str | None = None  # unset: start the embedded Redis
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    metrics_port: int | None = Field(None, ge=1, le=65_535)  # set: /metrics leaves the API port
    # Addresses (or networks) of the proxies whose X-Forwarded-For names the client, comma
    # separated; empty: no proxy is trusted and the client is the peer of the connection.
    forwarded_allow_ips: str = ""
    limit_concurrency: int = Field(1000, ge=1)  # per process, then 503: under 1,024 open files
    keep_alive_timeout_s: int = 5  # an idle client connection is closed after this long

    jwt_secret: SecretStr = SecretStr("")
    jwt_key_id: str = "k1"  # the `kid` header; a new id with a new secret rotates the key
    jwt_issuer: str = "payments"
    jwt_audience: str = "payments-api"
    jwt_leeway_s: int = 30  # clock skew we forgive between hosts
    access_token_ttl_s: int = 15 * 60
    refresh_token_ttl_s: int = 7 * 86400

    # OWASP's minimum for Argon2id: 19 MiB, two passes, one lane (about 60 ms a verify here).
    argon2_time_cost: int = 2
    argon2_memory_cost_kib: int = 19_456
    argon2_parallelism: int = 1
    password_hash_threads: int = 1  # hashing runs in its own pool, off the event loop
    password_hash_queue_max: int = 32  # a login flood waits in a bounded queue, then gets 503
    password_hash_nice: int = 19  # hashing threads yield the CPU to requests (Linux niceness)

    rate_limit_global: RateLimit = RateLimit(name="global", count=100, period_s=900)
    rate_limit_auth: RateLimit = RateLimit(name="auth", count=10, period_s=60)
    rate_limit_transfer: RateLimit = RateLimit(name="transfer", count=10, period_s=60)
    idempotency_ttl_s: int = 86400
    idempotency_lock_ttl_s: int = 30  # a crashed request's in-flight marker frees its key
    idempotency_sweep_interval_s: int = 300  # how often expired durable keys are deleted
    ledger_check_interval_s: int = 300  # how often each process checks that the books balance
    cache_ttl_s: int = 30

    opening_balance: str = "1000.00"
    default_currency: str = "USD"
    max_transfer_amount: str = "1000000.00"

    log_level: str = "info"
    log_format: Literal["json", "console"] | None = None  # None: console on a terminal, else json

    request_body_bytes_max: int = 64 * 1024  # larger bodies get 413 before anyone parses them
    page_size_default: int = 20
    page_size_max: int = 100  # a page is never larger, whatever the client asks
    db_pool_size_max: int = 10  # per API process; PostgreSQL allows 100 connections by default
    db_command_timeout_s: float = 10.0  # a statement that takes longer is cancelled
    db_retries_max: int = 3  # serialization failures and deadlocks are retried this often
    redis_timeout_s: float = 0.25  # a Redis that hangs is treated as a Redis that is down
    shutdown_grace_s: int = 10  # in-flight requests get this long to finish on SIGTERM

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, dotenv: Path | None = Path(".env")
    ) -> Settings:
        """Read the variables named in the contract; the environment wins over `.env`."""
        env = {**(read_dotenv(dotenv) if dotenv else {}), **environ}
        fields: dict[str, object] = {}

        def take(variable: str, field: str | None = None) -> None:
            if env.get(variable):
                fields[field or variable.lower()] = env[variable]

        for variable in (
            "DATABASE_URL", "REDIS_URL", "HOST", "PORT", "WORKERS", "OPENING_BALANCE",
            "DEFAULT_CURRENCY", "MAX_TRANSFER_AMOUNT", "LOG_LEVEL", "LOG_FORMAT", "ENV",
            "DATA_DIR", "JWT_SECRET", "JWT_KEY_ID", "METRICS_PORT", "FORWARDED_ALLOW_IPS",
            "LIMIT_CONCURRENCY",
        ):  # fmt: skip
            take(variable)
        for variable, field in (
            ("ACCESS_TOKEN_TTL", "access_token_ttl_s"),
            ("REFRESH_TOKEN_TTL", "refresh_token_ttl_s"),
            ("IDEMPOTENCY_TTL", "idempotency_ttl_s"),
            ("CACHE_TTL", "cache_ttl_s"),
            ("IDEMPOTENCY_LOCK_TTL", "idempotency_lock_ttl_s"),
            ("KEEP_ALIVE_TIMEOUT", "keep_alive_timeout_s"),
        ):
            if env.get(variable):
                fields[field] = parse_duration_s(variable, env[variable])
        if env.get("REDIS_TIMEOUT"):
            fields["redis_timeout_s"] = parse_duration("REDIS_TIMEOUT", env["REDIS_TIMEOUT"])
        for tier in ("global", "auth", "transfer"):
            variable = f"RATE_LIMIT_{tier.upper()}"
            if env.get(variable):
                fields[f"rate_limit_{tier}"] = RateLimit.parse(tier, variable, env[variable])
        try:
            settings = cls.model_validate(fields)
        except ValueError as error:
            # Name the variables only: a value may be a secret.
            names = sorted({str(e["loc"][0]).upper() for e in getattr(error, "errors", list)()})
            raise SettingsError(f"invalid settings: {', '.join(names) or error}") from None
        if settings.metrics_port == settings.port:
            raise SettingsError("METRICS_PORT must differ from PORT")
        return settings.with_jwt_secret()

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, text: str) -> str:
        """'10.0.0.5, 10.1.0.0/16' -> '10.0.0.5,10.1.0.0/16'. uvicorn would take a typo for a
        name it never matches, and '*' for every client: both are refused here."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items:
            ipaddress.ip_network(item)  # a ValueError: an address or network it is not
        return ",".join(items)

    def with_jwt_secret(self) -> Settings:
        """Production must bring its own key; development keeps one generated key per data folder."""
        if self.jwt_secret.get_secret_value():
            return self
        if self.env == "production":
            raise SettingsError("JWT_SECRET is required when ENV=production")
        path = self.data_dir / "jwt_secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(secrets.token_urlsafe(48), encoding="utf-8")
            path.chmod(0o600)
        return self.model_copy(update={"jwt_secret": SecretStr(path.read_text(encoding="utf-8"))})

    @property
    def rate_limits(self) -> tuple[RateLimit, RateLimit, RateLimit]:
        return (self.rate_limit_global, self.rate_limit_auth, self.rate_limit_transfer)
