"""Payments' settings: the worker's lease, how many payments it settles at once, and its pace."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from payments.platform.settings import Env, Section, parse_duration_s, parse_seconds


class PaymentSettings(Section):
    # How long a worker's claim holds before another worker may take the payment over.
    payment_lease_s: Annotated[int, Env("PAYMENT_LEASE", parse_duration_s), Field(ge=1)] = 30
    # Claim-and-settle loops one worker process runs at once (each one PostgreSQL connection).
    worker_concurrency: Annotated[int, Env("WORKER_CONCURRENCY"), Field(ge=1, le=64)] = 4
    # Payments one loop claims and settles in one statement: small enough that its accounts, held
    # until it commits, seldom hold up another batch or a transfer (25 settled faster than 100
    # with two worker processes, and as fast with one).
    payment_batch_max: int = 25
    payment_attempts_max: int = 5  # claims without a settlement before a payment fails
    # The safety net under LISTEN/NOTIFY: a loop with nothing to do looks again after this.
    worker_poll_interval_s: Annotated[
        float, Env("WORKER_POLL_INTERVAL", parse_seconds), Field(gt=0)
    ] = 1.0
