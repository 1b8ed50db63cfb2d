"""Every Prometheus metric object, and /metrics. Labels come from closed sets: method, route
template, status class, tier, outcome, currency; never ids or raw paths.

With several API processes, PROMETHEUS_MULTIPROC_DIR is set before any of them starts (see
__main__.py) and each scrape adds up every process's files."""

from __future__ import annotations

import functools
import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from starlette.requests import Request
from starlette.responses import Response

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# In multiprocess mode every increment asks the kernel for the process id, to notice a fork; a
# request makes about ten. The id is read once instead, and again in a forked child.
_process_id = os.getpid()


def _refresh_process_id() -> None:
    global _process_id
    _process_id = os.getpid()


if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
    os.register_at_fork(after_in_child=_refresh_process_id)
    values.ValueClass = values.MultiProcessValue(process_identifier=lambda: _process_id)  # type: ignore[no-untyped-call]

HTTP_REQUESTS = Counter(
    "payments_http_requests_total", "HTTP requests answered.", ["method", "route", "status_class"]
)
HTTP_DURATION = Histogram(
    "payments_http_request_duration_seconds", "Time to answer an HTTP request.", ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)  # fmt: skip
HTTP_IN_FLIGHT = Gauge(
    "payments_http_requests_in_flight", "HTTP requests being served.", multiprocess_mode="livesum"
)
TRANSFERS = Counter(
    "payments_transfers_total", "Money-moving requests by outcome (created, replayed, or the problem code).",
    ["outcome"],
)  # fmt: skip
AMOUNT_MOVED = Counter(
    "payments_amount_moved_minor_total",
    "Money moved by transfers and reversals, in minor units.",
    ["currency"],
)
RATE_LIMIT_DECISIONS = Counter(
    "payments_rate_limit_decisions_total", "Rate-limit decisions by tier.", ["tier", "decision"]
)
IDEMPOTENCY_OUTCOMES = Counter(
    "payments_idempotency_outcomes_total",
    "Requests with an Idempotency-Key by outcome (new, replay, in_use, reused, unknown).",
    ["outcome"],
)
CACHE_LOOKUPS = Counter("payments_cache_lookups_total", "Response cache lookups.", ["result"])
REDIS_FALLBACKS = Counter(
    "payments_redis_fallbacks_total", "Requests served without Redis because it did not answer, by layer.",
    ["layer"],
)  # fmt: skip
DB_POOL_CONNECTIONS = Gauge(
    "payments_db_pool_connections", "PostgreSQL connections held by the pools, by state.", ["state"],
    multiprocess_mode="livesum",
)  # fmt: skip
PAYMENTS_SETTLED = Counter(
    "payments_payments_settled_total", "Payments settled by the worker, by outcome (succeeded, failed).",
    ["outcome"],
)  # fmt: skip
PAYMENT_SETTLE_LATENCY = Histogram(
    "payments_payment_settle_latency_seconds",
    "Time from a payment's acceptance to its final state.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
PAYMENT_QUEUE = Gauge(
    "payments_payment_queue", "Payments not yet final, by state (pending, processing).", ["state"],
    multiprocess_mode="livemostrecent",
)  # fmt: skip
PAYMENT_OLDEST_PENDING_AGE = Gauge(
    "payments_payment_oldest_pending_age_seconds",
    "How long the oldest pending payment has waited for a worker.",
    multiprocess_mode="livemostrecent",
)
WEBHOOK_DELIVERIES = Gauge(
    "payments_webhook_deliveries", "Webhook deliveries by state (pending: still to send; failed: gave up).",
    ["state"], multiprocess_mode="livemostrecent",
)  # fmt: skip
WEBHOOK_ATTEMPTS = Counter(
    "payments_webhook_attempts_total", "Webhook delivery attempts by outcome (delivered, retrying, failed).",
    ["outcome"],
)  # fmt: skip
WEBHOOK_DELIVERY_LATENCY = Histogram(
    "payments_webhook_delivery_latency_seconds",
    "Time from an event's emission to its delivery (a 2xx from the receiver), retries included.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0),
)
LEDGER_INVARIANT_VIOLATIONS = Counter(
    "payments_ledger_invariant_violations_total",
    "Currencies whose entries do not sum to zero, balances that are not the sum of their entries, "
    "and what reconciliation finds in recent books (missing or unbalanced entries, chain breaks, "
    "payments without their transaction), found by the periodic check. Must stay 0.",
)

AUDIT_EVENTS_WRITTEN = Counter(
    "payments_audit_events_written_total",
    "Audit events written by the buffered writer (logins, logouts, 429s, admin requests).",
)
AUDIT_EVENTS_DROPPED = Counter(
    "payments_audit_events_dropped_total",
    "Audit events the buffered writer dropped, by reason (queue_full, db_error). Should stay 0.",
    ["reason"],
)


# labels() validates and converts its arguments and takes a lock each call, to find a child that
# never changes for the same labels (and our label values come from closed sets): remembered.
for _metric in (HTTP_REQUESTS, HTTP_DURATION, TRANSFERS, AMOUNT_MOVED, RATE_LIMIT_DECISIONS,
                IDEMPOTENCY_OUTCOMES, CACHE_LOOKUPS, REDIS_FALLBACKS, DB_POOL_CONNECTIONS,
                PAYMENTS_SETTLED, PAYMENT_QUEUE, AUDIT_EVENTS_DROPPED, WEBHOOK_DELIVERIES,
                WEBHOOK_ATTEMPTS):  # fmt: skip
    _metric.labels = functools.lru_cache(maxsize=1024)(_metric.labels)  # type: ignore[method-assign, assignment]


def current_registry() -> CollectorRegistry:
    """This process's metrics, or every process's in multiprocess mode (read from their files)."""
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return registry
    return REGISTRY


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus text format: this process's metrics, or every process's in multiprocess mode."""
    return Response(generate_latest(current_registry()), media_type=CONTENT_TYPE_LATEST)


def counter_totals(sample_name: str, label: str) -> dict[str, float]:
    """A counter's totals by the value of one of its labels, over every process (as /metrics
    would report them): `counter_totals("payments_cache_lookups_total", "result")`."""
    totals: dict[str, float] = {}
    for family in current_registry().collect():
        for sample in family.samples:
            if sample.name == sample_name:
                value = sample.labels.get(label, "")
                totals[value] = totals.get(value, 0.0) + sample.value
    return totals


def process_stopped() -> None:
    """Drop this process's live gauges (in-flight, pool) from the sums; its counters stay."""
    if os.environ.get(MULTIPROCESS_DIR_VARIABLE):
        multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
