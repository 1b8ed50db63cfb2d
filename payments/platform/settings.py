"""Settings: every knob is an environment variable (or a line of `.env`), read once at start-up."""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from payments.money.amounts import CURRENCY_EXPONENTS, PLAIN_DECIMAL

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


class Settings(BaseModel):
    """The service's configuration. Defaults serve a developer on a fresh machine. Each field that
    an operator may set names its variable once, here; every value is validated at start-up."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    env: Annotated[Literal["development", "test", "production"], Env("ENV")] = "development"
    # Embedded servers and the development JWT key live here.
    data_dir: Annotated[Path, Env("DATA_DIR")] = Path(".data")
    database_url: Annotated[
        str | None, Env("DATABASE_URL"), Field(pattern=r"^postgres(ql)?://")
    ] = None  # None: embedded
    redis_url: Annotated[str | None, Env("REDIS_URL"), Field(pattern=r"^(rediss?|unix)://")] = (
        None  # None: embedded
    )
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

    jwt_secret: Annotated[SecretStr, Env("JWT_SECRET")] = SecretStr("")
    # The `kid` header; a new id with a new secret rotates the key.
    jwt_key_id: Annotated[str, Env("JWT_KEY_ID"), Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "k1"
    jwt_issuer: str = "payments"
    jwt_audience: str = "payments-api"
    jwt_leeway_s: int = 30  # clock skew we forgive between hosts
    access_token_ttl_s: Annotated[int, Env("ACCESS_TOKEN_TTL", parse_duration_s), Field(ge=1)] = (
        15 * 60
    )
    refresh_token_ttl_s: Annotated[int, Env("REFRESH_TOKEN_TTL", parse_duration_s), Field(ge=1)] = (
        7 * 86400
    )

    # OWASP's minimum for Argon2id: 19 MiB, two passes, one lane (about 60 ms a verify here).
    argon2_time_cost: int = 2
    argon2_memory_cost_kib: int = 19_456
    argon2_parallelism: int = 1
    password_hash_threads: int = 1  # hashing runs in its own pool, off the event loop
    password_hash_queue_max: int = 32  # a login flood waits in a bounded queue, then gets 503
    # One client address may hold this many places in that queue, so that a flood from one
    # address cannot take every place from the real logins of others.
    password_hash_per_client_max: int = 4
    password_hash_nice: int = 19  # hashing threads yield the CPU to requests (Linux niceness)

    rate_limit_global: Annotated[
        RateLimit, Env("RATE_LIMIT_GLOBAL", RateLimit.parser("global"))
    ] = RateLimit(name="global", count=100, period_s=900)
    rate_limit_auth: Annotated[RateLimit, Env("RATE_LIMIT_AUTH", RateLimit.parser("auth"))] = (
        RateLimit(name="auth", count=10, period_s=60)
    )
    rate_limit_transfer: Annotated[
        RateLimit, Env("RATE_LIMIT_TRANSFER", RateLimit.parser("transfer"))
    ] = RateLimit(name="transfer", count=10, period_s=60)
    # Per account (email), whatever the address: one password is not guessed from many places.
    rate_limit_login: Annotated[RateLimit, Env("RATE_LIMIT_LOGIN", RateLimit.parser("login"))] = (
        RateLimit(name="login", count=10, period_s=900)
    )
    idempotency_ttl_s: Annotated[int, Env("IDEMPOTENCY_TTL", parse_duration_s), Field(ge=1)] = 86400
    # A crashed request's in-flight marker frees its key after this.
    idempotency_lock_ttl_s: Annotated[
        int, Env("IDEMPOTENCY_LOCK_TTL", parse_duration_s), Field(ge=1)
    ] = 30
    idempotency_sweep_interval_s: int = 300  # how often expired durable keys are deleted
    ledger_check_interval_s: int = 300  # how often each process checks that the books balance
    cache_ttl_s: Annotated[int, Env("CACHE_TTL", parse_duration_s), Field(ge=1)] = 30

    # A new user's first account opens with this, paid by the funding account: 1000.00 in
    # development and test, 0 in production (money enters there only through deposits).
    opening_balance: Annotated[str | None, Env("OPENING_BALANCE")] = None
    default_currency: Annotated[str, Env("DEFAULT_CURRENCY")] = "USD"
    max_transfer_amount: Annotated[str, Env("MAX_TRANSFER_AMOUNT")] = "1000000.00"

    log_level: Annotated[
        Literal["debug", "info", "warning", "error", "critical"],
        Env("LOG_LEVEL", lambda variable, text: text.lower()),
    ] = "info"
    # None: console on a terminal, else json.
    log_format: Annotated[Literal["json", "console"] | None, Env("LOG_FORMAT")] = None

    request_body_bytes_max: int = 64 * 1024  # larger bodies get 413 before anyone parses them
    page_size_default: int = 20
    page_size_max: int = 100  # a page is never larger, whatever the client asks
    db_pool_size_max: int = 10  # per API process; PostgreSQL allows 100 connections by default
    db_command_timeout_s: float = 10.0  # a statement that takes longer is cancelled
    db_acquire_timeout_s: float = 5.0  # a request that waits longer for a connection gets 503
    db_lock_timeout_s: float = 2.0  # a row lock not had by then: 503, come back (55P03)
    db_retries_max: int = 3  # serialization failures and deadlocks are retried this often
    # A Redis that hangs is treated as a Redis that is down.
    redis_timeout_s: Annotated[float, Env("REDIS_TIMEOUT", parse_seconds), Field(gt=0)] = 0.25
    shutdown_grace_s: int = 10  # in-flight requests get this long to finish on SIGTERM

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _proxy_addresses(cls, text: str) -> str:
        """'10.0.0.5, 10.1.0.0/16' -> '10.0.0.5,10.1.0.0/16'. uvicorn would take a typo for a
        name it never matches, and '*' for every client: both are refused here."""
        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items:
            ipaddress.ip_network(item)  # a ValueError: an address or network it is not
        return ",".join(items)

    @model_validator(mode="after")
    def check_ports(self) -> Settings:
        if self.metrics_port == self.port:
            raise ValueError("metrics_port: must differ from the API's port")
        return self

    @model_validator(mode="after")
    def check_money(self) -> Settings:
        """The currency is one we hold; the amounts are plain decimals it can hold."""
        if self.default_currency not in CURRENCY_EXPONENTS:
            raise ValueError("default_currency: not a currency this service holds")
        exponent = CURRENCY_EXPONENTS[self.default_currency]
        for name, text, minimum in (
            ("opening_balance", self.opening_balance or "0", Decimal(0)),
            ("max_transfer_amount", self.max_transfer_amount, Decimal("0.01")),
        ):
            match = PLAIN_DECIMAL.match(text)
            if match is None or len(match.group(1) or "") > exponent or Decimal(text) < minimum:
                raise ValueError(f"{name}: not a plain decimal amount in {self.default_currency}")
        return self

    @property
    def opening_balance_text(self) -> str:
        """The opening balance in force: the setting, or the environment's default."""
        if self.opening_balance is not None:
            return self.opening_balance
        return "0" if self.env == "production" else "1000.00"

    @classmethod
    def from_environ(
        cls, environ: Mapping[str, str], *, dotenv: Path | None = Path(".env")
    ) -> Settings:
        """Read every field's variable; the environment wins over `.env`. An invalid value stops
        here, with a message that names the variable and never the value."""
        env = {**(read_dotenv(dotenv) if dotenv else {}), **environ}
        fields: dict[str, object] = {}
        variables: dict[str, str] = {}
        for name, info in cls.model_fields.items():
            marker = next((m for m in info.metadata if isinstance(m, Env)), None)
            if marker is None:
                continue
            variables[name] = marker.variable
            if env.get(marker.variable):
                fields[name] = marker.parse(marker.variable, env[marker.variable])
        try:
            settings = cls.model_validate(fields)
        except ValidationError as error:
            names = set()
            for problem in error.errors(include_input=False, include_url=False):
                field = str(problem["loc"][0]) if problem["loc"] else ""
                field = field or str(problem.get("msg", "")).partition(":")[0].split()[-1]
                names.add(variables.get(field, field.upper()))
            raise SettingsError(f"invalid settings: {', '.join(sorted(names))}") from None
        return settings.with_jwt_secret()

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
