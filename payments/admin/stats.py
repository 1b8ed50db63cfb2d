"""GET /queue/stats and GET /cache/stats, for admins: the background queues' depths, and the
response cache's Redis."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
from redis.asyncio import RedisCluster
from starlette.requests import Request
from starlette.responses import Response

from payments.http.responses import json_response
from payments.platform import metrics
from payments.platform.db import Q
from payments.platform.redis_link import REDIS_ERRORS, AnyRedis
from payments.services import services

QueueStats = dict[str, int | float]
QueueProvider = Callable[[asyncpg.Pool], Awaitable[QueueStats]]


async def payments_queue(pool: asyncpg.Pool) -> QueueStats:
    """Payments waiting for a worker and in a worker's hands, and the oldest one's wait. Read
    through the partial index of payments not yet final (payment_due_idx), never the whole table."""
    row = await pool.fetchrow(Q.payments_queue_stats)
    assert row is not None
    return {
        "pending": row["pending"], "processing": row["processing"],
        "oldest_pending_age_s": round(row["oldest_pending_age_s"], 3),
    }  # fmt: skip


async def payroll_queue(pool: asyncpg.Pool) -> QueueStats:
    """Payroll jobs waiting and being paid, through the partial index of unfinished jobs."""
    row = await pool.fetchrow(Q.payroll_queue_stats)
    assert row is not None
    return {"queued": row["queued"], "processing": row["processing"]}


async def webhook_queue(pool: asyncpg.Pool) -> QueueStats:
    """Webhook deliveries still to send and those given up on, each read from its partial index."""
    row = await pool.fetchrow(Q.webhook_queue_stats)
    assert row is not None
    return {"pending": row["pending"], "failed": row["failed"]}


# Every queue of the service, by the name /queue/stats reports it under: one provider per domain
# whose work waits in a table. A domain with a queue adds its provider here.
QUEUE_PROVIDERS: dict[str, QueueProvider] = {
    "payments": payments_queue,
    "payroll_jobs": payroll_queue,
    "webhook_deliveries": webhook_queue,
}


async def queue_stats(request: Request) -> Response:
    """200 {payments: {pending, processing, oldest_pending_age_s}, ...}: each provider's counts,
    read concurrently."""
    pool = services(request).pool
    names = list(QUEUE_PROVIDERS)
    counts = await asyncio.gather(*(QUEUE_PROVIDERS[name](pool) for name in names))
    return json_response(200, dict(zip(names, counts, strict=True)))


def cache_hit_ratio() -> float | None:
    """Hits over lookups since the processes started, from the response cache's own counter
    (payments_cache_lookups_total, every API process's); None before the first lookup."""
    totals = metrics.counter_totals("payments_cache_lookups_total", "result")
    hits = totals.get("hit", 0.0)
    lookups = hits + totals.get("miss", 0.0)
    return round(hits / lookups, 4) if lookups else None


async def cache_stats(request: Request) -> Response:
    """200 {connected, keys, hit_ratio, memory_bytes, default_ttl_s}. `keys` is DBSIZE (the
    service's whole Redis database: cache entries beside rate limits, idempotency keys and the
    denylist), one O(1) command, where counting the cache's own keys would mean scanning the
    keyspace. Redis down: 200 with connected false, and what the service knows without it."""
    found = services(request)
    stats: dict[str, object] = {
        "connected": True, "keys": None, "hit_ratio": cache_hit_ratio(), "memory_bytes": None,
        "default_ttl_s": found.settings.cache_ttl_s,
    }  # fmt: skip
    try:
        keys, memory_bytes = await redis_size(found.redis)
    except REDIS_ERRORS:
        stats["connected"] = False
        return json_response(200, stats)
    stats["keys"], stats["memory_bytes"] = keys, memory_bytes
    return json_response(200, stats)


async def redis_size(redis: AnyRedis) -> tuple[int, int]:
    """Keys and memory used: one round trip to a single Redis; on a cluster, every primary's
    summed (its client sums DBSIZE itself, and will not pipeline INFO). DBSIZE goes to every
    primary by name: redis-py sends it to one node otherwise, which counts only its own slots."""
    if isinstance(redis, RedisCluster):
        keys, by_node = await asyncio.gather(
            redis.dbsize(target_nodes=RedisCluster.PRIMARIES),
            redis.info("memory", target_nodes=RedisCluster.PRIMARIES),
        )
        return int(keys), sum(int(info["used_memory"]) for info in by_node.values())
    async with redis.pipeline(transaction=False) as pipe:
        pipe.info("memory")
        pipe.dbsize()
        memory, keys = await pipe.execute()
    return int(keys), int(memory["used_memory"])
