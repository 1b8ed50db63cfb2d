"""Bad input of every kind is a clear 4xx, changes nothing, and is not stored with the key."""

from __future__ import annotations

import uuid

import asyncpg
import httpx
import pytest

from tests.api.users import User, send
from tests.books import balance_minor, transfer_count

JSON = {"Content-Type": "application/json"}
BAD_AMOUNTS = ["1e2", "NaN", "Infinity", "+5", ".5", "5.", "1,000", "50.000", "0", "0.00", "-5", " 5", "",
               None, True, [], {"v": 1}]  # fmt: skip


@pytest.mark.parametrize("amount", BAD_AMOUNTS)
async def test_bad_amounts_are_validation_errors(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, amount: object
) -> None:
    key = uuid.uuid4().hex
    response = await send(client, alice, bob.account_number, amount, key=key)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert response.json()["errors"][0]["field"] == "amount"
    # Refused before it ran: nothing stored, so the same key with a corrected body goes through.
    corrected = await send(client, alice, bob.account_number, "5.00", key=key)
    assert corrected.status_code == 201
    assert "idempotent-replayed" not in corrected.headers
    assert await balance_minor(db, bob.account_number) == 100500


@pytest.mark.parametrize(
    "raw", [b'{"amount": 1e2}', b'{"amount": 1E+2}', b'{"amount": -5}', b'{"amount": 0}']
)
async def test_bad_json_numbers_are_validation_errors(
    client: httpx.AsyncClient, alice: User, raw: bytes
) -> None:
    body = raw[:-1] + b', "to_account_number": "AC0000000000000000"}'
    response = await client.post("/api/v1/transactions", content=body,
                                 headers={**alice.auth, **JSON, "Idempotency-Key": "n"})  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")


async def test_json_numbers_are_exact(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    body = f'{{"to_account_number": "{bob.account_number}", "amount": 0.29}}'.encode()
    response = await client.post("/api/v1/transactions", content=body,
                                 headers={**alice.auth, **JSON, "Idempotency-Key": "n"})  # fmt: skip
    assert response.json()["amount"] == "0.29"
    assert await balance_minor(db, bob.account_number) == 100029


async def test_amount_over_the_maximum(client: httpx.AsyncClient, alice: User, bob: User) -> None:
    for amount in ("1000000.01", "99999999999999999999999999"):
        response = await send(client, alice, bob.account_number, amount)
        assert (response.status_code, response.json()["code"]) == (422, "amount_too_large")


async def test_decimals_are_checked_against_the_recipients_currency(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """No currency named: the transfer takes the recipient's, and JPY has no minor digits."""
    yen = (await client.post("/api/v1/accounts", json={"currency": "JPY"}, headers=bob.auth)).json()
    response = await send(client, alice, yen["account_number"], "5.5", key="yen")
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    # Not stored: the same key with a whole amount runs (and fails for want of a JPY account).
    again = await send(client, alice, yen["account_number"], "5", key="yen")
    assert again.json()["code"] == "currency_mismatch"
    assert "idempotent-replayed" not in again.headers


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [(b"{", 400, "malformed_json"), (b"NaN", 400, "malformed_json"), (b'{"amount": NaN}', 400, "malformed_json"),
     (b"\xff\xfe", 400, "malformed_json"), (b"[]", 422, "validation_error"), (b'"x"', 422, "validation_error"),
     (b"", 422, "validation_error")],
)  # fmt: skip
async def test_bodies_that_are_not_objects(
    client: httpx.AsyncClient, alice: User, body: bytes, status: int, code: str
) -> None:
    response = await client.post("/api/v1/transactions", content=body,
                                 headers={**alice.auth, **JSON, "Idempotency-Key": "b"})  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert response.headers["content-type"] == "application/problem+json"


async def test_a_body_over_the_limit_is_413(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    body = {
        "to_account_number": bob.account_number,
        "amount": "1.00",
        "description": "x" * (64 * 1024),
    }
    response = await client.post(
        "/api/v1/transactions", json=body, headers={**alice.auth, "Idempotency-Key": "big"}
    )
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")
    assert await transfer_count(db) == 0


async def test_key_header_errors(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    body = {"to_account_number": bob.account_number, "amount": "1.00"}
    cases = [({}, "idempotency_key_missing"), ({"Idempotency-Key": "x" * 256}, "idempotency_key_invalid"),
             ({"Idempotency-Key": "a", "X-Idempotency-Key": "b"}, "idempotency_key_invalid")]  # fmt: skip
    for headers, code in cases:
        response = await client.post(
            "/api/v1/transactions", json=body, headers={**alice.auth, **headers}
        )
        assert (response.status_code, response.json()["code"]) == (400, code)
    assert await transfer_count(db) == 0


async def test_other_fields_are_validated(client: httpx.AsyncClient, alice: User) -> None:
    for fields in ({"to_account_number": ""}, {"to_account_number": 12}, {"currency": "usd"},
                   {"currency": "XYZ"}, {"description": "d" * 501}, {"from_account_number": ""},
                   {"unexpected": 1}):  # fmt: skip
        body = {"to_account_number": "AC0000000000000000", "amount": "1.00", **fields}
        response = await client.post("/api/v1/transactions", json=body,
                                     headers={**alice.auth, "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
        assert (response.status_code, response.json()["code"]) == (422, "validation_error"), fields


async def test_unknown_routes_and_methods_are_problems(
    client: httpx.AsyncClient, alice: User
) -> None:
    missing = await client.get("/api/v1/nothing-here", headers=alice.auth)
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    wrong_method = await client.delete("/api/v1/accounts", headers=alice.auth)
    assert (wrong_method.status_code, wrong_method.json()["code"]) == (405, "method_not_allowed")
    assert wrong_method.headers["content-type"] == "application/problem+json"


async def test_a_405_names_every_method_of_the_path(client: httpx.AsyncClient, alice: User) -> None:
    response = await client.put("/api/v1/transactions", headers=alice.auth)
    assert response.status_code == 405
    assert set(response.headers["allow"].replace(" ", "").split(",")) >= {"GET", "POST"}


async def test_a_long_account_number_is_unknown_not_invalid(
    client: httpx.AsyncClient, alice: User
) -> None:
    response = await send(client, alice, "A" * 300, "1.00")
    assert (response.status_code, response.json()["code"]) == (422, "unknown_account")


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx"]
)
async def test_a_body_that_is_not_json_by_its_media_type_is_415(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, content_type: str | None
) -> None:
    body = f'{{"to_account_number": "{bob.account_number}", "amount": "1.00"}}'.encode()
    headers = {**alice.auth, "Idempotency-Key": "m"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = await client.post("/api/v1/transactions", content=body, headers=headers)
    assert (response.status_code, response.json()["code"]) == (415, "unsupported_media_type")
    assert response.headers["accept-post"] == "application/json"
    assert "ratelimit" in response.headers  # counted, and told so
    assert await transfer_count(db) == 0
    # Refused before it ran: the same key with the right media type goes through.
    headers["Content-Type"] = "application/json; charset=utf-8"
    response = await client.post("/api/v1/transactions", content=body, headers=headers)
    assert response.status_code == 201, response.text


async def test_an_object_that_repeats_a_key_is_malformed(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """Two parsers could keep different amounts: neither is chosen."""
    body = f'{{"to_account_number": "{bob.account_number}", "amount": "1.00", "amount": "900.00"}}'
    response = await client.post("/api/v1/transactions", content=body.encode(),
                                 headers={**alice.auth, **JSON, "Idempotency-Key": "d"})  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (400, "malformed_json")
    assert await transfer_count(db) == 0


NUL = "\\u0000"
SURROGATE = "\\ud800"


@pytest.mark.parametrize(
    ("path", "fields", "keyed"),
    [("/api/v1/auth/login", f'"email": "a{NUL}@x.io", "password": "pw"', False),
     ("/api/v1/auth/register", f'"email": "n@x.io", "password": "a long pass", "full_name": "A{NUL}"', False),
     ("/api/v1/transactions", f'"to_account_number": "AC1", "amount": "1", "description": "d{NUL}"', True),
     ("/api/v1/transactions", f'"to_account_number": "AC{NUL}", "amount": "1"', True),
     ("/api/v1/transactions", f'"to_account_number": "AC1", "amount": "1", "description": "{SURROGATE}"', True),
     ("/api/v1/transactions", f'"to_account_number": "AC1", "amount": "1", "{SURROGATE}": 1', True),
     ("/api/v1/accounts", f'"currency": "{SURROGATE}"', True)],
)  # fmt: skip
async def test_nul_and_lone_surrogates_are_validation_errors(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, path: str, fields: str, keyed: bool
) -> None:
    """Valid JSON, but no text column, log line or UTF-8 encoder takes it: 422, before anything
    costly runs (the password hash) and after the limiter counted it."""
    headers = {**JSON, **(alice.auth if keyed else {}), "Idempotency-Key": uuid.uuid4().hex}
    users_before = await db.fetchval("SELECT count(*) FROM app_user")
    response = await client.post(path, content=("{" + fields + "}").encode(), headers=headers)
    assert (response.status_code, response.json()["code"]) == (422, "validation_error")
    assert "ratelimit" in response.headers
    assert await db.fetchval("SELECT count(*) FROM app_user") == users_before
    assert await transfer_count(db) == 0


async def test_raw_surrogate_bytes_are_refused_too(client: httpx.AsyncClient, alice: User) -> None:
    body = b'{"to_account_number": "AC1", "amount": "1", "description": "\xed\xa0\x80"}'
    response = await client.post("/api/v1/transactions", content=body,
                                 headers={**alice.auth, **JSON, "Idempotency-Key": "s"})  # fmt: skip
    assert response.status_code in (400, 422)
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("number", ["AC%00", "AC%ED%A0%80", "%00"])
async def test_a_nul_in_a_path_is_not_found(
    client: httpx.AsyncClient, alice: User, number: str
) -> None:
    response = await client.get(f"/api/v1/accounts/{number}", headers=alice.auth)
    assert (response.status_code, response.json()["code"]) == (404, "not_found")


async def test_tokens_and_balances_are_never_stored_by_a_cache(client: httpx.AsyncClient) -> None:
    """RFC 6749 section 5.1 for token responses; every /api/v1 answer carries no-store."""
    registered = await client.post("/api/v1/auth/register", json={
        "email": "store@example.com", "password": "a long password", "full_name": "S"})  # fmt: skip
    assert registered.headers["cache-control"] == "no-store"
    login = await client.post(
        "/api/v1/auth/login", json={"email": "store@example.com", "password": "a long password"}
    )
    assert login.headers["cache-control"] == "no-store"
    token = {"Authorization": f"Bearer {login.json()['access_token']}"}
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": login.json()["refresh_token"]}
    )
    assert refreshed.headers["cache-control"] == "no-store"
    for path in ("/api/v1/accounts", "/api/v1/accounts", "/api/v1/transactions", "/api/v1/nope"):
        response = await client.get(path, headers=token)
        assert response.headers["cache-control"] == "no-store", path
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": "store@example.com", "password": "x"}
    )
    assert wrong.headers["cache-control"] == "no-store"
    docs = await client.get("/openapi.yaml")
    assert "cache-control" not in docs.headers


async def test_every_body_has_one_compact_shape(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    """Bodies rendered by the database and by Python alike: no space after a colon or a comma."""
    answers = [
        await send(client, alice, bob.account_number, "1.00"),
        await send(client, alice, "AC0000000000000000", "1.00"),
        await client.get("/api/v1/accounts", headers=alice.auth),
        await client.get("/api/v1/transactions", headers=alice.auth),
        await client.get(f"/api/v1/accounts/{alice.account_number}", headers=alice.auth),
        await client.post("/api/v1/auth/register", json={
            "email": "shape@example.com", "password": "a long password", "full_name": "S"}),
    ]  # fmt: skip
    for response in answers:
        assert b'": ' not in response.content, response.content
        assert b'" :' not in response.content, response.content
        assert b", " not in response.content.replace(b"the account holds", b""), response.content
