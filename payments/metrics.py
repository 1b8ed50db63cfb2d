"""Every Prometheus metric object. Labels come from closed sets: never ids or raw paths."""

from __future__ import annotations

from prometheus_client import Counter

RATE_LIMIT_DECISIONS = Counter(
    "payments_rate_limit_decisions_total", "Rate-limit decisions by tier.", ["tier", "decision"]
)
IDEMPOTENCY_OUTCOMES = Counter(
    "payments_idempotency_outcomes_total",
    "Requests with an Idempotency-Key by outcome (new, replayed, in_use, reused).",
    ["outcome"],
)
CACHE_LOOKUPS = Counter("payments_cache_lookups_total", "Response cache lookups.", ["result"])
REDIS_FALLBACKS = Counter(
    "payments_redis_fallbacks_total",
    "Requests served without Redis because it did not answer, by layer.",
    ["layer"],
)
