"""Deposits: the one way money enters the books in production. Admin only, keyed, audited, paid
by the currency's funding account, which is the only account that may go below zero."""

from __future__ import annotations

import asyncio
import json
import uuid

import asyncpg
import httpx
import pytest

from tests.api.users import User, make_admin, new_user
from tests.books import balance_minor

DEPOSITS = "/api/v1/admin/deposits"


async def deposit(
    client: httpx.AsyncClient, admin: User, account_number: str, amount: object, *,
    key: str | None = None, reference: str = "wire 42",
) -> httpx.Response:  # fmt: skip
    body = {"account_number": account_number, "amount": amount, "reference": reference}
    headers = {**admin.auth, "Idempotency-Key": key or uuid.uuid4().hex}
    return await client.post(DEPOSITS, json=body, headers=headers)


async def test_an_admin_deposits_from_the_funding_account_and_it_is_audited(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    alice = await new_user(client, "alice")
    response = await deposit(client, admin, alice.account_number, "250.50", key="d1")
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["kind"], body["amount"], body["currency"]) == ("deposit", "250.50", "USD")
    assert (body["from_account_number"], body["to_account_number"]) == (
        "FUNDUSD",
        alice.account_number,
    )
    assert body["description"] == "wire 42"
    assert await balance_minor(db, alice.account_number) == 100000 + 25050
    audit = await db.fetchrow(
        "SELECT actor_id, action, target, details FROM audit_log WHERE action = 'deposit.created'"
    )
    assert (audit["actor_id"], audit["action"], audit["target"]) == (
        admin.user_id,
        "deposit.created",
        alice.account_number,
    )
    assert json.loads(audit["details"])["transaction_id"] == body["id"]
    replay = await deposit(client, admin, alice.account_number, "250.50", key="d1")
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (201, "true")
    assert replay.content == response.content
    assert await balance_minor(db, alice.account_number) == 100000 + 25050
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'deposit.created'") == 1


async def test_only_an_admin_may_deposit(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    response = await deposit(client, alice, alice.account_number, "1000000.00")
    assert (response.status_code, response.json()["code"]) == (403, "forbidden")
    assert "ratelimit" in response.headers
    assert await balance_minor(db, alice.account_number) == 100000
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'deposit.created'") == 0


@pytest.mark.parametrize(
    ("account", "amount", "status", "code"),
    [("AC0000000000000000", "5.00", 422, "unknown_account"),
     ("FUNDUSD", "5.00", 422, "unknown_account"),
     (None, "5.001", 422, "validation_error"), (None, "0", 422, "validation_error"),
     (None, 5.5, 201, ""), (None, "1000000.01", 422, "amount_too_large")],
)  # fmt: skip
async def test_deposit_input(
    client: httpx.AsyncClient, db: asyncpg.Pool, account: str | None, amount: object,
    status: int, code: str,
) -> None:  # fmt: skip
    admin = await make_admin(client, db)
    alice = await new_user(client, "alice")
    response = await deposit(client, admin, account or alice.account_number, amount)
    assert (response.status_code, response.json().get("code", "")) == (status, code)
    moved = 550 if status == 201 else 0
    assert await balance_minor(db, alice.account_number) == 100000 + moved


async def test_a_deposit_takes_the_decimals_of_the_account_currency(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """The currency is the account's, known only to the database: 5.5 into a JPY account is a
    validation error, refused before it ran, so the same key with a whole amount goes through."""
    admin = await make_admin(client, db)
    alice = await new_user(client, "alice")
    opened = await client.post("/api/v1/accounts", json={"currency": "JPY"}, headers=alice.auth)
    yen = opened.json()["account_number"]
    refused = await deposit(client, admin, yen, "5.5", key="yen")
    assert (refused.status_code, refused.json()["code"]) == (422, "validation_error")
    accepted = await deposit(client, admin, yen, "5", key="yen")
    assert (accepted.status_code, accepted.json()["amount"]) == (201, "5")
    assert await balance_minor(db, yen) == 5


async def test_concurrent_deposits_with_one_key_move_money_once(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    alice = await new_user(client, "alice")
    same_key = await asyncio.gather(
        *(deposit(client, admin, alice.account_number, "10.00", key="once") for _ in range(10))
    )
    assert {r.status_code for r in same_key} <= {201, 409}
    assert sum(r.status_code == 201 for r in same_key) >= 1
    distinct = await asyncio.gather(
        *(deposit(client, admin, alice.account_number, "1.00") for _ in range(10))
    )
    assert [r.status_code for r in distinct] == [201] * 10
    assert await balance_minor(db, alice.account_number) == 100000 + 1000 + 1000
    assert await balance_minor(db, "FUNDUSD") == -(2 * 100000 + 1000 + 1000)  # two openings
    assert (
        await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'deposit.created'") == 11
    )
