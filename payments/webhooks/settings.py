"""Webhooks' settings: the key that seals endpoint secrets, and how deliveries are sent and retried."""

from __future__ import annotations

from typing import Annotated

from cryptography.fernet import Fernet
from pydantic import Field, SecretStr, field_validator

from payments.platform.settings import Env, Section, parse_seconds


class WebhookSettings(Section):
    # Seals the endpoints' signing secrets in the database (a Fernet key: 32 url-safe base64
    # bytes). Required when ENV=production; in development, made once per data folder.
    webhook_secret_key: Annotated[SecretStr, Env("WEBHOOK_SECRET_KEY")] = SecretStr("")
    # Attempts per delivery before it is marked failed.
    webhook_max_attempts: Annotated[int, Env("WEBHOOK_MAX_ATTEMPTS"), Field(ge=1, le=20)] = 8
    # The first retry waits up to this long; each one after up to twice the last (full jitter).
    webhook_retry_base_s: Annotated[
        float, Env("WEBHOOK_RETRY_BASE", parse_seconds), Field(gt=0, le=3600)
    ] = 1.0
    # One attempt (connect, send, answer) gets this long; a receiver slower than that failed it.
    webhook_timeout_s: Annotated[
        float, Env("WEBHOOK_TIMEOUT", parse_seconds), Field(gt=0, le=60)
    ] = 5.0
    webhook_retry_cap_s: float = 3600.0  # no wait between two attempts is longer
    # Deliveries one worker process has in flight at once: a slow receiver holds one place each,
    # never the loop, nor a database connection.
    webhook_concurrency_max: int = 64
    # Deliveries claimed in one statement (at most the free places). A host below its share may
    # get up to this many more than its share: those wait for one of its connections.
    webhook_claim_max: int = 16
    # A loop claims once this many places are free (or none is taken), not one place at a time.
    webhook_claim_min: int = 8
    # In flight to one host at once, per process, on as many connections: past it, a host's
    # deliveries are not claimed, so a slow receiver with a backlog holds at most this many
    # places (and the claim that crossed it), and the rest are left to other hosts.
    webhook_host_in_flight_max: int = 16
    webhook_record_batch_max: int = 64  # finished attempts recorded in one transaction
    # Once a claim found the queue caught up (fewer due than it asked for), the next claim waits
    # this long first, and so does the recording of finished attempts: what is emitted or
    # finished meanwhile goes in one claim and one record, and one NOTIFY wakes the worker, not
    # one each. A delivery waits at most this much longer; a busy worker never waits.
    webhook_batch_wait_s: float = 0.05
    webhook_endpoints_live_max: int = 16  # per user (409 webhook_endpoint_limit)
    webhook_response_excerpt_max: int = 200  # characters of a receiver's answer kept per attempt
    webhook_queue_sample_interval_s: float = 5.0  # how fresh the pending and failed gauges are

    @field_validator("webhook_secret_key")
    @classmethod
    def _fernet_key(cls, key: SecretStr) -> SecretStr:
        """Empty (made later, outside production) or a key Fernet takes: 32 url-safe base64 bytes."""
        if key.get_secret_value():
            Fernet(key.get_secret_value())  # a ValueError (never naming the key) when it is not
        return key
