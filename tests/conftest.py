"""Real PostgreSQL and Redis for the suite: the embedded servers by default, or the servers named by
DATABASE_URL / REDIS_URL, in a database (payments_test) and a Redis db (15) of the tests' own."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from pydantic import SecretStr

from payments.platform.embedded import servers
from payments.platform.migrate import migrate
from payments.platform.settings import RateLimit
from payments.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE = "payments_test"
TEST_REDIS_DB = 15
TEST_WEBHOOK_SECRET_KEY = "dGVzdC13ZWJob29rLXNlY3JldC1rZXktMzJieXRlcyE="  # a Fernet key: 32 bytes


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    with servers(ROOT / ".data" / "test", database_url=os.environ.get("DATABASE_URL") or None,
                 redis_url=os.environ.get("REDIS_URL") or None) as urls:  # fmt: skip
        yield urls


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> str:
    """A fresh database built from sql/ for this run."""
    admin = await asyncpg.connect(server_urls[0])
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEST_DATABASE}")
    finally:
        await admin.close()
    url = with_database(server_urls[0], TEST_DATABASE)
    await migrate(url)
    return url


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    return with_database(server_urls[1], str(TEST_REDIS_DB))


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    """Test settings: cheap argon2, fixed key, limits high enough not to get in the way."""
    base = Settings(
        env="test",
        data_dir=ROOT / ".data" / "test",
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=SecretStr("test-secret-" + "x" * 40),
        webhook_secret_key=SecretStr(TEST_WEBHOOK_SECRET_KEY),
        argon2_time_cost=1,
        argon2_memory_cost_kib=1024,
        rate_limit_global=RateLimit(name="global", count=100_000, period_s=60),
        rate_limit_auth=RateLimit(name="auth", count=100_000, period_s=60),
        rate_limit_transfer=RateLimit(name="transfer", count=100_000, period_s=60),
        rate_limit_login=RateLimit(name="login", count=100_000, period_s=60),
        db_pool_size_max=20,
        password_hash_per_client_max=32,  # the tests all come from one address
    )
    return base.model_copy(update=overrides)


@pytest.fixture(scope="session")
def settings(database_url: str, redis_url: str) -> Settings:
    return make_settings(database_url, redis_url)


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The tests' own pool, to look at the books behind the API's back."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()
