"""The response cache: hits, misses, invalidation for both parties, and the fill that races a
write."""

from __future__ import annotations

import asyncio

import httpx
from redis.asyncio import Redis

from payments.platform import redis_keys
from tests.api.users import User, new_user, send


async def test_a_second_read_is_a_hit(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    first = await client.get("/api/v1/accounts", headers=user.auth)
    second = await client.get("/api/v1/accounts", headers=user.auth)
    assert first.headers["cache-status"] == "payments; fwd=miss"
    assert second.headers["cache-status"] == "payments; hit"
    assert second.content == first.content
    history = [await client.get("/api/v1/transactions", headers=user.auth) for _ in range(2)]
    assert [r.headers["cache-status"] for r in history] == ["payments; fwd=miss", "payments; hit"]


async def test_entries_are_per_user_and_per_page_size(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    await client.get("/api/v1/accounts", headers=alice.auth)
    bobs = await client.get("/api/v1/accounts", headers=bob.auth)
    assert bobs.headers["cache-status"] == "payments; fwd=miss"
    assert bobs.json()["data"][0]["account_number"] == bob.account_number
    await client.get("/api/v1/transactions", headers=alice.auth)
    small = await client.get("/api/v1/transactions", params={"limit": "1"}, headers=alice.auth)
    assert small.headers["cache-status"] == "payments; fwd=miss"


async def test_later_pages_are_not_cached(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    await send(client, alice, bob.account_number, "1.00")
    cursor = (
        await client.get("/api/v1/transactions", params={"limit": "1"}, headers=alice.auth)
    ).json()["next_cursor"]
    page = await client.get(
        "/api/v1/transactions", params={"limit": "1", "cursor": cursor}, headers=alice.auth
    )
    assert "cache-status" not in page.headers


async def test_a_transfer_invalidates_both_parties(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    for user in (alice, bob):
        await client.get("/api/v1/accounts", headers=user.auth)
        await client.get("/api/v1/transactions", headers=user.auth)
    await send(client, alice, bob.account_number, "30.00")
    alice_accounts = await client.get("/api/v1/accounts", headers=alice.auth)
    bob_accounts = await client.get("/api/v1/accounts", headers=bob.auth)
    assert alice_accounts.json()["data"][0]["balance"] == "970.00"
    assert bob_accounts.json()["data"][0]["balance"] == "1030.00"
    bob_history = await client.get("/api/v1/transactions", headers=bob.auth)
    assert bob_history.headers["cache-status"] == "payments; fwd=miss"
    assert bob_history.json()["data"][0]["amount"] == "30.00"


async def test_a_fill_that_raced_a_write_is_never_served(
    client: httpx.AsyncClient, alice: User, bob: User, redis: Redis
) -> None:
    """A reader loads the page, a transfer commits and bumps the version, then the reader's fill
    lands: it carries the old version, so the next read misses and sees the new balance."""
    await client.get("/api/v1/accounts", headers=alice.auth)
    version_before = await redis.get(redis_keys.cache_version(alice.user_id))
    stale = (await client.get("/api/v1/accounts", headers=alice.auth)).content
    await send(client, alice, bob.account_number, "30.00")
    # The late fill of the reader that started before the transfer:
    await redis.hset(redis_keys.cache_entry(alice.user_id, "accounts"),
                     mapping={"version": version_before or b"0", "body": stale})  # fmt: skip
    after = await client.get("/api/v1/accounts", headers=alice.auth)
    assert after.headers["cache-status"] == "payments; fwd=miss"
    assert after.json()["data"][0]["balance"] == "970.00"


async def test_reads_racing_transfers_always_see_the_writers_own_writes(
    client: httpx.AsyncClient,
    alice: User,
    bob: User,
) -> None:
    stop = asyncio.Event()

    async def keep_reading() -> None:
        while not stop.is_set():
            await client.get("/api/v1/accounts", headers=alice.auth)

    readers = [asyncio.create_task(keep_reading()) for _ in range(4)]
    try:
        for n in range(1, 11):
            await send(client, alice, bob.account_number, "1.00")
            seen = (await client.get("/api/v1/accounts", headers=alice.auth)).json()["data"][0][
                "balance"
            ]
            assert seen == f"{1000 - n}.00"
    finally:
        stop.set()
        await asyncio.gather(*readers)
