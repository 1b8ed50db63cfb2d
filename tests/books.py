"""Checks on the books that tests share: the ledger balances, and balances of accounts."""

from __future__ import annotations

import asyncpg

from payments.db import Q

CLEAN_TABLES = "ledger_entry, transfer, idempotency_key, refresh_token, token_family"


async def reset_books(db: asyncpg.Pool) -> None:
    """Empty the books, keeping the currencies and their funding accounts."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute(f"TRUNCATE {CLEAN_TABLES} RESTART IDENTITY CASCADE")
        await conn.execute("DELETE FROM account WHERE kind = 'customer'")
        await conn.execute("DELETE FROM app_user")
        await conn.execute("UPDATE account SET balance_minor = 0")


async def assert_books_balance(db: asyncpg.Pool) -> None:
    """Every currency's entries sum to zero, and every balance is the sum of its entries."""
    imbalances = await db.fetch(Q.ledger_imbalances)
    assert [dict(row) for row in imbalances] == []
    negative = await db.fetchval(
        "SELECT count(*) FROM account WHERE kind = 'customer' AND balance_minor < 0"
    )
    assert negative == 0


async def balance_minor(db: asyncpg.Pool, account_number: str) -> int:
    value = await db.fetchval(
        "SELECT balance_minor FROM account WHERE account_number = $1", account_number
    )
    assert value is not None, account_number
    return int(value)


async def transfer_count(db: asyncpg.Pool) -> int:
    return int(await db.fetchval("SELECT count(*) FROM transfer WHERE kind <> 'opening'"))
