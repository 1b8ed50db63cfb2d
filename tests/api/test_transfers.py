"""Transfers move exact amounts once; errors move nothing; answers are stored with the key."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
from pydantic import SecretStr

from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.users import User, log_in, make_admin, new_user, reverse, send
from tests.books import balance_minor, transfer_count


async def test_a_transfer_debits_and_credits_exactly(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
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
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    first = await send(client, alice, bob.account_number, "10.00", key="retry-1")
    second = await send(client, alice, bob.account_number, "10.00", key="retry-1")
    assert (first.status_code, second.status_code) == (201, 201)
    assert second.content == first.content
    assert "idempotent-replayed" not in first.headers
    assert second.headers["idempotent-replayed"] == "true"
    assert await balance_minor(db, alice.account_number) == 99000
    assert await transfer_count(db) == 1


async def test_either_key_header_is_the_same_key(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
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
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    await send(client, alice, bob.account_number, "10.00", key="k1")
    other = await send(client, alice, bob.account_number, "11.00", key="k1")
    assert other.status_code == 422
    assert other.json()["code"] == "idempotency_key_reused"
    assert await balance_minor(db, bob.account_number) == 101000


async def test_keys_belong_to_their_principal(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    carol = await new_user(client, "carol")
    a = await send(client, alice, carol.account_number, "1.00", key="shared")
    b = await send(client, bob, carol.account_number, "1.00", key="shared")
    assert (a.status_code, b.status_code) == (201, 201)
    assert "idempotent-replayed" not in b.headers
    assert await balance_minor(db, carol.account_number) == 100200


async def test_a_business_refusal_is_stored_and_replayed(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
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


async def test_refusals_move_nothing(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
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
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
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


async def test_history_pages_newest_first(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
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


async def test_unknown_and_malformed_ids_are_404(client: httpx.AsyncClient, alice: User) -> None:
    for path in ("/api/v1/transactions/999999", "/api/v1/transactions/abc", "/api/v1/transactions/-1",
                 "/api/v1/transactions/99999999999999999999999", "/api/v1/accounts/nope"):  # fmt: skip
        response = await client.get(path, headers=alice.auth)
        assert response.status_code == 404, path
        assert response.json()["code"] == "not_found"


async def test_reversal_rules(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    mallory = await new_user(client, "mallory")
    sent = (await send(client, alice, bob.account_number, "40.00")).json()
    assert (await reverse(client, alice, sent["id"], key="r1")).status_code == 403
    assert (await reverse(client, mallory, sent["id"], key="r2")).status_code == 404
    assert (await reverse(client, bob, 999999, key="r3")).status_code == 404
    missing_key = await client.post(
        f"/api/v1/transactions/{sent['id']}/reverse", json={}, headers=bob.auth
    )
    assert missing_key.status_code == 400
    assert missing_key.json()["code"] == "idempotency_key_missing"

    reversed_ = await reverse(client, bob, sent["id"], key="r4")
    assert reversed_.status_code == 201, reversed_.text
    body = reversed_.json()
    assert (body["reverses"], body["kind"], body["amount"]) == (sent["id"], "reversal", "40.00")
    assert (body["from_account_number"], body["to_account_number"]) == (
        bob.account_number,
        alice.account_number,
    )
    assert (await reverse(client, bob, sent["id"], key="r4")).headers[
        "idempotent-replayed"
    ] == "true"
    twice = await reverse(client, bob, sent["id"], key="r5")
    assert (twice.status_code, twice.json()["code"]) == (409, "already_reversed")
    not_reversible = await reverse(client, alice, body["id"], key="r6")
    assert (not_reversible.status_code, not_reversible.json()["code"]) == (409, "not_reversible")
    assert await balance_minor(db, alice.account_number) == 100000
    assert await balance_minor(db, bob.account_number) == 100000


async def test_a_reversal_needs_the_funds_back(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    carol = await new_user(client, "carol")
    sent = (await send(client, alice, bob.account_number, "600.00")).json()
    await send(client, bob, carol.account_number, "1500.00")
    response = await client.post(f"/api/v1/transactions/{sent['id']}/reverse", json={},
                                 headers={**bob.auth, "Idempotency-Key": "rev"})  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (422, "insufficient_funds")
    assert await balance_minor(db, bob.account_number) == 10000


async def test_concurrent_reversals_one_wins_every_other_is_409(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """Eight reversals of one transfer at once, five times: one moves the money back, the other
    seven are 409 already_reversed (they were 500 when the check read a snapshot taken before
    the lock wait), and the money moved back exactly once."""
    for round_ in range(5):
        sent = (await send(client, alice, bob.account_number, "10.00")).json()
        answers = await asyncio.gather(*(reverse(client, bob, sent["id"]) for _ in range(8)))
        codes = sorted((a.status_code, a.json().get("code", "")) for a in answers)
        assert codes == [(201, "")] + [(409, "already_reversed")] * 7, (round_, codes)
    assert await balance_minor(db, alice.account_number) == 100000
    assert await balance_minor(db, bob.account_number) == 100000
    assert await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'reversal'") == 5


async def test_an_opening_balance_does_not_exist_for_anyone_else(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    """Its sender is a funding account, owned by nobody: a non-party still gets 404, not 403."""
    mallory = await new_user(client, "mallory")
    opening = await db.fetchval(
        "SELECT t.id FROM transfer t JOIN account a ON a.id = t.target_account_id"
        " WHERE a.account_number = $1 AND t.kind = 'opening'", alice.account_number)  # fmt: skip
    stranger = await reverse(client, mallory, opening)
    assert (stranger.status_code, stranger.json()["code"]) == (404, "not_found")
    own = await reverse(client, alice, opening)
    assert (own.status_code, own.json()["code"]) == (409, "not_reversible")
    admin = await make_admin(client, db)
    by_admin = await reverse(client, admin, opening)
    assert (by_admin.status_code, by_admin.json()["code"]) == (409, "not_reversible")


async def test_a_row_lock_not_had_in_time_is_503_and_the_key_stays_free(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    """lock_timeout (SQLSTATE 55P03) is a busy database, not a bug: 503 with Retry-After, nothing
    moved, nothing stored with the key, and the same key goes through once the row is free."""
    async with serving(settings.model_copy(update={"db_lock_timeout_s": 0.2})) as http:
        async with db.acquire() as holder, holder.transaction():
            await holder.execute(
                "SELECT 1 FROM account WHERE account_number = $1 FOR UPDATE", bob.account_number
            )
            busy = await send(http, alice, bob.account_number, "5.00", key="held")
        assert (busy.status_code, busy.json()["code"]) == (503, "unavailable")
        assert busy.headers["retry-after"] == "1"
        assert "ratelimit" in busy.headers
        assert await transfer_count(db) == 0
        retried = await send(http, alice, bob.account_number, "5.00", key="held")
        assert retried.status_code == 201, retried.text
    assert await balance_minor(db, bob.account_number) == 100500


async def test_cursors_outlive_a_new_token_key(
    client: httpx.AsyncClient, alice: User, bob: User, settings: Settings
) -> None:
    """Cursors are signed with a key of their own: rotating JWT_SECRET breaks none in flight."""
    for _ in range(3):
        await send(client, alice, bob.account_number, "1.00")
    first = await client.get("/api/v1/transactions", params={"limit": "2"}, headers=alice.auth)
    cursor = first.json()["next_cursor"]
    rotated = settings.model_copy(update={"jwt_secret": SecretStr("rotated-" + "y" * 40),
                                          "jwt_key_id": "k2"})  # fmt: skip
    async with serving(rotated) as http:
        fresh = await log_in(http, alice.email)
        page = await http.get("/api/v1/transactions", params={"limit": "2", "cursor": cursor},
                              headers=fresh.auth)  # fmt: skip
    assert page.status_code == 200, page.text
    assert len(page.json()["data"]) == 2
