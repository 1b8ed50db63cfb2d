"""Register, login, refresh rotation with reuse detection, logout, and what a token may read."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
from asgi_lifespan import LifespanManager
from jose import jwt

from payments.app import create_app
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.users import PASSWORD, User, log_in, new_user, send
from tests.books import balance_minor

REGISTER = "/api/v1/auth/register"


async def test_register_opens_a_funded_account(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    response = await client.post(REGISTER, json={"email": "Ann@Example.com", "password": PASSWORD,
                                                 "fullName": "Ann Example"})  # fmt: skip
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user"] == {
        "id": body["user"]["id"],
        "email": "Ann@Example.com",
        "full_name": "Ann Example",
    }
    account = body["account"]
    assert (account["currency"], account["balance"]) == ("USD", "1000.00")
    assert account["account_number"].startswith("AC")
    assert await balance_minor(db, account["account_number"]) == 100000
    assert await balance_minor(db, "FUNDUSD") == -100000
    stored = await db.fetchval("SELECT password_hash FROM app_user WHERE email = 'Ann@Example.com'")
    assert stored.startswith("$argon2id$")
    assert PASSWORD not in stored


async def test_an_email_registers_once_whatever_its_case(client: httpx.AsyncClient) -> None:
    first = await client.post(
        REGISTER, json={"email": "dup@example.com", "password": PASSWORD, "full_name": "A"}
    )
    assert first.status_code == 201
    again = await client.post(
        REGISTER, json={"email": "DUP@example.com", "password": PASSWORD, "full_name": "B"}
    )
    assert again.status_code == 409
    assert again.headers["content-type"] == "application/problem+json"
    assert again.json()["code"] == "email_taken"


async def test_register_validates_every_field(client: httpx.AsyncClient, db: asyncpg.Pool) -> None:
    for body in ({"email": "not-an-email", "password": PASSWORD, "full_name": "A"},
                 {"email": "a@example.com", "password": "short", "full_name": "A"},
                 {"email": "a@example.com", "password": PASSWORD, "full_name": ""},
                 {"email": "a@example.com", "password": PASSWORD},
                 {"email": "a@example.com", "password": 12345678, "full_name": "A"}):  # fmt: skip
        response = await client.post(REGISTER, json=body)
        assert response.status_code == 422, body
        assert response.json()["code"] == "validation_error"
        assert response.json()["errors"]
    assert await db.fetchval("SELECT count(*) FROM app_user") == 0


async def test_login_refuses_a_wrong_password_and_an_unknown_email_alike(
    client: httpx.AsyncClient,
) -> None:
    user = await new_user(client)
    wrong = await client.post(
        "/api/v1/auth/login", json={"email": user.email, "password": "wrong password"}
    )
    unknown = await client.post(
        "/api/v1/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "invalid_credentials"


async def test_login_answers_tokens_user_and_account(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    response = await client.post(
        "/api/v1/auth/login", json={"email": user.email.upper(), "password": PASSWORD}
    )
    body = response.json()
    assert response.status_code == 200
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert body["account"]["account_number"] == user.account_number
    header = jwt.get_unverified_header(body["access_token"])
    claims = jwt.get_unverified_claims(body["access_token"])
    assert (header["alg"], header["typ"], header["kid"]) == ("HS256", "at+jwt", "k1")
    assert {"iss", "aud", "sub", "exp", "iat", "jti", "sid"} <= set(claims)


async def test_refresh_rotates_and_reuse_revokes_the_family(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    first = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert first.status_code == 200, first.text
    rotated = first.json()
    assert rotated["refresh_token"] != user.refresh_token
    assert (
        await client.get("/api/v1/accounts", headers=auth(rotated["access_token"]))
    ).status_code == 200

    # The first token again: stolen or replayed. The whole family dies with it.
    reused = await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert reused.status_code == 401
    assert reused.json()["code"] == "invalid_token"
    child = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": rotated["refresh_token"]}
    )
    assert child.status_code == 401
    for token in (user.token, rotated["access_token"]):
        refused = await client.get("/api/v1/accounts", headers=auth(token))
        assert refused.status_code == 401
        assert "RateLimit" not in refused.headers


async def test_other_sessions_survive_a_revoked_family(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    other = await log_in(client, user.email)
    await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert (await client.get("/api/v1/accounts", headers=other.auth)).status_code == 200


async def test_logout_revokes_the_access_and_refresh_tokens(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    out = await client.post(
        "/api/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.auth
    )
    assert out.status_code == 204
    assert (await client.get("/api/v1/accounts", headers=user.auth)).status_code == 401
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
    )
    assert refreshed.status_code == 401


async def test_logout_needs_an_access_token(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/auth/logout", json={})
    assert response.status_code == 401


async def test_revocation_holds_when_redis_lost_its_data(
    client: httpx.AsyncClient, redis: object
) -> None:
    """A restarted Redis has forgotten the denylist: PostgreSQL's record still refuses the token."""
    user = await new_user(client)
    assert (await client.post("/api/v1/auth/logout", json={}, headers=user.auth)).status_code == 204
    await redis.flushdb()  # type: ignore[attr-defined]
    assert (await client.get("/api/v1/accounts", headers=user.auth)).status_code == 401
    # ...and the denylist was copied back, so Redis alone refuses it from now on.
    assert (await client.get("/api/v1/accounts", headers=user.auth)).status_code == 401
    ready = f"payments:{{u:{user.user_id}}}:denylist-ready"
    assert await redis.exists(ready) == 1  # type: ignore[attr-defined]


async def test_bad_tokens_are_401(client: httpx.AsyncClient) -> None:
    user = await new_user(client)
    claims = jwt.get_unverified_claims(user.token)
    header = {"kid": "k1", "typ": "at+jwt"}
    secret = "test-secret-" + "x" * 40
    expired = jwt.encode({**claims, "exp": int(time.time()) - 120}, secret, headers=header)
    forged = jwt.encode(claims, "another secret entirely, long enough", headers=header)
    wrong_type = jwt.encode(claims, secret, headers={"kid": "k1", "typ": "JWT"})
    wrong_audience = jwt.encode({**claims, "aud": "someone-else"}, secret, headers=header)
    unsigned = user.token.rsplit(".", 1)[0] + "."
    # The signature's first character changed: its last one carries only 4 bits that count, so
    # changing that one can leave the signature as it was.
    signed, signature = user.token.rsplit(".", 1)
    tampered = f"{signed}.{'B' if signature[0] == 'A' else 'A'}{signature[1:]}"
    for token in (
        expired,
        forged,
        wrong_type,
        wrong_audience,
        unsigned,
        "garbage",
        tampered,
    ):
        response = await client.get("/api/v1/accounts", headers=auth(token))
        assert response.status_code == 401, token
        assert response.json()["code"] == "invalid_token"
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get("/api/v1/accounts")).status_code == 401
    assert (
        await client.get("/api/v1/accounts", headers={"Authorization": f"Basic {user.token}"})
    ).status_code == 401


async def test_a_user_cannot_read_another_users_account_or_transaction(
    client: httpx.AsyncClient,
    alice: User,
    bob: User,
) -> None:
    mallory = await new_user(client, "mallory")
    sent = await send(client, alice, bob.account_number, "5.00")
    transfer_id = sent.json()["id"]
    for path in (f"/api/v1/accounts/{alice.account_number}", f"/api/v1/transactions/{transfer_id}"):
        response = await client.get(path, headers=mallory.auth)
        assert response.status_code == 404
        assert response.json()["code"] == "not_found"
    assert (
        await client.get(f"/api/v1/transactions/{transfer_id}", headers=bob.auth)
    ).status_code == 200
    assert (
        await client.get(f"/api/v1/accounts/{alice.account_number}", headers=alice.auth)
    ).status_code == 200


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_a_login_flood_from_one_address_leaves_room_for_everyone_else(
    settings: Settings,
) -> None:
    """40 logins at once from one address may hold only their share of the hashing queue: ten
    real logins from ten other addresses, sent in the middle of the flood, all get in."""
    fair = settings.model_copy(update={"password_hash_queue_max": 16,
                                       "password_hash_per_client_max": 2,
                                       "argon2_time_cost": 2, "argon2_memory_cost_kib": 8192})  # fmt: skip
    app = create_app(fair)
    async with LifespanManager(app):

        def client_at(address: str) -> httpx.AsyncClient:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            return httpx.AsyncClient(transport=transport, base_url="http://testserver")

        async with client_at("10.7.0.1") as setup:
            users = [await new_user(setup, f"real{i}") for i in range(10)]
        flooders = [client_at("10.6.6.6") for _ in range(40)]
        real = [client_at(f"10.7.1.{i}") for i in range(10)]
        flood = [c.post("/api/v1/auth/login", json={"email": users[0].email, "password": "guess"})
                 for c in flooders]  # fmt: skip
        logins = [c.post("/api/v1/auth/login", json={"email": u.email, "password": PASSWORD})
                  for c, u in zip(real, users, strict=True)]  # fmt: skip
        answers = await asyncio.gather(*flood[:20], *logins, *flood[20:])
        for http in flooders + real:
            await http.aclose()
    real_codes = [a.status_code for a in answers[20:30]]
    flood_codes = [a.status_code for a in answers[:20] + answers[30:]]
    assert real_codes == [200] * 10
    assert flood_codes.count(503) >= 30  # the flood got its share and no more
    assert set(flood_codes) <= {401, 503}


async def test_registration_mints_nothing_in_production(
    settings: Settings, db: asyncpg.Pool
) -> None:
    production = settings.model_copy(update={"env": "production"})
    async with serving(production) as http:
        registered = await http.post("/api/v1/auth/register", json={
            "email": "prod@example.com", "password": "a long password", "full_name": "P"})  # fmt: skip
    assert registered.status_code == 201
    assert registered.json()["account"]["balance"] == "0.00"
    assert await db.fetchval("SELECT count(*) FROM transfer") == 0
