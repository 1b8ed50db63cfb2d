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
