"""Accounts: one per currency, opening at zero after the first."""

from __future__ import annotations

import asyncpg
import httpx

from tests.api.users import new_user


async def test_list_and_open_accounts(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    user = await new_user(client)
    opened = await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=user.auth)
    assert opened.status_code == 201, opened.text
    account = opened.json()
    assert (account["currency"], account["balance"]) == ("EUR", "0.00")
    yen = (
        await client.post("/api/v1/accounts", json={"currency": "JPY"}, headers=user.auth)
    ).json()
    assert yen["balance"] == "0"
    listed = await client.get("/api/v1/accounts", headers=user.auth)
    assert listed.status_code == 200
    body = listed.json()
    assert [a["currency"] for a in body["data"]] == ["USD", "EUR", "JPY"]
    assert body["next_cursor"] is None
    one = await client.get(f"/api/v1/accounts/{account['account_number']}", headers=user.auth)
    assert one.json() == account


async def test_one_account_per_currency(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    again = await client.post("/api/v1/accounts", json={"currency": "USD"}, headers=user.auth)
    assert (again.status_code, again.json()["code"]) == (409, "account_exists")


async def test_open_account_replays_with_a_key(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    user = await new_user(client)
    headers = {**user.auth, "Idempotency-Key": "open-eur"}
    first = await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=headers)
    second = await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=headers)
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json() == first.json()
    assert second.headers["idempotent-replayed"] == "true"
    assert (
        await db.fetchval(
            "SELECT count(*) FROM account WHERE currency = 'EUR' AND kind = 'customer'"
        )
        == 1
    )


async def test_currency_must_be_one_we_hold(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    for body in (
        {"currency": "usd"},
        {"currency": "XXX"},
        {"currency": "EURO"},
        {},
        {"currency": 978},
    ):
        response = await client.post("/api/v1/accounts", json=body, headers=user.auth)
        assert (response.status_code, response.json()["code"]) == (422, "validation_error"), body
