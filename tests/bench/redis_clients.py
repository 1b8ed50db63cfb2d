"""The Redis clients the request path could use, side by side: this process's CPU per call, at 32
calls in flight, for what a request asks of Redis: a GET, the admission script (EVALSHA, the real
script with a transfer's keys) and a transfer's after-batch (six writes over the two users' hash
tags, so two slots on a cluster).

Against one Redis: redis_link.py and redis-py. Against a local Redis Cluster (3 primaries, 3
replicas; tests/redis_cluster.py): redis_link.py with our slot routing (redis_cluster.py) and
redis-py's cluster client. Part of `make bench-layers`; BENCH_CALLS sets the calls per figure.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis, RedisCluster

from payments.http import rate_limit
from payments.http.admission import Plan, script_inputs, script_text
from payments.platform import redis_keys
from payments.platform.redis_cluster import ClusterLink
from payments.platform.redis_link import Link, RedisLink, Script
from payments.platform.settings import RateLimit
from tests.redis_cluster import running_cluster

IN_FLIGHT = 32
USERS = 1000  # spread over every slot range, so a cluster's three primaries all take calls
TIMEOUT_S = 5.0
Call = Callable[[int], Awaitable[Any]]


def admission_inputs(user_id: int) -> tuple[list[str], list[Any]]:
    """A transfer's admission: denylist, a new idempotency key, the global and transfer tiers."""
    tag = redis_keys.user_tag(user_id)
    limit = RateLimit(name="x", count=10**9, period_s=60)
    plan = Plan(
        tag=tag,
        tiers=[
            rate_limit.Tier(limit, redis_keys.rate_limit(tag, "global")),
            rate_limit.Tier(limit, redis_keys.rate_limit(tag, "transfer"), True),
        ],
        denylist_keys=(
            redis_keys.denylist_ready(user_id),
            redis_keys.revoked_family(user_id, "f"),
            redis_keys.revoked_token(user_id, "t"),
        ),
        idempotency_key=redis_keys.idempotency(user_id, uuid.uuid4().hex),
        fingerprint="ab" * 16,
        in_flight_ttl_ms=30_000,
    )
    return script_inputs(plan)


def after_batch(user_id: int) -> list[tuple[Any, ...]]:
    """A transfer's writes after its handler: the stored answer, both users' cache versions."""
    key = redis_keys.idempotency(user_id, uuid.uuid4().hex)
    other = (user_id + 1) % USERS
    return [
        ("HSET", key, "status", 201, "body", b"{}" * 100), ("PEXPIRE", key, 60_000),
        ("INCR", redis_keys.cache_version(user_id)),
        ("EXPIRE", redis_keys.cache_version(user_id), 86400),
        ("INCR", redis_keys.cache_version(other)), ("EXPIRE", redis_keys.cache_version(other), 86400),
    ]  # fmt: skip


def link_calls(link: Link) -> dict[str, Call]:
    script = Script(script_text())

    async def admission(i: int) -> Any:
        keys, arguments = admission_inputs(i % USERS)
        return await link.run_script(script, keys, arguments)

    return {
        "GET": lambda i: link.execute(("GET", redis_keys.cache_version(i % USERS))),
        "admission (EVALSHA)": admission,
        "after-batch (6 writes, 2 tags)": lambda i: link.execute(*after_batch(i % USERS)),
    }


def redis_py_calls(client: Redis | RedisCluster) -> dict[str, Call]:
    script = client.register_script(script_text())  # EVALSHA, EVAL when unknown

    async def admission(i: int) -> Any:
        keys, arguments = admission_inputs(i % USERS)
        return await script(keys=keys, args=arguments)

    async def batch(i: int) -> Any:
        async with client.pipeline(transaction=False) as pipe:
            for command in after_batch(i % USERS):
                pipe.execute_command(*command)
            return await pipe.execute()

    return {
        "GET": lambda i: client.get(redis_keys.cache_version(i % USERS)),
        "admission (EVALSHA)": admission,
        "after-batch (6 writes, 2 tags)": batch,
    }


async def cpu_per_call(call: Call, calls: int) -> float:
    """µs of this process's CPU per call, IN_FLIGHT at a time; median of three runs."""
    await asyncio.gather(*(call(i) for i in range(IN_FLIGHT)))  # warm: connections, scripts
    runs = []
    for _ in range(3):
        counter = iter(range(calls // 3))

        async def worker(counter: Any = counter) -> None:
            for i in counter:
                await call(i)

        started = time.process_time()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        runs.append((time.process_time() - started) / (calls // 3) * 1e6)
    return statistics.median(runs)


async def measure(name: str, calls: dict[str, Call], count: int, rows: dict[str, dict]) -> None:
    rows[name] = {}
    for operation, call in calls.items():
        try:
            rows[name][operation] = await cpu_per_call(call, count)
        except AttributeError as error:
            # redis-py 8.1's asyncio connections, opened many at once, now and then write to a
            # transport already torn down and raise this instead of ConnectionError (the family
            # of redis/redis-py#4287). Counted, and measured again once.
            print(f"{name}, {operation}: redis-py raised {error!r}; measured again")
            try:
                rows[name][operation] = await cpu_per_call(call, count)
            except AttributeError:
                rows[name][operation] = float("nan")  # printed as nan: it failed twice


async def compare(single_url: str, cluster_url: str, count: int) -> dict[str, dict[str, float]]:
    rows: dict[str, dict[str, float]] = {}
    link = RedisLink(single_url, TIMEOUT_S)
    await measure("redis_link.py, one Redis", link_calls(link), count, rows)
    link.close()
    client = Redis.from_url(single_url)
    await measure("redis-py Redis, one Redis", redis_py_calls(client), count, rows)
    await client.aclose()
    cluster_link = ClusterLink(cluster_url, TIMEOUT_S)
    await measure("redis_link.py + slot routing, cluster", link_calls(cluster_link), count, rows)
    cluster_link.close()
    cluster = RedisCluster.from_url(cluster_url)
    await measure("redis-py RedisCluster, cluster", redis_py_calls(cluster), count, rows)
    await cluster.aclose()
    return rows


def report(rows: dict[str, dict[str, float]], count: int) -> None:
    operations = list(next(iter(rows.values())))
    print(f"\nRedis clients: µs of this process's CPU per call, {IN_FLIGHT} in flight, "
          f"median of 3 runs of {count // 3} calls")  # fmt: skip
    print(f"{'client':<40}" + "".join(f"{operation[:24]:>26}" for operation in operations))
    for name, figures in rows.items():
        print(f"{name:<40}" + "".join(f"{figures[operation]:>26.1f}" for operation in operations))


async def run(single_url: str, count: int) -> None:
    with running_cluster() as cluster:
        report(await compare(single_url, cluster.url, count), count)
