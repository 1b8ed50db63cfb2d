"""The whole app in-process, driven over ASGI; the books checked after every test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from starlette.applications import Starlette

from payments.app import create_app
from payments.platform.embedded import RedisServer, free_port
from payments.platform.housekeeping import sample_payment_queue
from payments.settings import Settings
from tests.api.users import User, new_user
from tests.books import assert_books_balance, reset_books


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[Starlette]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application


@pytest.fixture(scope="session")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture(autouse=True)
async def clean_books(app: Starlette, db: asyncpg.Pool, redis: Redis) -> AsyncIterator[None]:
    """Each test starts from empty books and an empty Redis db, and must leave them balanced.
    The audit events the last test queued are written first, so none lands in this one."""
    await app.state.services.audit.flush()
    await reset_books(db)
    await redis.flushdb()
    yield
    await assert_books_balance(db)


@pytest.fixture
async def client(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def alice(client: httpx.AsyncClient) -> User:
    """A new user, registered and logged in, whose first account holds the opening 1000.00 USD."""
    return await new_user(client, "alice")


@pytest.fixture
async def bob(client: httpx.AsyncClient) -> User:
    """Another, funded the same way."""
    return await new_user(client, "bob")


@asynccontextmanager
async def serving(
    settings: Settings, client_address: str = "127.0.0.1"
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app of its own, for settings that differ from the session's app."""
    application = create_app(settings)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application, client=(client_address, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            yield http


async def sample_queue(app: Starlette) -> None:
    """Take the payments-queue sample that /ready reports now, not at the next interval."""
    found = app.state.services
    await sample_payment_queue(found.pool, found.payment_queue)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own, which it may stop, freeze and start again."""
    server = RedisServer(port=free_port(), log_path=tmp_path / "redis.log")
    server.start()
    yield server
    server.stop()
