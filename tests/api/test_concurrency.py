"""Many clients at once: no deadlock, no cent lost, and one key moves money once."""

from __future__ import annotations

import asyncio
import random

import asyncpg
import httpx

from tests.api.users import User, new_user, send
from tests.books import balance_minor, transfer_count

ACCOUNTS = 10
TRANSFERS = 64


async def test_concurrent_transfers_in_both_directions_lose_nothing(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    users = [await new_user(client, f"c{n}") for n in range(ACCOUNTS)]
    rng = random.Random(7)
    pairs = [rng.sample(range(ACCOUNTS), 2) for _ in range(TRANSFERS - 8)]
    pairs += [[0, 1], [1, 0]] * 4  # opposite transfers between one pair, the classic deadlock
    amounts = [rng.choice(["1.00", "7.25", "150.00", "333.33", "999.99"]) for _ in pairs]

    responses = await asyncio.gather(*(
        send(client, users[a], users[b].account_number, amount) for (a, b), amount in zip(pairs, amounts, strict=True)
    ))  # fmt: skip

    expected = {user.account_number: 100000 for user in users}
    for ((a, b), amount), response in zip(zip(pairs, amounts, strict=True), responses, strict=True):
        if response.status_code == 201:
            minor = int(amount.replace(".", ""))
            expected[users[a].account_number] -= minor
            expected[users[b].account_number] += minor
        else:
            assert (response.status_code, response.json()["code"]) == (422, "insufficient_funds")
    for account_number, minor in expected.items():
        assert await balance_minor(db, account_number) == minor
    assert sum(expected.values()) == ACCOUNTS * 100000
    assert await transfer_count(db) == sum(r.status_code == 201 for r in responses)


async def test_twenty_requests_with_one_key_move_money_once(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    responses = await asyncio.gather(
        *(send(client, alice, bob.account_number, "25.00", key="same-key") for _ in range(20))
    )
    originals = [
        r for r in responses if r.status_code == 201 and "idempotent-replayed" not in r.headers
    ]
    assert len(originals) == 1
    for response in responses:
        if response.status_code == 201:
            assert response.content == originals[0].content
        else:
            assert (response.status_code, response.json()["code"]) == (
                409,
                "idempotency_key_in_use",
            )
    assert await transfer_count(db) == 1
    assert await balance_minor(db, bob.account_number) == 102500


async def test_draining_one_account_from_many_clients_never_overdraws(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """30 clients each try to take 100.00 from a 1,000.00 balance: exactly ten succeed."""
    payer = await new_user(client, "payer")
    recipients: list[User] = [await new_user(client, f"r{n}") for n in range(3)]
    responses = await asyncio.gather(*(
        send(client, payer, recipients[n % 3].account_number, "100.00") for n in range(30)
    ))  # fmt: skip
    assert sum(r.status_code == 201 for r in responses) == 10
    assert {r.json()["code"] for r in responses if r.status_code != 201} == {"insufficient_funds"}
    assert await balance_minor(db, payer.account_number) == 0


async def test_concurrent_registrations_fund_every_account(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Every opening balance is paid by one funding account: a hot row that must not lose updates."""
    users = await asyncio.gather(*(new_user(client, f"reg{n}") for n in range(16)))
    for user in users:
        assert await balance_minor(db, user.account_number) == 100000
    assert await balance_minor(db, "FUNDUSD") == -16 * 100000
