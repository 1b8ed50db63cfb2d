"""The migrations, the named queries and the database's own money rules."""

from __future__ import annotations

import asyncio
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from payments.http.errors import CATALOG
from payments.platform.db import Q
from payments.platform.migrate import SQL_DIR, MigrationError, migrate
from tests.books import reset_books
from tests.conftest import with_database


@pytest.fixture
async def scratch_database(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    """An empty database of its own, dropped afterwards."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(server_urls[0])
    await admin.execute(f"CREATE DATABASE {name}")
    try:
        yield with_database(server_urls[0], name)
    finally:
        await admin.execute(f"DROP DATABASE {name} WITH (FORCE)")
        await admin.close()


async def test_every_named_query_prepares(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        for name in Q.names():
            await conn.prepare(getattr(Q, name))


async def test_migrations_apply_once_even_when_two_run_at_once(scratch_database: str) -> None:
    first, second = await asyncio.gather(migrate(scratch_database), migrate(scratch_database))
    applied = sorted(path.name for path in SQL_DIR.glob("*.sql"))
    assert sorted(first + second) == applied
    assert await migrate(scratch_database) == []


async def test_an_applied_migration_that_changed_stops_the_runner(
    scratch_database: str, tmp_path: Path
) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    await migrate(scratch_database, sql_dir)
    first = sorted(sql_dir.glob("*.sql"))[0]
    first.write_text(first.read_text() + "\n-- edited after merge\n")
    with pytest.raises(MigrationError, match=first.name):
        await migrate(scratch_database, sql_dir)


async def test_problems_rendered_by_sql_agree_with_the_catalog(db: asyncpg.Pool) -> None:
    codes = await db.fetch(
        "SELECT p.code FROM unnest($1::text[]) AS p(code) WHERE (business_problem(p.code, 'x')).status IS NOT NULL",
        list(CATALOG),
    )
    assert len(codes) == 11
    for row in codes:
        status, body = await db.fetchrow(
            "SELECT status, body FROM business_problem($1, 'd')", row["code"]
        )
        problem = CATALOG[row["code"]]
        assert status == problem.status
        assert json.loads(body) == {"type": f"/problems/{problem.code}", "title": problem.title,
                                    "status": problem.status, "code": problem.code, "detail": "d"}  # fmt: skip


async def test_the_database_refuses_a_negative_balance_and_a_self_transfer(
    db: asyncpg.Pool,
) -> None:
    await reset_books(db)
    await db.fetchval(Q.register_user, "rules@example.com", "Rules", "x" * 40, "USD", 500)
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute("UPDATE account SET balance_minor = -1 WHERE kind = 'customer'")
    account_id = await db.fetchval("SELECT id FROM account WHERE kind = 'customer'")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO transfer (source_account_id, target_account_id, amount_minor, currency, kind)"
            " VALUES ($1, $1, 1, 'USD', 'transfer')", account_id)  # fmt: skip
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("UPDATE account SET currency = 'usd' WHERE id = $1", account_id)
    await reset_books(db)


async def test_the_schema_holds_the_books_rules_by_itself(db: asyncpg.Pool) -> None:
    """Whatever a future function or a hand at psql does: a transfer's currency is both accounts',
    a stored answer is whole, and history is never rewritten."""
    await reset_books(db)
    await db.fetchval(Q.register_user, "a@example.com", "A", "x" * 40, "USD", 500)
    await db.fetchval(Q.register_user, "b@example.com", "B", "x" * 40, "EUR", 500)
    usd, eur = await db.fetch(
        "SELECT id FROM account WHERE kind = 'customer' ORDER BY currency DESC"
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute(
            "INSERT INTO transfer (source_account_id, target_account_id, amount_minor, currency, kind)"
            " VALUES ($1, $2, 1, 'USD', 'transfer')", usd["id"], eur["id"])  # fmt: skip
    user_id = await db.fetchval("SELECT id FROM app_user LIMIT 1")
    with pytest.raises(asyncpg.CheckViolationError):
        await db.execute(
            "INSERT INTO idempotency_key (principal_id, key, fingerprint, expires_at, response_status)"
            " VALUES ($1, 'k', $2, now(), 201)", user_id, b"f" * 32)  # fmt: skip
    for statement in ("UPDATE transfer SET amount_minor = 1", "DELETE FROM transfer",
                      "UPDATE ledger_entry SET amount_minor = 1", "DELETE FROM ledger_entry"):  # fmt: skip
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await db.execute(statement)
    async with db.acquire() as conn, conn.transaction():
        # An operator's deliberate repair says so, in its own transaction.
        await conn.execute("SET LOCAL payments.history_repair = 'on'")
        await conn.execute("UPDATE ledger_entry SET balance_after_minor = balance_after_minor")
    await reset_books(db)


async def test_money_functions_called_directly(db: asyncpg.Pool) -> None:
    """The functions the API calls, without the API: one statement answers, commits the money
    with the key's answer, and a retry of the key replays the same bytes."""
    await reset_books(db)
    registered = json.loads(
        await db.fetchval(Q.register_user, "a@example.com", "A", "x" * 40, "USD", 10_000)
    )
    await db.fetchval(Q.register_user, "b@example.com", "B", "x" * 40, "USD", 0)
    sender = registered["user"]["id"]
    target = await db.fetchval("SELECT account_number FROM account a JOIN app_user u"
                               " ON u.id = a.user_id WHERE u.email = 'b@example.com'")  # fmt: skip
    key = ("k1", b"p" * 32, 3600)
    first = await db.fetchrow(Q.transfer_funds, sender, *key, None, target, "12.34", None, "d")
    assert (first["status"], first["replayed"], first["stored"]) == (201, False, True)
    assert (first["amount"], first["currency"]) == ("12.34", "USD")
    again = await db.fetchrow(Q.transfer_funds, sender, *key, None, target, "12.34", None, "d")
    assert (again["status"], again["replayed"], again["body"]) == (201, True, first["body"])
    other = await db.fetchrow(Q.transfer_funds, sender, "k1", b"q" * 32, 3600, None, target,
                              "1.00", None, None)  # fmt: skip
    assert (other["status"], other["code"]) == (422, "idempotency_key_reused")
    poor = await db.fetchrow(Q.transfer_funds, sender, "k2", b"p" * 32, 3600, None, target,
                             "1000.00", None, None)  # fmt: skip
    assert (poor["status"], poor["code"], poor["stored"]) == (422, "insufficient_funds", True)
    decimals = await db.fetchrow(Q.transfer_funds, sender, "k3", b"p" * 32, 3600, None, target,
                                 "1.001", None, None)  # fmt: skip
    assert (decimals["status"], decimals["code"], decimals["stored"]) == (
        422,
        "validation_error",
        False,
    )
    assert await db.fetchval("SELECT count(*) FROM idempotency_key WHERE key = 'k3'") == 0
    transfer_id = json.loads(first["body"])["id"]
    reversed_ = await db.fetchrow(
        Q.reverse_transfer, sender, True, "k4", b"r" * 32, 3600, transfer_id, "10.0.0.1", "r1"
    )
    assert reversed_["status"] == 201
    twice = await db.fetchrow(
        Q.reverse_transfer, sender, True, "k5", b"r" * 32, 3600, transfer_id, None, None
    )
    assert (twice["status"], twice["code"]) == (409, "already_reversed")
    balances = await db.fetch(
        "SELECT balance_minor FROM account WHERE kind = 'customer' ORDER BY id"
    )
    assert [row["balance_minor"] for row in balances] == [10_000, 0]
    await reset_books(db)


async def test_a_payment_to_an_unknown_account_on_a_fresh_connection(
    db: asyncpg.Pool, database_url: str
) -> None:
    """A plpgsql function's first call on a connection runs paths its plans did not cache yet:
    a payment to an unknown recipient is a 422 there too (it was `record "v_source" is not
    assigned yet`, a 500)."""
    await reset_books(db)
    await db.fetchval(Q.register_user, "a@example.com", "A", "x" * 40, "USD", 500)
    user_id = await db.fetchval("SELECT id FROM app_user")
    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow(Q.create_payment, user_id, "k", b"p" * 32, 3600, None,
                                  "AC0000000000000000", "1.00", None, None)  # fmt: skip
    finally:
        await conn.close()
    assert (row["status"], json.loads(row["body"])["code"]) == (422, "unknown_account")
    await reset_books(db)
