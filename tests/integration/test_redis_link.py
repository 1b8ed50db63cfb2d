"""The request path's shared Redis connection against a real Redis: replies reach the request
that asked, a script Redis forgot is sent again, and a Redis that stops answering or drops the
connection costs a timeout or an error, then the next call reconnects."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError, ResponseError

from payments.platform.redis_link import RedisLink, Script
from tests.conftest import single_redis_only

TIMEOUT_S = 0.25
pytestmark = single_redis_only  # pauses and kills the clients of one node; a cluster has its own


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
async def link(redis_url: str, redis: Redis) -> AsyncIterator[RedisLink]:
    link = RedisLink(redis_url, TIMEOUT_S)
    yield link
    link.close()


async def test_many_requests_at_once_each_get_their_own_replies(
    link: RedisLink, redis: Redis
) -> None:
    async def one(n: int) -> list[object]:
        return await link.execute(
            ("SET", f"k{n}", f"v{n}"), ("INCRBY", f"n{n}", n), ("GET", f"k{n}")
        )

    replies = await asyncio.gather(*(one(n) for n in range(300)))

    assert replies == [[b"OK", n, f"v{n}".encode()] for n in range(300)]
    assert await redis.get("k299") == b"v299"  # the link writes in the URL's database


async def test_an_error_reply_is_raised(link: RedisLink) -> None:
    await link.execute(("SET", "text", "x"))
    with pytest.raises(ResponseError):
        await link.execute(("INCR", "text"))
    assert await link.execute(("GET", "text")) == [b"x"]  # and the connection is still in step


async def test_a_script_that_redis_forgot_is_sent_again(link: RedisLink, redis: Redis) -> None:
    script = Script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
    assert await link.run_script(script, ["counter"], [2]) == 2
    await redis.script_flush()
    assert await link.run_script(script, ["counter"], [3]) == 5


async def test_a_redis_that_stops_answering_times_out_and_the_next_call_reconnects(
    link: RedisLink, redis: Redis
) -> None:
    await link.execute(("SET", "a", "1"))
    first = link.protocol
    await redis.execute_command("CLIENT", "PAUSE", 600, "ALL")
    with pytest.raises(TimeoutError):
        await link.execute(("GET", "a"))
    assert first is not None and first.lost  # the late reply will not reach the next request
    await asyncio.sleep(0.5)
    assert await link.execute(("GET", "a")) == [b"1"]
    assert link.protocol is not first


async def test_a_dropped_connection_fails_its_calls_and_the_next_call_reconnects(
    redis_url: str, redis: Redis
) -> None:
    link = RedisLink(redis_url, timeout_s=5.0)
    [client_id, _] = await link.execute(("CLIENT", "ID"), ("SET", "a", "1"))
    waiting = asyncio.create_task(link.execute(("BLPOP", "nothing-comes", 3)))  # in flight
    await asyncio.sleep(0.2)
    await redis.execute_command("CLIENT", "KILL", "ID", client_id)
    with pytest.raises(ConnectionError):
        await waiting
    assert await link.execute(("GET", "a")) == [b"1"]
    link.close()
