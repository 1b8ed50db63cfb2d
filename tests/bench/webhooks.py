"""make bench's webhook-fanout scenario. Every bench user gets one endpoint, so each transfer
emits one event with two deliveries (payer and payee). Measured, one after the other:

1. transfers with no endpoint at all (the common case: emission is one index probe);
2. transfers while a receiver that answers at once gets every delivery: the transfer rate, and
   the deliveries per second the worker (the one `run` starts) keeps up;
3. transfers while the receiver sleeps 2 s on every request: the transfer p99 must not move,
   since no connection, loop or lock waits for a receiver.

The deliveries' latency (emission to a 2xx) is read from the delivery log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from payments.webhooks.sealing import Sealer
from tests.bench.cpu import cpu_seconds

DRAIN_TIMEOUT_S = 120.0
SLOW_RECEIVER_S = 2.0


@contextmanager
def receiver(delay_s: float) -> Iterator[tuple[str, int]]:
    """A receiver process answering 200 after delay_s; its URL and process id."""
    process = subprocess.Popen([sys.executable, "-m", "tests.bench.receiver", str(delay_s)],
                               stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert process.stdout is not None
        yield process.stdout.readline().decode().strip(), process.pid
    finally:
        process.kill()
        process.wait(10)


async def add_endpoints(conn: asyncpg.Connection, sealer: Sealer, url: str) -> None:
    """One endpoint for every customer, written directly (the API would check the same)."""
    sealed = sealer.seal("whsec_" + "b" * 43)
    await conn.execute(
        "INSERT INTO webhook_endpoint (user_id, url, events, secret_sealed)"
        " SELECT u.id, $1, ARRAY['transaction.created'], $2 FROM app_user u", url, sealed)  # fmt: skip


async def remove_endpoints(conn: asyncpg.Connection) -> None:
    """Gone, and what they still had to send given up (a slow receiver's backlog)."""
    await conn.execute("UPDATE webhook_delivery SET state = 'failed' WHERE state = 'pending'")
    await conn.execute("UPDATE webhook_endpoint SET deleted_at = now() WHERE deleted_at IS NULL")


async def drained(conn: asyncpg.Connection) -> float:
    """Seconds until no delivery is pending."""
    started = time.monotonic()
    while await conn.fetchval("SELECT count(*) FROM webhook_delivery WHERE state = 'pending'"):
        if time.monotonic() - started > DRAIN_TIMEOUT_S:
            raise SystemExit("the worker did not deliver the webhook backlog in time")
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def delivery_latencies(conn: asyncpg.Connection, since_id: int) -> list[float]:
    rows = await conn.fetch(
        "SELECT extract(epoch FROM a.attempted_at - v.created_at)::float8 AS s"
        "  FROM webhook_attempt a JOIN webhook_delivery d ON d.id = a.delivery_id"
        "  JOIN webhook_event v ON v.id = d.event_id"
        " WHERE a.outcome = 'delivered' AND d.id > $1", since_id)  # fmt: skip
    return [row["s"] for row in rows]


async def fanout(
    database_url: str,
    sealer: Sealer,
    measure_transfers: Callable[[str], Awaitable[Any]],
    delivery_result: Callable[[str, float, list[float]], Any],
) -> list[Any]:
    """The three runs; measure_transfers(name) drives the transfer scenario under that name."""
    conn = await asyncpg.connect(database_url)
    results = []
    try:
        results.append(await measure_transfers("fanout: no endpoint"))
        since_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM webhook_delivery")
        with receiver(0.0) as (url, pid):
            await add_endpoints(conn, sealer, url)
            started, receiver_started_s = time.monotonic(), cpu_seconds({pid})  # up and serving
            transfers = await measure_transfers("fanout: delivering")
            results.append(transfers)
            drain_s = await drained(conn)
            window_s = time.monotonic() - started
            delivered = await conn.fetchval(
                "SELECT count(*) FROM webhook_delivery WHERE id > $1 AND state = 'delivered'", since_id)  # fmt: skip
            receiver_us = (cpu_seconds({pid}) - receiver_started_s) / max(delivered, 1) * 1e6
            print(f"  webhook-fanout: {delivered} deliveries in {window_s:.1f} s "
                  f"({drain_s:.1f} s of it after the transfers stopped); the receiver, not in the "
                  f"CPU table, used {receiver_us:.0f} µs of CPU a delivery", file=sys.stderr)  # fmt: skip
            results.append(delivery_result("fanout: deliveries", window_s,
                                           await delivery_latencies(conn, since_id)))  # fmt: skip
            await remove_endpoints(conn)
        with receiver(SLOW_RECEIVER_S) as (url, _):
            await add_endpoints(conn, sealer, url)
            results.append(await measure_transfers("fanout: receiver 2s"))
            slow = await conn.fetchval(
                "SELECT count(*) FROM webhook_delivery WHERE state = 'pending'"
            )
            print(f"  webhook-fanout: {slow} deliveries to the 2 s receiver still pending",
                  file=sys.stderr)  # fmt: skip
            await remove_endpoints(conn)
    finally:
        await conn.close()
    return results
