"""What transaction pooling breaks, behind a real PgBouncer (transaction mode) of the test's own in
front of the tests' database: the service's pool, migrations, the worker without LISTEN, and the
worker's heartbeat that /ready reads. Skipped where pgbouncer is not installed (`.ci/run`
installs it)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis

from payments.app import create_app
from payments.payments.jobs import PaymentsJob
from payments.platform.db import create_pool
from payments.platform.migrate import load_migrations, migrate
from payments.settings import Settings
from payments.worker import Worker
from tests import pgbouncer
from tests.api.conftest import sample_queue
from tests.api.test_payments import pay, settled
from tests.api.users import User
from tests.conftest import with_database

pytestmark = pytest.mark.skipif(pgbouncer.binary() is None, reason="pgbouncer is not installed")


@pytest.fixture(scope="module")
def pooled_url(database_url: str) -> Iterator[str]:
    with pgbouncer.pgbouncer(database_url, pool_size=2) as url:
        yield url


def behind(settings: Settings, pooled_url: str, **overrides: object) -> Settings:
    """The service's settings with DATABASE_URL through the pooler, and no direct URL."""
    return settings.model_copy(update={"database_url": pooled_url, "database_pooler": "transaction",
                                       "database_direct_url": None, **overrides})  # fmt: skip


async def test_the_pool_behind_the_pooler_keeps_no_prepared_statement(
    settings: Settings, pooled_url: str
) -> None:
    """Ten client connections over two server connections: every query answers. A cache of
    prepared statements would find its statements gone, or another client's, on the server
    connection its next transaction runs on."""
    tuned = behind(settings, pooled_url)
    assert tuned.statement_cache_size == 0
    pool = await create_pool(tuned, pooled_url, size_max=10)
    try:

        async def query(n: int) -> int:
            return int(await pool.fetchval("SELECT $1::int + count(*) FROM currency", n) or 0)

        answers = await asyncio.gather(*(query(n) for n in range(300)))
        currencies = await pool.fetchval("SELECT count(*) FROM currency")
    finally:
        await pool.close()
    assert answers == [n + currencies for n in range(300)]


async def test_migrations_through_the_pooler_apply_once_each(
    database_url: str, pooled_url: str
) -> None:
    """Two processes migrating a fresh database at once, through the pooler: transaction-level
    locks queue them, and no lock is left on a server connection."""
    admin = await asyncpg.connect(database_url)
    try:
        await admin.execute("DROP DATABASE IF EXISTS payments_pooled WITH (FORCE)")
        await admin.execute("CREATE DATABASE payments_pooled")
        url = with_database(pooled_url, "payments_pooled")
        first, second = await asyncio.gather(migrate(url), migrate(url))
        assert sorted(first + second) == [m.name for m in load_migrations()]
        assert await migrate(url) == []
        conn = await asyncpg.connect(with_database(database_url, "payments_pooled"))
        try:
            locks = await conn.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        finally:
            await conn.close()
        assert locks == 0
    finally:
        await admin.execute("DROP DATABASE IF EXISTS payments_pooled WITH (FORCE)")
        await admin.close()


async def test_a_worker_behind_the_pooler_polls_and_ready_sees_its_heartbeat(
    settings: Settings, pooled_url: str, alice: User, bob: User, db: asyncpg.Pool, redis: Redis,
) -> None:  # fmt: skip
    tuned = behind(settings, pooled_url, worker_poll_interval_s=0.05)
    assert tuned.session_database_url is None  # nowhere to LISTEN: the loops poll
    app = create_app(tuned)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://testserver"
        ) as http,
    ):
        await pay(http, alice, bob.account_number, "2.50")
        await sample_queue(app)
        assert await worker_state(http) == "absent"
        pool = await create_pool(tuned, pooled_url, size_max=tuned.worker_concurrency + 1)
        worker = Worker(tuned, pool, [PaymentsJob(tuned, redis)])
        task = asyncio.create_task(worker.run())
        try:
            await settled(db, 1)
            await sample_queue(app)
            assert await worker_state(http) == "ok"
        finally:
            worker.stopping.set()
            assert await task is True
            await pool.close()
        await sample_queue(app)
        assert await worker_state(http) == "absent"  # a worker that stops says so
    assert await db.fetchval("SELECT status FROM payment") == "SUCCEEDED"


async def worker_state(http: httpx.AsyncClient) -> str:
    return str((await http.get("/api/v1/ready")).json()["components"]["worker"])
