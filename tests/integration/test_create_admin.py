"""`python -m payments create-admin`: the only way to make an admin, and what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg

from tests.books import reset_books

PASSWORD = "an admin's long password"


def create_admin(
    database_url: str, redis_url: str, email: str, password: str | None
) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "ADMIN_PASSWORD"}
    environment.update(
        {"DATABASE_URL": database_url, "REDIS_URL": redis_url, "LOG_LEVEL": "warning"}
    )
    if password is not None:
        environment["ADMIN_PASSWORD"] = password
    return subprocess.run([sys.executable, "-m", "payments", "create-admin", "--email", email],
                          env=environment, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, check=False)  # fmt: skip


async def test_create_admin_creates_or_promotes_and_audits(
    db: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    await reset_books(db)
    made = create_admin(database_url, redis_url, "Root@Example.com", PASSWORD)
    assert made.returncode == 0, made.stderr
    assert "created" in made.stdout
    assert PASSWORD not in made.stdout + made.stderr
    user = await db.fetchrow("SELECT id, role, password_hash FROM app_user WHERE email = $1",
                             "Root@Example.com")  # fmt: skip
    assert user["role"] == "admin"
    # The admin's account opens at zero: making an admin mints no money.
    assert (
        await db.fetchval("SELECT balance_minor FROM account WHERE user_id = $1", user["id"]) == 0
    )

    again = create_admin(database_url, redis_url, "root@example.com", "another long password")
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    kept = await db.fetchval("SELECT password_hash FROM app_user WHERE id = $1", user["id"])
    assert kept == user["password_hash"]  # an existing user keeps its password
    grants = await db.fetch("SELECT actor_id, target FROM audit_log WHERE action = 'admin.granted'")
    assert [(g["actor_id"], g["target"]) for g in grants] == [(None, str(user["id"]))] * 2
    await reset_books(db)


async def test_create_admin_needs_a_password_it_can_trust(
    db: asyncpg.Pool, database_url: str, redis_url: str
) -> None:
    await reset_books(db)
    for password in (None, "short"):
        refused = create_admin(database_url, redis_url, "new@example.com", password)
        assert refused.returncode == 2
        assert "ADMIN_PASSWORD" in refused.stderr
    assert await db.fetchval("SELECT count(*) FROM app_user") == 0
