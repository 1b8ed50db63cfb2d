"""The HTTP layers' settings: rate limits, idempotency, the response cache, bodies and pages."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from payments.platform.settings import Env, RateLimit, Section, parse_duration_s


class HttpSettings(Section):
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
    cache_ttl_s: Annotated[int, Env("CACHE_TTL", parse_duration_s), Field(ge=1)] = 30
    request_body_bytes_max: int = 64 * 1024  # larger bodies get 413 before anyone parses them
    # The routes whose rules say bulk_body (payroll jobs: 10,000 items) take bodies up to this.
    bulk_request_body_bytes_max: int = 2 * 1024 * 1024
    page_size_default: int = 20
    page_size_max: int = 100  # a page is never larger, whatever the client asks
