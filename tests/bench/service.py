"""make bench: the service under load, over HTTP, from this process (the service runs in its own).

Starts embedded PostgreSQL and Redis in `.data/bench`, opens 1,000 funded accounts and a merchant,
then starts the service as `make run` does (`python -m payments run`) with rate limits raised out
of the way, and drives each scenario with BENCH_CLIENTS keep-alive clients (32) for BENCH_SECONDS
(15) after a short warm-up. Prints one table, and writes `bench-results/bench.json` and
`bench-results/bench.png`. BENCH_PGBOUNCER=1 puts PgBouncer (transaction pooling,
tests/pgbouncer.py) between the service (and raw-sql) and PostgreSQL. BENCH_WORKERS sets the API processes (the default of WORKERS, 1, as make run); BENCH_SCENARIOS=transfer,raw-sql runs only those; BENCH_BACKLOG and
BENCH_WORKER_CONCURRENCY size the payment-settle scenario. REDIS_CLUSTER=true runs it against a
local Redis Cluster of three primaries and three replicas (tests/redis_cluster.py) instead;
webhook-fanout measures transfers with and without webhook deliveries (tests/bench/webhooks.py).

raw-sql is the service's own transfer statement sent with asyncpg from here, no HTTP: the floor
the transfer scenario is measured against. After the money scenarios the books are checked."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import sys
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

from payments.identity.tokens import AccessTokens
from payments.platform.db import Q
from payments.platform.embedded import servers
from payments.platform.migrate import migrate
from payments.settings import Settings
from payments.webhooks.sealing import Sealer
from tests.api.processes import server
from tests.bench import fx_payroll, ledger, payments, webhooks
from tests.bench.client import Connection, request
from tests.bench.cpu import CpuMeter
from tests.bench.report import print_table, ratios, write_results
from tests.books import book_violations
from tests.conftest import CLUSTERED, make_settings
from tests.pgbouncer import pgbouncer
from tests.population import FundedUser, open_funded_users
from tests.procfs import listening_on, process_tree
from tests.redis_cluster import running_cluster

ROOT = Path(__file__).resolve().parents[2]
ACCOUNTS = 1_000
OPENING_MINOR = 100_000_000  # 1,000,000.00 each: no transfer of 0.01 runs out of money
WARMUP_S = 2.0
SEED_LOGIN = {"email": "alice@finpay.dev", "password": "password123"}  # made by `run`
RAISED = "100000000/1m"

# One client's next request: None when the answer was the expected one, else what was wrong.
Attempt = Callable[[], Awaitable[str | None]]


@dataclass
class Result:
    scenario: str
    clients: int
    seconds: float = 0.0
    latencies_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_s: dict[str, float] = field(default_factory=dict)  # by process group, while measured

    @property
    def requests(self) -> int:
        return len(self.latencies_s)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else 0.0

    @property
    def error_rate(self) -> float:
        return sum(self.errors.values()) / self.requests if self.requests else 0.0

    def summary(self) -> dict[str, object]:
        return {
            "scenario": self.scenario, "clients": self.clients, "requests": self.requests,
            "seconds": round(self.seconds, 2), "requests_per_s": round(self.rate, 1),
            "p50_ms": round(self.percentile_ms(0.50), 2), "p95_ms": round(self.percentile_ms(0.95), 2),
            "p99_ms": round(self.percentile_ms(0.99), 2), "error_rate": round(self.error_rate, 4),
            "errors": dict(self.errors),
            "cpu_us_per_request": {name: round(seconds / self.requests * 1e6, 1)
                                   for name, seconds in self.cpu_s.items() if self.requests},
        }  # fmt: skip


async def drive(
    result: Result, attempts: list[Attempt], seconds: float, meter: CpuMeter | None = None
) -> Result:
    """Every client sends its next request as soon as the last is answered; only the answers
    after the warm-up count. `meter`, when given, reads the CPU time spent in that window."""
    measuring = False
    stopping = False

    async def client(attempt: Attempt) -> None:
        while not stopping:
            started = time.perf_counter()
            try:
                problem = await attempt()
            except Exception as error:  # a dropped connection, a database error: counted
                problem = type(error).__name__
            if measuring:
                result.latencies_s.append(time.perf_counter() - started)
                if problem is not None:
                    result.errors[problem] += 1

    tasks = [asyncio.create_task(client(attempt)) for attempt in attempts]
    await asyncio.sleep(WARMUP_S)
    measuring, started = True, time.monotonic()
    if meter is not None:
        meter.start()
    while (elapsed := time.monotonic() - started) < seconds:
        await asyncio.sleep(min(1.0, seconds - elapsed))
        progress(result, time.monotonic() - started, seconds)
    measuring = False
    result.seconds = time.monotonic() - started
    if meter is not None:
        result.cpu_s = meter.stop()
    stopping = True
    await asyncio.gather(*tasks)
    print(file=sys.stderr)
    return result


def progress(result: Result, elapsed: float, seconds: float) -> None:
    line = (f"  {result.scenario:<20} {elapsed:5.1f}/{seconds:.0f} s  {result.requests:>8} requests"
            f"  {result.requests / max(elapsed, 1e-9):8.0f}/s  errors {sum(result.errors.values())}")  # fmt: skip
    print(("\r" + line) if sys.stderr.isatty() else line, end="" if sys.stderr.isatty() else "\n",
          file=sys.stderr, flush=True)  # fmt: skip


def over_http(
    port: int, next_request: Callable[[], bytes], expect: Callable[[int, bytes], bool]
) -> Attempt:
    """An attempt on a connection of its own, reopened after an error."""
    connection: Connection | None = None

    async def attempt() -> str | None:
        nonlocal connection
        if connection is None:
            connection = await Connection.open("127.0.0.1", port)
        try:
            status, head, _ = await connection.send(next_request())
        except Exception:
            await connection.close()
            connection = None
            raise
        return None if expect(status, head) else f"HTTP {status}"

    return attempt


def transfer_request(source: FundedUser, target: FundedUser, key: str) -> bytes:
    return request("POST", "/api/v1/transactions",
                   {"Authorization": f"Bearer {source.token}", "Idempotency-Key": key},
                   {"to_account_number": target.account_number, "amount": "0.01"})  # fmt: skip


def status_is(expected: int) -> Callable[[int, bytes], bool]:
    return lambda status, head: status == expected


def replayed(status: int, head: bytes) -> bool:
    return status == 201 and b"\r\nidempotent-replayed: true" in head


def transfers(
    port: int, users: list[FundedUser], clients: int, merchant: FundedUser | None
) -> list[Attempt]:
    """Random payer and payee among the users, or every payment to the one merchant."""
    rng = random.Random(1)

    def next_request() -> bytes:
        source, target = rng.sample(users, 2)
        return transfer_request(source, merchant or target, uuid.uuid4().hex)

    return [over_http(port, next_request, status_is(201)) for _ in range(clients)]


def replays(port: int, users: list[FundedUser], clients: int) -> list[Attempt]:
    """Each client sends one transfer (in the warm-up) and then retries it with its key."""
    raws = [transfer_request(users[i], users[i + 1], uuid.uuid4().hex) for i in range(clients)]
    return [over_http(port, lambda raw=raw: raw, replayed) for raw in raws]  # type: ignore[misc]


def balances(port: int, users: list[FundedUser], clients: int) -> list[Attempt]:
    """Each client reads its own user's accounts: a cache hit after the first."""
    raws = [request("GET", "/api/v1/accounts", {"Authorization": f"Bearer {users[i].token}"})
            for i in range(clients)]  # fmt: skip
    return [over_http(port, lambda raw=raw: raw, status_is(200)) for raw in raws]  # type: ignore[misc]


def logins(port: int, clients: int) -> list[Attempt]:
    raw = request("POST", "/api/v1/auth/login", {}, SEED_LOGIN)
    return [over_http(port, lambda: raw, status_is(200)) for _ in range(clients)]


def pings(port: int, clients: int) -> list[Attempt]:
    raw = request("GET", "/api/v1/health", {})
    return [over_http(port, lambda: raw, status_is(200)) for _ in range(clients)]


def raw_sql(pool: asyncpg.Pool, users: list[FundedUser], clients: int, ttl_s: int) -> list[Attempt]:
    """The transfer scenario's statement with the same arguments the handler sends, from here."""
    rng = random.Random(2)

    async def attempt() -> str | None:
        source, target = rng.sample(users, 2)
        row = await pool.fetchrow(Q.transfer_funds, source.user_id, uuid.uuid4().hex, os.urandom(32),
                                  ttl_s, None, target.account_number, "0.01", None, None)  # fmt: skip
        return None if row["status"] == 201 else f"status {row['status']}"

    return [attempt for _ in range(clients)]


async def check_books(database_url: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        violations = await book_violations(
            conn, currency="USD", customers_hold_minor=(ACCOUNTS + 1) * OPENING_MINOR
        )
        moved = await conn.fetchval(
            "SELECT count(*) FROM transfer WHERE kind IN ('transfer', 'payment')"
        )
    finally:
        await conn.close()
    if violations:
        raise SystemExit("the books do not balance: " + "; ".join(violations))
    return (
        f"books balanced after {moved} transfers and payments: ledger sums to zero, money conserved"
    )


def postgres_processes(database_url: str) -> set[int]:
    """The embedded server's postmaster (its pid file is in the socket's folder) and children."""
    folder = Path(parse_qs(urlsplit(database_url).query)["host"][0])
    postmaster = int((folder / "postmaster.pid").read_text().split()[0])
    return process_tree(postmaster)


SCENARIOS = ("ping", "balance", "login", "transfer", "transfer-hot", "replay", "raw-sql",
             "payment-accept", "payment-settle", "payment-latency", "fx-transfer", "payroll",
             "webhook-fanout", "ledger-chain")  # fmt: skip


@dataclass
class Bench:
    port: int
    database_url: str
    users: list[FundedUser]
    merchant: FundedUser
    clients: int
    seconds: float
    pool_size: int  # the service's own connections, all processes together
    key_ttl_s: int
    meter: CpuMeter
    supervisor: int  # the `run` process: the API's processes and the worker beside them
    data_dir: Path
    redis_url: str
    pooled_url: str | None = None  # the service's DATABASE_URL, when PgBouncer is in between
    accept_rate: float = 0.0  # payments accepted per second, once payment-accept measured it


async def scenario(name: str, bench: Bench) -> list[Result]:
    port, users, clients, seconds = bench.port, bench.users, bench.clients, bench.seconds
    meter = bench.meter
    match name:
        case "ping":
            return [await drive(Result(name, clients), pings(port, clients), seconds, meter)]
        case "balance":
            return [
                await drive(Result(name, clients), balances(port, users, clients), seconds, meter)
            ]
        case "login":  # and the balance scenario beside it, at the same time: no CPU per request
            return list(await asyncio.gather(
                drive(Result("login", clients), logins(port, clients), seconds),
                drive(Result("balance (under login)", clients), balances(port, users, clients), seconds),
            ))  # fmt: skip
        case "transfer" | "transfer-hot":
            merchant = bench.merchant if name == "transfer-hot" else None
            attempts = transfers(port, users, clients, merchant)
            return [await drive(Result(name, clients), attempts, seconds, meter)]
        case "replay":
            return [
                await drive(Result(name, clients), replays(port, users, clients), seconds, meter)
            ]
        case "payment-accept":  # the worker held still: accepting alone
            requests = payments.payment_requests(users, seed=3)
            attempts = [over_http(port, lambda: next(requests), status_is(202))
                        for _ in range(clients)]  # fmt: skip
            with payments.held_still(payments.worker_pids(bench.supervisor)):
                result = await drive(Result(name, clients), attempts, seconds, meter)
            bench.accept_rate = result.rate
            return [result]
        case "payment-settle":
            return [await settle_backlog(bench, extra_workers) for extra_workers in (0, 1)]
        case "payment-latency":
            return [await settle_latency(bench)]
        case "fx-transfer":
            return await fx_transfers(bench)
        case "payroll":
            return [await payroll(bench)]
        case "webhook-fanout":
            return await webhook_fanout(bench)
        case "ledger-chain":  # last: it leaves one account with CHAIN_ENTRIES entries
            timings, measured = await ledger.chain_check(port, bench.database_url, users)
            print(f"  ledger-chain: {measured}", file=sys.stderr)
            result = Result(name, 1, sum(timings))
            result.latencies_s = timings
            return [result]
        case "raw-sql":  # through PgBouncer too when the service is: no statement cache there
            async with asyncpg.create_pool(bench.pooled_url or bench.database_url, min_size=bench.pool_size,
                                           max_size=bench.pool_size,
                                           statement_cache_size=0 if bench.pooled_url else 100) as pool:  # fmt: skip
                attempts = raw_sql(pool, users, clients, bench.key_ttl_s)
                return [await drive(Result(name, clients), attempts, seconds, meter)]
    raise SystemExit(f"no scenario {name!r}: choose from {', '.join(SCENARIOS)}")


async def webhook_fanout(bench: Bench) -> list[Result]:
    """Transfers without endpoints, then with every delivery to a receiver that answers at once,
    then to one that sleeps 2 s (tests/bench/webhooks.py)."""

    async def measure_transfers(name: str) -> Result:
        attempts = transfers(bench.port, bench.users, bench.clients, None)
        return await drive(Result(name, bench.clients), attempts, bench.seconds, bench.meter)

    def delivery_result(name: str, seconds: float, latencies_s: list[float]) -> Result:
        result = Result(name, 0, seconds)
        result.latencies_s = latencies_s  # its rate: deliveries per second over the window
        return result

    sealer = Sealer(make_settings(bench.database_url, bench.redis_url))
    return await webhooks.fanout(bench.database_url, sealer, measure_transfers, delivery_result)


async def settle_backlog(bench: Bench, extra_workers: int) -> Result:
    """A backlog of payments.BACKLOG drained by run's worker and extra_workers more."""
    count = 1 + extra_workers
    elapsed = await payments.drain_seconds(bench.database_url, bench.users, bench.supervisor,
                                               bench.data_dir, bench.redis_url, extra_workers)  # fmt: skip
    print(f"  payment-settle: {payments.BACKLOG} payments by {count} worker(s) in {elapsed:.1f} s",
          file=sys.stderr)  # fmt: skip
    result = Result(f"payment-settle ({count} worker{'s' if count > 1 else ''})", 0, elapsed)
    result.latencies_s = [0.0] * payments.BACKLOG  # the rate; its latency is the next scenario's
    return result


async def settle_latency(bench: Bench) -> Result:
    """Payments accepted at half the accept rate with the worker running; the latencies are
    from acceptance to SUCCEEDED, read from the payments themselves."""
    rate = (bench.accept_rate or 1000.0) / 2
    conn = await asyncpg.connect(bench.database_url)
    since_id = await conn.fetchval("SELECT coalesce(max(id), 0) FROM payment")
    await conn.close()
    requests = payments.payment_requests(bench.users, seed=4)
    interval_s = bench.clients / rate
    attempts = [paced(over_http(bench.port, lambda: next(requests), status_is(202)), interval_s)
                for _ in range(bench.clients)]  # fmt: skip
    result = await drive(Result("payment-latency", bench.clients), attempts, bench.seconds)
    result.latencies_s = await payments.settle_latencies(bench.database_url, since_id)
    result.seconds = bench.seconds + WARMUP_S
    print(f"  payment-latency at {rate:.0f}/s: {payments.summary_ms(result.latencies_s)}",
          file=sys.stderr)  # fmt: skip
    return result


async def fx_transfers(bench: Bench) -> list[Result]:
    """FX transfers USD -> EUR of 0.01 to random users: the transfer alone, each client using
    quotes of its own made beforehand; then quote and transfer, both over HTTP, a pair a try."""
    clients = bench.users[: bench.clients]
    conn = await asyncpg.connect(bench.database_url)
    try:
        targets = await fx_payroll.open_target_accounts(conn, bench.users)
        quotes = await fx_payroll.make_quotes(conn, clients, fx_payroll.QUOTES_PER_CLIENT)
    finally:
        await conn.close()
    next_for = fx_payroll.premade_transfers(clients, targets, quotes)
    alone = [over_http(bench.port, next_for(i), status_is(201)) for i in range(len(clients))]
    result = await drive(Result("fx-transfer", len(clients)), alone, bench.seconds, bench.meter)
    pairs = [fx_payroll.quote_then_transfer(bench.port, user, targets) for user in clients]
    both = await drive(Result("fx-quote+transfer", len(clients)), pairs, bench.seconds, bench.meter)
    return [result, both]


async def payroll(bench: Bench) -> Result:
    """One payroll job of fx_payroll.PAYROLL_ITEMS items, submit to COMPLETED, by run's worker."""
    elapsed = await fx_payroll.payroll_seconds(bench.port, bench.database_url, bench.merchant)
    items = fx_payroll.PAYROLL_ITEMS
    print(f"  payroll: {items} items in {elapsed:.2f} s, {items / elapsed:.0f} items/s",
          file=sys.stderr)  # fmt: skip
    result = Result("payroll", 1, elapsed)
    result.latencies_s = [0.0] * items  # the rate, in items per second
    return result


def paced(attempt: Attempt, interval_s: float) -> Attempt:
    """One request every interval_s at most, whatever the answer's speed."""
    next_at = time.monotonic()

    async def attempt_on_time() -> str | None:
        nonlocal next_at
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + interval_s, time.monotonic())
        return await attempt()

    return attempt_on_time


async def run(names: list[str], seconds: float, clients: int, workers: int, out: Path,
              pooled: bool = False) -> None:  # fmt: skip
    data_dir = ROOT / ".data" / "bench"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    with contextlib.ExitStack() as stack:
        redis_url, redis_ports = None, []
        if CLUSTERED:  # REDIS_CLUSTER=true: a local cluster of 3 primaries and 3 replicas
            cluster = stack.enter_context(running_cluster(data_dir / "redis-cluster"))
            redis_url, redis_ports = cluster.url, [node.port for node in cluster.nodes]
        database_url, redis_url = stack.enter_context(
            servers(data_dir, database_url=None, redis_url=redis_url)
        )
        redis_ports = redis_ports or [urlsplit(redis_url).port or 6379]
        await migrate(database_url)
        settings = make_settings(database_url, redis_url)
        pooled_url = None
        if pooled:
            pooled_url = stack.enter_context(pgbouncer(database_url, pool_size=32))
            print(f"bench: through PgBouncer at {pooled_url}", file=sys.stderr)
            settings = make_settings(pooled_url, redis_url, database_pooler="transaction",
                                     database_direct_url=database_url)  # fmt: skip
        tokens = AccessTokens(settings)
        print(f"bench: opening {ACCOUNTS} funded accounts", file=sys.stderr)
        users = await open_funded_users(database_url, tokens, prefix="bench", count=ACCOUNTS,
                                        opening_minor=OPENING_MINOR)  # fmt: skip
        [merchant] = await open_funded_users(database_url, tokens, prefix="merchant", count=1,
                                             opening_minor=OPENING_MINOR)  # fmt: skip
        with server(settings, data_dir, workers=workers, command="run", RATE_LIMIT_GLOBAL=RAISED,
                    RATE_LIMIT_AUTH=RAISED, RATE_LIMIT_TRANSFER=RAISED, RATE_LIMIT_LOGIN=RAISED,
                    LOG_LEVEL="info", WORKER_CONCURRENCY=payments.LOOPS,
                    WEBHOOK_SECRET_KEY=settings.webhook_secret_key.get_secret_value(),
                    SIGN_IN_CONCURRENCY_PER_ADDRESS=str(clients)) as (base_url, process):  # fmt: skip
            print(f"bench: {workers} API processes on {base_url} (pid {process.pid}); {clients} "
                  f"clients, {seconds:.0f} s a scenario after {WARMUP_S:.0f} s of warm-up",
                  file=sys.stderr)  # fmt: skip
            meter = CpuMeter({
                "api": lambda: process_tree(process.pid) - set(payments.worker_pids(process.pid)),
                "worker": lambda: set(payments.worker_pids(process.pid)),
                "postgres": lambda: postgres_processes(database_url),
                "redis": lambda: set().union(*(listening_on(port) for port in redis_ports)),
                "client": lambda: {os.getpid()},
                **({"pgbouncer": lambda: listening_on(urlsplit(pooled_url).port or 0)}
                   if pooled_url else {}),
            })  # fmt: skip
            bench = Bench(int(base_url.rsplit(":", 1)[1]), database_url, users, merchant, clients,
                          seconds, Settings.model_fields["db_pool_size_max"].default * workers,
                          settings.idempotency_ttl_s, meter, process.pid, data_dir, redis_url,
                          pooled_url)  # fmt: skip
            results = [result for name in names for result in await scenario(name, bench)]
            books = await check_books(database_url)
    summaries = [r.summary() for r in results]
    checked = ratios(summaries)
    print_table(summaries, checked)
    print(books)
    write_results(out, {"workers": workers, "clients": clients, "seconds": seconds,
                        "scenarios": summaries, "ratios": checked})  # fmt: skip


def main() -> int:
    seconds = float(os.environ.get("BENCH_SECONDS", "15"))
    clients = int(os.environ.get("BENCH_CLIENTS", "32"))
    workers = int(os.environ.get("BENCH_WORKERS", str(Settings.model_fields["workers"].default)))
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    names = os.environ.get("BENCH_SCENARIOS", ",".join(SCENARIOS)).split(",")
    pooled = os.environ.get("BENCH_PGBOUNCER", "") not in ("", "0")
    asyncio.run(run(names, seconds, clients, workers, ROOT / "bench-results", pooled))
    return 0


if __name__ == "__main__":
    sys.exit(main())
