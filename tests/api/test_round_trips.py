"""Round trips per request, counted on the wire: the cost that matters here. A regression fails."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio.connection import AbstractConnection

from payments.platform import redis_link
from tests.api.users import User, send


@dataclass
class Trips:
    postgres: int = 0
    redis: int = 0


@contextmanager
def counting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trips]:
    """Count statements sent to PostgreSQL and packets of commands sent to Redis (a pipeline or a
    script is one), through redis-py or the request path's own connection (redis_link.py)."""
    trips = Trips()
    execute = asyncpg.connection.Connection._execute
    send_packed = AbstractConnection.send_packed_command
    link_send = redis_link._Protocol.send

    async def counted_execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.postgres += 1
        return await execute(self, *args, **kwargs)

    async def counted_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.redis += 1
        return await send_packed(self, *args, **kwargs)

    def counted_link_send(self: Any, *args: Any, **kwargs: Any) -> Any:
        trips.redis += 1
        return link_send(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(redis_link._Protocol, "send", counted_link_send)
        patch.setattr(asyncpg.connection.Connection, "_execute", counted_execute)
        patch.setattr(AbstractConnection, "send_packed_command", counted_send)
        yield trips


async def test_round_trips_per_request(
    client: httpx.AsyncClient, alice: User, bob: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    await send(client, alice, bob.account_number, "1.00")  # warm: prepared statements, script
    await client.get("/api/v1/accounts", headers=alice.auth)

    with counting(monkeypatch) as transfer:
        response = await send(client, alice, bob.account_number, "1.00", key="counted")
    assert response.status_code == 201
    assert (transfer.postgres, transfer.redis) == (1, 2)

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
