"""Payroll's settings: how many items a job may hold, and how many one batch pays."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from payments.platform.settings import Env, Section


class PayrollSettings(Section):
    # Items paid in one transaction: large enough that a 10,000-item job is 20 round trips, small
    # enough that the accounts it locks are held for a fraction of a second.
    payroll_batch_size: Annotated[int, Env("PAYROLL_BATCH_SIZE"), Field(ge=1, le=5000)] = 500
    payroll_items_max: int = 10_000  # items in one job; its body fits bulk_request_body_bytes_max
