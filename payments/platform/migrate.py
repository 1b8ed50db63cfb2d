"""Apply the forward-only migrations in sql/NNNN_description.sql, each once, in order."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

log = structlog.get_logger(__name__)

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
MIGRATION_NAME = re.compile(r"^[0-9]{4}_[a-z0-9_]+\.sql$")
# Any fixed number: two processes migrating at once queue on it instead of racing.
MIGRATION_LOCK_ID = 0x7061796D656E7473  # "payments"


class MigrationError(RuntimeError):
    """A migration that was applied has since changed, or a file is misnamed."""


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(sql_dir: Path = SQL_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(sql_dir.glob("*.sql")):
        if not MIGRATION_NAME.match(path.name):
            raise MigrationError(f"migration file {path.name} is not named NNNN_description.sql")
        migrations.append(Migration(path.name, path.read_text(encoding="utf-8")))
    if not migrations:
        raise MigrationError(f"no migrations found in {sql_dir}: run from a source checkout")
    return migrations


async def migrate(database_url: str, sql_dir: Path = SQL_DIR) -> list[str]:
    """Apply what is missing, one transaction per file; return their names.

    Each transaction takes a transaction-level advisory lock and looks again at what is applied,
    so two processes migrating at once queue instead of racing; nothing rests on the session, so
    this is safe through a transaction pooler too (a session lock taken through PgBouncer stays
    on whichever server connection ran it). DATABASE_DIRECT_URL is still the place for it: a
    long migration holds a pooled connection otherwise."""
    # No prepared statement outlives its transaction behind a pooler; a few queries need no cache.
    conn = await asyncpg.connect(database_url, statement_cache_size=0)
    try:
        return await _apply_missing(conn, load_migrations(sql_dir))
    finally:
        await conn.close()


async def _apply_missing(conn: asyncpg.Connection, migrations: list[Migration]) -> list[str]:
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migration (
                   name        text        PRIMARY KEY,
                   checksum    text        NOT NULL CHECK (checksum ~ '^[0-9a-f]{64}$'),
                   applied_at  timestamptz NOT NULL DEFAULT now())"""
        )
    done = []
    for migration in migrations:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_ID)
            applied = await conn.fetchval(
                "SELECT checksum FROM schema_migration WHERE name = $1", migration.name
            )
            if applied is not None:
                if applied != migration.checksum:
                    raise MigrationError(f"{migration.name} changed after it was applied")
                continue
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migration (name, checksum) VALUES ($1, $2)",
                migration.name, migration.checksum,
            )  # fmt: skip
        log.info("migration_applied", migration=migration.name)
        done.append(migration.name)
    return done
