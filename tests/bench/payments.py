"""make bench's payment scenarios: accepting (POST /payments at full speed, the worker held
still), settling a backlog of BACKLOG payments with one worker process and with two, and the
settle latency (acceptance to SUCCEEDED) of payments accepted at half the accept rate."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import statistics
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg

from tests.api.processes import start_worker
from tests.bench.client import request
from tests.population import FundedUser
from tests.procfs import process_tree

BACKLOG = int(os.environ.get("BENCH_BACKLOG", "20000"))
# Loops per worker process (WORKER_CONCURRENCY): 1 shows how a second process adds to the first
# while the database has room; the default, 4, saturates two cores with one process.
LOOPS = os.environ.get("BENCH_WORKER_CONCURRENCY", "4")
DRAIN_TIMEOUT_S = 300.0


def worker_pids(supervisor: int) -> list[int]:
    """The worker processes `python -m payments run` started beside the API."""
    found = []
    for pid in process_tree(supervisor):
        try:
            if b"payments\x00worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


@contextmanager
def held_still(pids: list[int]) -> Iterator[None]:
    """SIGSTOP the workers for the block (a backlog builds up), SIGCONT after."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def payment_request(source: FundedUser, target: FundedUser) -> bytes:
    return request("POST", "/api/v1/payments",
                   {"Authorization": f"Bearer {source.token}", "Idempotency-Key": uuid.uuid4().hex},
                   {"to_account_number": target.account_number, "amount": "0.01"})  # fmt: skip


def payment_requests(users: list[FundedUser], seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    while True:
        source, target = rng.sample(users, 2)
        yield payment_request(source, target)


async def unsettled(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval(
        "SELECT count(*) FROM payment WHERE status IN ('PENDING', 'PROCESSING')"))  # fmt: skip


async def drained(conn: asyncpg.Connection) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while await unsettled(conn):
        if time.monotonic() > deadline:
            raise SystemExit("the workers did not drain the payment backlog")
        await asyncio.sleep(0.05)


async def insert_backlog(conn: asyncpg.Connection, users: list[FundedUser], count: int) -> None:
    """count payments of 0.01 between random users, accepted directly in the database (as the
    API would have, but without keys): the worker's work, without the API's."""
    await conn.execute(
        """INSERT INTO payment (user_id, source_account_id, target_account_id, amount_minor, currency)
           SELECT s.user_id, s.id, t.id, 1, 'USD'
             FROM generate_series(1, $2) g
             JOIN LATERAL (SELECT $1::bigint[] AS ids) x ON true
             JOIN account s ON s.id = x.ids[1 + (g * 7919) % array_length(x.ids, 1)]
             JOIN account t ON t.id = x.ids[1 + (g * 7919 + 1 + g % 997) % array_length(x.ids, 1)]""",
        await conn.fetchval("SELECT array_agg(id) FROM account WHERE account_number = ANY($1)",
                            [user.account_number for user in users]),
        count,
    )  # fmt: skip


async def drain_seconds(
    database_url: str,
    users: list[FundedUser],
    supervisor: int,
    data_dir: Path,
    redis_url: str,
    extra_workers: int,
) -> tuple[float, float]:
    """Payments settled per second draining BACKLOG, with run's worker and extra_workers more;
    and the seconds it took."""
    conn = await asyncpg.connect(database_url)
    extra = [start_worker(database_url, redis_url, data_dir, PAYMENT_LEASE="30s",
                          WORKER_POLL_INTERVAL="1s", WORKER_CONCURRENCY=LOOPS)
             for _ in range(extra_workers)]  # fmt: skip
    try:
        await asyncio.sleep(1.5)  # the extra workers are up and idle
        await drained(conn)
        with held_still(worker_pids(supervisor) + [p.pid for p in extra]):
            await insert_backlog(conn, users, BACKLOG)
            started = time.monotonic()
        await drained(conn)
        elapsed = time.monotonic() - started
    finally:
        for process in extra:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
        await conn.close()
    return elapsed


async def settle_latencies(database_url: str, since_id: int) -> list[float]:
    """Seconds from acceptance to the final state of every payment after since_id."""
    conn = await asyncpg.connect(database_url)
    try:
        await drained(conn)
        rows = await conn.fetch(
            "SELECT extract(epoch FROM settled_at - created_at)::float8 AS s FROM payment"
            " WHERE id > $1 AND status = 'SUCCEEDED'", since_id)  # fmt: skip
    finally:
        await conn.close()
    return [row["s"] for row in rows]


def summary_ms(latencies_s: list[float]) -> str:
    ordered = sorted(latencies_s)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0
    return f"p50 {statistics.median(ordered) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
