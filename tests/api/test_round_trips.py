"""Round trips per request, counted on the wire: the cost that matters here. A regression fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio.connection import AbstractConnection
from starlette.applications import Starlette

from payments.platform import redis_keys, redis_link
from payments.platform.redis_cluster import ClusterLink
from tests.api.users import User, send


@dataclass
class Trips:
    postgres: int = 0
    redis: int = 0


COUNTED: ContextVar[Trips | None] = ContextVar("counted", default=None)


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trips]:
    """Count statements sent to PostgreSQL and packets of commands sent to Redis (a pipeline or a
    script is one), through redis-py or the request path's own connection (redis_link.py).

    Only the test's task and the tasks it starts count (they inherit its context): the process's
    background tasks (the audit writer, the queue samplers) would otherwise count at random."""
    trips = Trips()
    ours = COUNTED.set(trips)
    execute = asyncpg.connection.Connection._execute
    send_packed = AbstractConnection.send_packed_command
    link_send = redis_link._Protocol.send

    async def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.postgres += COUNTED.get() is trips
        return await execute(self, *args, **kwargs)

    async def counted_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.redis += COUNTED.get() is trips
        return await send_packed(self, *args, **kwargs)

    def counted_link_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.redis += COUNTED.get() is trips
        return link_send(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(redis_link._Protocol, "send", counted_link_send)
        patch.setattr(asyncpg.connection.Connection, "_execute", counted_execute)
        patch.setattr(AbstractConnection, "send_packed_command", counted_send)
        try:
            yield trips
        finally:
            COUNTED.reset(ours)


def primaries_of(app: Starlette, *users: User) -> int:
    """How many Redis primaries the users' keys live on: one, unless Redis is a cluster, where the
    after-batch of a transfer goes to each of its two users' primaries at once."""
    link = app.state.services.redis_link
    if not isinstance(link, ClusterLink):
        return 1
    return len({link.node_of(("GET", redis_keys.cache_version(user.user_id))) for user in users})


async def test_round_trips_per_request(
    app: Starlette, client: httpx.AsyncClient, alice: User, bob: User,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    await send(client, alice, bob.account_number, "1.00")  # warm: prepared statements, script
    await client.get("/api/v1/accounts", headers=alice.auth)
    # The sign-ins' audit events are written now, not by the writer's flush inside a count.
    await app.state.services.audit.flush()

    with counting(monkeypatch) as transfer:
        response = await send(client, alice, bob.account_number, "1.00", key="counted")
    assert response.status_code == 201
    assert (transfer.postgres, transfer.redis) == (1, 1 + primaries_of(app, alice, bob))

    with counting(monkeypatch) as replay:
        response = await send(client, alice, bob.account_number, "1.00", key="counted")
    assert response.headers["idempotent-replayed"] == "true"
    assert (replay.postgres, replay.redis) == (0, 1)

    await client.get("/api/v1/accounts", headers=alice.auth)  # refill after the transfer
    with counting(monkeypatch) as hit:
        response = await client.get("/api/v1/accounts", headers=alice.auth)
    assert response.headers["cache-status"] == "payments; hit"
    assert (hit.postgres, hit.redis) == (0, 1)

    await send(client, bob, alice.account_number, "1.00")
    with counting(monkeypatch) as miss:
        response = await client.get("/api/v1/accounts", headers=alice.auth)
    assert response.headers["cache-status"] == "payments; fwd=miss"
    assert (miss.postgres, miss.redis) == (1, 2)
