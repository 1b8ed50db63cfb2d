"""Transfers move exact amounts once; errors move nothing; answers are stored with the key."""

from __future__ import annotations

import asyncpg
import httpx

from tests.api.users import new_user, send
from tests.books import balance_minor, transfer_count


async def test_a_transfer_debits_and_credits_exactly(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    response = await send(client, alice, bob.account_number, "12.34", description="lunch")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body == {
        "id": body["id"], "from_account_number": alice.account_number,
        "to_account_number": bob.account_number, "amount": "12.34", "currency": "USD",
        "status": "COMPLETED", "kind": "transfer", "description": "lunch", "reverses": None,
        "created_at": body["created_at"],
    }  # fmt: skip
    assert body["created_at"].endswith("Z")
    assert await balance_minor(db, alice.account_number) == 100000 - 1234
    assert await balance_minor(db, bob.account_number) == 100000 + 1234
    entries = await db.fetch(
        "SELECT a.account_number, e.direction, e.amount_minor, e.balance_after_minor FROM ledger_entry e"
        " JOIN account a ON a.id = e.account_id WHERE e.transfer_id = $1 ORDER BY e.id", body["id"])  # fmt: skip
    assert [tuple(row) for row in entries] == [
        (alice.account_number, "debit", 1234, 98766),
        (bob.account_number, "credit", 1234, 101234),
    ]
    fetched = await client.get(f"/api/v1/transactions/{body['id']}", headers=alice.auth)
    assert fetched.json() == body


async def test_a_retry_replays_the_answer_and_moves_nothing(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    first = await send(client, alice, bob.account_number, "10.00", key="retry-1")
    second = await send(client, alice, bob.account_number, "10.00", key="retry-1")
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert await balance_minor(db, alice.account_number) == 99000
    assert await transfer_count(db) == 1


async def test_either_key_header_is_the_same_key(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    body = {"to_account_number": bob.account_number, "amount": "1.00"}
    first = await client.post(
        "/api/v1/transactions", json=body, headers={**alice.auth, "Idempotency-Key": "k"}
    )
    second = await client.post(
        "/api/v1/transactions", json=body, headers={**alice.auth, "X-Idempotency-Key": "k"}
    )
    assert second.headers["idempotent-replayed"] == "true"
    assert second.json() == first.json()
    assert await transfer_count(db) == 1


async def test_the_same_key_with_another_request_is_refused(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    await send(client, alice, bob.account_number, "10.00", key="k1")
    other = await send(client, alice, bob.account_number, "11.00", key="k1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await balance_minor(db, bob.account_number) == 101000


async def test_keys_belong_to_their_principal(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    a = await send(client, alice, carol.account_number, "1.00", key="shared")
    b = await send(client, bob, carol.account_number, "1.00", key="shared")
    assert (a.status_code, b.status_code) == (201, 201)
    assert "idempotent-replayed" not in b.headers
    assert await balance_minor(db, carol.account_number) == 100200


async def test_a_business_refusal_is_stored_and_replayed(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    refused = await send(client, alice, bob.account_number, "1000.01", key="big")
    assert refused.status_code == 422
    assert refused.json()["code"] == "insufficient_funds"
    assert refused.headers["content-type"] == "application/problem+json"
    # Funds arrive, but the key's answer stands: the retry gets the stored refusal.
    await send(client, bob, alice.account_number, "500.00")
    again = await send(client, alice, bob.account_number, "1000.01", key="big")
    assert again.status_code == 422
    assert again.headers["idempotent-replayed"] == "true"
    assert again.content == refused.content
    assert await balance_minor(db, alice.account_number) == 150000


async def test_refusals_move_nothing(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=alice.auth)
    cases = [
        ({"to_account_number": "AC0000000000000000"}, "unknown_account"),
        ({"to_account_number": "no such thing"}, "unknown_account"),
        ({"to_account_number": alice.account_number}, "self_transfer"),
        ({"to_account_number": bob.account_number, "currency": "EUR"}, "currency_mismatch"),
        ({"to_account_number": bob.account_number, "currency": "GBP"}, "currency_mismatch"),
        (
            {"to_account_number": bob.account_number, "from_account_number": bob.account_number},
            "unknown_account",
        ),
        ({"to_account_number": "FUNDUSD"}, "unknown_account"),
    ]
    for fields, code in cases:
        response = await client.post("/api/v1/transactions", json={"amount": "1.00", **fields},
                                     headers={**alice.auth, "Idempotency-Key": code + str(fields)})  # fmt: skip
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["code"] == code, fields
    assert await transfer_count(db) == 0
    assert await balance_minor(db, alice.account_number) == 100000


async def test_from_account_number_chooses_the_source(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    euro = (
        await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=bob.auth)
    ).json()
    alice_euro = (
        await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=alice.auth)
    ).json()
    # Alice's EUR account is empty: a EUR transfer to Bob's EUR account fails for funds, not currency.
    response = await send(client, alice, euro["account_number"], "1.00",
                          from_account_number=alice_euro["account_number"])  # fmt: skip
    assert response.json()["code"] == "insufficient_funds"
    response = await send(
        client, alice, euro["account_number"], "1.00", from_account_number=alice.account_number
    )
    assert response.json()["code"] == "currency_mismatch"
    assert await balance_minor(db, euro["account_number"]) == 0


async def test_history_pages_newest_first(client: httpx.AsyncClient) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    ids = [
        (await send(client, alice, bob.account_number, f"{n}.00")).json()["id"] for n in range(1, 6)
    ]
    incoming = (await send(client, bob, alice.account_number, "9.00")).json()["id"]
    seen: list[int] = []
    cursor = None
    for _ in range(10):
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/v1/transactions", params=params, headers=alice.auth)).json()
        seen += [item["id"] for item in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    opening = seen[-1]
    assert seen == [incoming, *reversed(ids), opening]
    for bad in (
        {"limit": "0"},
        {"limit": "101"},
        {"limit": "x"},
        {"cursor": "forged"},
        {"cursor": ""},
    ):
        response = await client.get("/api/v1/transactions", params=bad, headers=alice.auth)
        assert response.status_code == 422, bad
        assert response.json()["code"] == "validation_error"


async def test_unknown_and_malformed_ids_are_404(client: httpx.AsyncClient) -> None:
    alice = await new_user(client, "alice")
    for path in ("/api/v1/transactions/999999", "/api/v1/transactions/abc", "/api/v1/transactions/-1",
                 "/api/v1/transactions/99999999999999999999999", "/api/v1/accounts/nope"):  # fmt: skip
        response = await client.get(path, headers=alice.auth)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"


async def test_reversal_rules(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    mallory = await new_user(client, "mallory")
    sent = (await send(client, alice, bob.account_number, "40.00")).json()

    async def reverse(user: object, transfer_id: int, key: str) -> httpx.Response:
        headers = {**user.auth, "Idempotency-Key": key}  # type: ignore[attr-defined]
        return await client.post(
            f"/api/v1/transactions/{transfer_id}/reverse", json={}, headers=headers
        )

    assert (await reverse(alice, sent["id"], "r1")).status_code == 403
    assert (await reverse(mallory, sent["id"], "r2")).status_code == 404
    assert (await reverse(bob, 999999, "r3")).status_code == 404
    missing_key = await client.post(
        f"/api/v1/transactions/{sent['id']}/reverse", json={}, headers=bob.auth
    )
    assert missing_key.status_code == 400
    assert missing_key.json()["code"] == "idempotency_key_missing"

    reversed_ = await reverse(bob, sent["id"], "r4")
    assert reversed_.status_code == 201, reversed_.text
    body = reversed_.json()
    assert (body["reverses"], body["kind"], body["amount"]) == (sent["id"], "reversal", "40.00")
    assert (body["from_account_number"], body["to_account_number"]) == (
        bob.account_number,
        alice.account_number,
    )
    assert (await reverse(bob, sent["id"], "r4")).headers["idempotent-replayed"] == "true"
    twice = await reverse(bob, sent["id"], "r5")
    assert (twice.status_code, twice.json()["code"]) == (409, "already_reversed")
    not_reversible = await reverse(alice, body["id"], "r6")
    assert (not_reversible.status_code, not_reversible.json()["code"]) == (409, "not_reversible")
    assert await balance_minor(db, alice.account_number) == 100000
    assert await balance_minor(db, bob.account_number) == 100000


async def test_a_reversal_needs_the_funds_back(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    alice = await new_user(client, "alice")
    bob = await new_user(client, "bob")
    carol = await new_user(client, "carol")
    sent = (await send(client, alice, bob.account_number, "600.00")).json()
    await send(client, bob, carol.account_number, "1500.00")
    response = await client.post(f"/api/v1/transactions/{sent['id']}/reverse", json={},
                                 headers={**bob.auth, "Idempotency-Key": "rev"})  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (422, "insufficient_funds")
    assert await balance_minor(db, bob.account_number) == 10000
