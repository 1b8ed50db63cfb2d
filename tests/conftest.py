"""Real PostgreSQL and Redis for the suite: the embedded servers by default, or the servers named by
DATABASE_URL / REDIS_URL, in a database (payments_test) and a Redis db (15) of the tests' own."""

from __future__ import annotations

import contextlib
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
from tests.redis_cluster import running_cluster

ROOT = Path(__file__).resolve().parent.parent
TEST_DATABASE = "payments_test"
TEST_REDIS_DB = 15
TEST_WEBHOOK_SECRET_KEY = "dGVzdC13ZWJob29rLXNlY3JldC1rZXktMzJieXRlcyE="  # a Fernet key: 32 bytes


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


# REDIS_CLUSTER=true (make test-cluster): Redis is a Redis Cluster, REDIS_URL's or, without one, a
# local one of three primaries and three replicas (tests/redis_cluster.py) started for the run.
CLUSTERED = os.environ.get("REDIS_CLUSTER", "").lower() in ("1", "true", "yes")
single_redis_only = pytest.mark.skipif(
    CLUSTERED, reason="stops, freezes or flushes a single redis-server of its own, not a cluster"
)


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    redis_url = os.environ.get("REDIS_URL") or None
    with contextlib.ExitStack() as stack:
        if CLUSTERED and redis_url is None:
            redis_url = stack.enter_context(running_cluster()).url
        yield stack.enter_context(
            servers(ROOT / ".data" / "test", database_url=os.environ.get("DATABASE_URL") or None,
                    redis_url=redis_url)
        )  # fmt: skip


def direct_url(server_urls: tuple[str, str]) -> str:
    """PostgreSQL itself: DATABASE_DIRECT_URL when DATABASE_URL is a pooler (make test-pgbouncer)."""
    return os.environ.get("DATABASE_DIRECT_URL") or server_urls[0]


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> str:
    """A fresh database built from sql/ for this run, on PostgreSQL itself: the tests' own
    connections behind the service's back go here, never through a pooler."""
    admin = await asyncpg.connect(direct_url(server_urls))
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {TEST_DATABASE}")
    finally:
        await admin.close()
    url = with_database(direct_url(server_urls), TEST_DATABASE)
    await migrate(url)
    return url


@pytest.fixture(scope="session")
def redis_url(server_urls: tuple[str, str]) -> str:
    """A cluster has db 0 alone: a cluster given by REDIS_URL must be the tests' own."""
    return with_database(server_urls[1], "0" if CLUSTERED else str(TEST_REDIS_DB))


def make_settings(database_url: str, redis_url: str, **overrides: object) -> Settings:
    """Test settings: cheap argon2, fixed key, limits high enough not to get in the way."""
    base = Settings(
        env="test",
        data_dir=ROOT / ".data" / "test",
        database_url=database_url,
        redis_url=redis_url,
        redis_cluster=CLUSTERED,
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
def settings(database_url: str, redis_url: str, server_urls: tuple[str, str]) -> Settings:
    """The service's settings: through the pooler when DATABASE_POOLER says DATABASE_URL is one."""
    if os.environ.get("DATABASE_POOLER") != "transaction":
        return make_settings(database_url, redis_url)
    pooled = with_database(server_urls[0], TEST_DATABASE)
    return make_settings(pooled, redis_url, database_pooler="transaction",
                         database_direct_url=database_url)  # fmt: skip


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    """The tests' own pool, to look at the books behind the API's back."""
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=4)
    yield pool
    await pool.close()
