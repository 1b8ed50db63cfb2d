"""Checks on the books that tests share: the ledger balances, and balances of accounts."""

from __future__ import annotations

import asyncpg

from payments.platform.db import Q

CLEAN_TABLES = (
    "payment, ledger_entry, transfer, idempotency_key, refresh_token, token_family, audit_log,"
    " api_key, worker_heartbeat, fx_quote, payroll_item, payroll_job, webhook_attempt,"
    " webhook_delivery, webhook_event, webhook_endpoint"
)


async def reset_books(db: asyncpg.Pool) -> None:
    """Empty the books, keeping the currencies and their funding accounts."""
    async with db.acquire() as conn, conn.transaction():
        # The audit log refuses TRUNCATE but to a deliberate repair (sql/0007).
        await conn.execute("SET LOCAL payments.history_repair = 'on'")
        await conn.execute(f"TRUNCATE {CLEAN_TABLES} RESTART IDENTITY CASCADE")
        # Nothing refers to a user or a customer account any more (every table that may is in
        # CLEAN_TABLES), so the foreign-key checks of the deletes below can only pass: they are
        # skipped. Past a 10,000-payee test they took 20 s, about 200 µs a row for each of the
        # nine tables that refer to app_user.
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("DELETE FROM account WHERE kind = 'customer'")
        await conn.execute("DELETE FROM app_user")
        await conn.execute("UPDATE account SET balance_minor = 0, ledger_head = NULL")


async def assert_books_balance(db: asyncpg.Pool) -> None:
    """Every currency's entries sum to zero, and every balance is the sum of its entries."""
    imbalances = await db.fetch(Q.ledger_imbalances)
    assert [dict(row) for row in imbalances] == []
    negative = await db.fetchval(
        "SELECT count(*) FROM account WHERE kind = 'customer' AND balance_minor < 0"
    )
    assert negative == 0


async def book_violations(
    conn: asyncpg.Connection, *, currency: str, customers_hold_minor: int
) -> list[str]:
    """What a load run must not leave behind, said in words: money created or lost (customers of
    `currency` together must still hold what they were given), a negative balance, a ledger that
    does not sum to zero or does not match a balance."""
    violations = []
    total = await conn.fetchval(  # with what FX transfers left in the clearing accounts
        "SELECT sum(balance_minor) FROM account WHERE kind IN ('customer', 'clearing')"
        " AND currency = $1", currency)  # fmt: skip
    if total != customers_hold_minor:
        violations.append(f"money is not conserved: {total} != {customers_hold_minor}")
    if await conn.fetchval(
        "SELECT count(*) FROM account WHERE kind = 'customer' AND balance_minor < 0"
    ):
        violations.append("a balance is negative")
    violations += [
        f"ledger imbalance: {dict(row)}" for row in await conn.fetch(Q.ledger_imbalances)
    ]
    return violations


async def balance_minor(db: asyncpg.Pool, account_number: str) -> int:
    value = await db.fetchval(
        "SELECT balance_minor FROM account WHERE account_number = $1", account_number
    )
    assert value is not None, account_number
    return int(value)


async def transfer_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM transfer WHERE kind <> 'opening'"))
