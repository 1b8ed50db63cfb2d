"""Admin's settings: the audit log's buffered writer (how long a security event waits, how many
go in one statement, and how many may wait while the database is slow)."""

from __future__ import annotations

from pydantic import Field

from payments.platform.settings import Section


class AdminSettings(Section):
    # A logged-in or refused request's audit row waits at most this long for its batch: short
    # enough that an operator reads it at once, long enough that a burst is one INSERT.
    audit_flush_interval_s: float = Field(default=0.15, gt=0)
    # Rows in one INSERT; a full batch is written at once, without waiting for the interval.
    audit_batch_max: int = Field(default=200, ge=1)
    # Rows waiting in one process; past this (the database down or far behind) new ones are
    # dropped, counted and logged, so that requests never wait for the audit log.
    audit_queue_max: int = Field(default=10_000, ge=1)
