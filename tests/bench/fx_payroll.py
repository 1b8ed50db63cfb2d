"""make bench's FX and payroll scenarios: FX transfers at 32 clients (the transfer alone, with
quotes made beforehand, and quote then transfer over HTTP), and one PAYROLL_ITEMS-item payroll
job from submit to COMPLETED, in items per second."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg

from tests.bench.client import Connection, request
from tests.population import FundedUser

PAYROLL_ITEMS = int(os.environ.get("BENCH_PAYROLL_ITEMS", "10000"))
PAYROLL_TIMEOUT_S = 300.0
QUOTES_PER_CLIENT = 2_000  # made beforehand for the transfer-alone run: more than it can use
TO_CURRENCY = "EUR"
Attempt = Callable[[], Awaitable[str | None]]


async def open_target_accounts(conn: asyncpg.Connection, users: list[FundedUser]) -> list[str]:
    """An empty EUR account for each bench user, to receive FX transfers."""
    rows = await conn.fetch(
        "INSERT INTO account (user_id, currency) SELECT unnest($1::bigint[]), $2"
        " ON CONFLICT (user_id, currency) WHERE user_id IS NOT NULL DO NOTHING"
        " RETURNING account_number", [user.user_id for user in users], TO_CURRENCY)  # fmt: skip
    await conn.execute("ANALYZE account")
    return [row["account_number"] for row in rows]


async def make_quotes(
    conn: asyncpg.Connection, users: list[FundedUser], per_user: int
) -> dict[int, list[int]]:
    """per_user quotes USD -> EUR of 0.01 for each user, as POST /fx/quotes stores them (the
    development file's rate, 0.92), valid for ten minutes."""
    rows = await conn.fetch(
        "INSERT INTO fx_quote (user_id, from_currency, to_currency, rate, from_amount_minor,"
        "                      to_amount_minor, expires_at)"
        " SELECT u, 'USD', $2, 0.92, 1, 1, now() + interval '10 minutes'"
        "   FROM unnest($1::bigint[]) u, generate_series(1, $3) RETURNING id, user_id",
        [user.user_id for user in users], TO_CURRENCY, per_user)  # fmt: skip
    quotes: dict[int, list[int]] = {user.user_id: [] for user in users}
    for row in rows:
        quotes[row["user_id"]].append(row["id"])
    return quotes


def fx_transfer_request(user: FundedUser, target: str, quote_id: int) -> bytes:
    return request("POST", "/api/v1/transactions",
                   {"Authorization": f"Bearer {user.token}", "Idempotency-Key": uuid.uuid4().hex},
                   {"to_account_number": target, "fx_quote_id": quote_id})  # fmt: skip


def quote_request(user: FundedUser) -> bytes:
    return request("POST", "/api/v1/fx/quotes", {"Authorization": f"Bearer {user.token}"},
                   {"from_currency": "USD", "to_currency": TO_CURRENCY, "from_amount": "0.01"})  # fmt: skip


def premade_transfers(
    users: list[FundedUser], targets: list[str], quotes: dict[int, list[int]]
) -> Callable[[int], Callable[[], bytes]]:
    """For client i, its next transfer with the next of its user's quotes made beforehand."""
    rng = random.Random(5)

    def for_client(index: int) -> Callable[[], bytes]:
        user = users[index % len(users)]
        own = iter(quotes[user.user_id])
        return lambda: fx_transfer_request(user, rng.choice(targets), next(own))

    return for_client


def quote_then_transfer(port: int, user: FundedUser, targets: list[str]) -> Attempt:
    """One client's attempt: POST /fx/quotes, then the transfer with that quote."""
    rng = random.Random(user.user_id)
    connection: Connection | None = None

    async def attempt() -> str | None:
        nonlocal connection
        if connection is None:
            connection = await Connection.open("127.0.0.1", port)
        try:
            status, _, body = await connection.send(quote_request(user))
            if status != 201:
                return f"quote HTTP {status}"
            quote_id = json.loads(body)["id"]
            status, _, _ = await connection.send(
                fx_transfer_request(user, rng.choice(targets), quote_id)
            )
        except Exception:
            await connection.close()
            connection = None
            raise
        return None if status == 201 else f"HTTP {status}"

    return attempt


async def open_payees(conn: asyncpg.Connection, count: int) -> list[str]:
    rows = await conn.fetch(
        "WITH u AS (INSERT INTO app_user (email, full_name, password_hash)"
        "  SELECT 'payee' || g || '@example.com', 'Payee', $2 FROM generate_series(1, $1) g"
        "  RETURNING id)"
        " INSERT INTO account (user_id, currency) SELECT id, 'USD' FROM u RETURNING account_number",
        count, "$argon2id$not-a-real-hash-000000")  # fmt: skip
    await conn.execute("ANALYZE account")
    return [row["account_number"] for row in rows]


async def payroll_seconds(port: int, database_url: str, employer: FundedUser) -> float:
    """Seconds from submitting a PAYROLL_ITEMS-item job (0.01 each) to reading it COMPLETED."""
    conn = await asyncpg.connect(database_url)
    try:
        payees = await open_payees(conn, PAYROLL_ITEMS)
    finally:
        await conn.close()
    items = [{"to_account_number": number, "amount": "0.01"} for number in payees]
    auth = {"Authorization": f"Bearer {employer.token}"}
    submit = request("POST", "/api/v1/payroll/jobs", {**auth, "Idempotency-Key": uuid.uuid4().hex},
                     {"name": "bench payroll", "items": items})  # fmt: skip
    connection = await Connection.open("127.0.0.1", port)
    try:
        started = time.monotonic()
        status, _, body = await connection.send(submit)
        if status != 202:
            raise SystemExit(f"payroll job refused: {status} {body[:300]!r}")
        poll = request("GET", json.loads(body)["poll_url"], auth)
        for _ in itertools.count():
            status, _, body = await connection.send(poll)
            job = json.loads(body)
            if job["status"] == "COMPLETED":
                return time.monotonic() - started
            if (
                job["status"] == "COMPLETED_WITH_FAILURES"
                or time.monotonic() - started > PAYROLL_TIMEOUT_S
            ):
                raise SystemExit(f"payroll job did not complete: {job}")
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    raise AssertionError("unreachable")
