"""What operators see: metrics by route template, the ledger check, and logs without secrets."""

from __future__ import annotations

import dataclasses

import asyncpg
import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

from payments.platform.housekeeping import check_ledger
from tests.api.users import PASSWORD, User, log_in, new_user, send


async def samples(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def test_metrics_count_requests_by_route_template_and_outcome(
    client: httpx.AsyncClient,
    alice: User,
    bob: User,
) -> None:
    before = await samples(client)
    sent = await send(client, alice, bob.account_number, "12.34", key="m1")
    await send(client, alice, bob.account_number, "12.34", key="m1")  # replay, from Redis
    await send(client, alice, bob.account_number, "5000.00")  # insufficient funds
    await client.get(f"/api/v1/transactions/{sent.json()['id']}", headers=alice.auth)
    await client.get("/api/v1/transactions/999999", headers=alice.auth)
    after = await samples(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert grew("payments_transfers_total", outcome="created") == 1
    assert grew("payments_transfers_total", outcome="insufficient_funds") == 1
    assert grew("payments_amount_moved_minor_total", currency="USD") == 1234
    assert grew("payments_idempotency_outcomes_total", outcome="replay") == 1
    # The replay passes the transfer tier too (uncharged, but not refused).
    assert grew("payments_rate_limit_decisions_total", tier="transfer", decision="allowed") == 3
    assert grew("payments_rate_limit_decisions_total", tier="global", decision="allowed") == 5
    post = {"method": "POST", "route": "/api/v1/transactions"}
    assert grew("payments_http_requests_total", **post, status_class="2xx") == 2
    assert grew("payments_http_requests_total", **post, status_class="4xx") == 1
    by_id = {"method": "GET", "route": "/api/v1/transactions/{id}"}
    assert grew("payments_http_requests_total", **by_id, status_class="2xx") == 1
    assert grew("payments_http_requests_total", **by_id, status_class="4xx") == 1
    assert grew("payments_http_request_duration_seconds_count", **post) == 3
    routes = {
        dict(labels).get("route")
        for name, labels in after
        if name == "payments_http_requests_total"
    }
    assert not any(
        route and any(ch.isdigit() for ch in route.replace("/api/v1", "")) for route in routes
    )
    assert grew("payments_ledger_invariant_violations_total") == 0


async def test_the_ledger_check_finds_a_broken_book(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    assert await check_ledger(db) == 0
    await db.execute("UPDATE account SET balance_minor = balance_minor + 1 WHERE account_number = $1",
                     alice.account_number)  # fmt: skip
    assert await check_ledger(db) == 1
    after = await samples(client)
    assert value(after, "payments_ledger_invariant_violations_total") >= 1
    await db.execute("UPDATE account SET balance_minor = balance_minor - 1 WHERE account_number = $1",
                     alice.account_number)  # fmt: skip


async def test_no_secret_reaches_a_log_line(client: httpx.AsyncClient) -> None:
    """Every line, with the context variables bound to it, through sign-in, transfers, refresh
    tokens reused, logout and an API key made, used, refused, revoked and refused again."""
    secret_password = "s3cret-Passw0rd-for-logs"
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        registered = await client.post("/api/v1/auth/register", json={
            "email": "logs@example.com", "password": secret_password, "full_name": "Log Test"})  # fmt: skip
        assert registered.status_code == 201
        user = await log_in(client, "logs@example.com", secret_password)
        bob = await new_user(client, "bob")
        await send(client, user, bob.account_number, "1.00", key="logged-key")
        created = (await client.post("/api/v1/api-keys", json={"name": "logs"},
                                     headers=user.auth)).json()  # fmt: skip
        api_key = created["key"]
        keyed = dataclasses.replace(user, token=api_key)
        assert (await client.get("/api/v1/accounts", headers=keyed.auth)).status_code == 200
        assert (await send(client, keyed, bob.account_number, "1.00")).status_code == 201
        assert (await client.get("/api/v1/api-keys", headers=keyed.auth)).status_code == 401
        await client.delete(f"/api/v1/api-keys/{created['id']}", headers=user.auth)
        assert (await client.get("/api/v1/accounts", headers=keyed.auth)).status_code == 401
        refreshed = (
            await client.post("/api/v1/auth/refresh", json={"refresh_token": user.refresh_token})
        ).json()
        await client.post(
            "/api/v1/auth/refresh", json={"refresh_token": user.refresh_token}
        )  # reuse
        await client.post("/api/v1/auth/logout", json={"refresh_token": refreshed["refresh_token"]},
                          headers={"Authorization": f"Bearer {refreshed['access_token']}"})  # fmt: skip
        await client.post(
            "/api/v1/auth/login",
            json={"email": "logs@example.com", "password": "wrong-" + PASSWORD},
        )
    text = "\n".join(repr(entry) for entry in captured)
    finished = [entry for entry in captured if entry["event"] == "request_finished"]
    assert len(finished) >= 14
    assert {
        entry["principal_id"] for entry in finished if entry["route"] == "/api/v1/accounts"
    } == {user.user_id}  # the key's owner, never the key
    assert {entry["route"] for entry in finished} >= {"/api/v1/auth/login", "/api/v1/transactions"}
    for secret in (secret_password, PASSWORD, user.token, user.refresh_token, refreshed["access_token"],
                   refreshed["refresh_token"], user.token.split(".")[2], "Bearer ", api_key,
                   api_key[11:19]):  # fmt: skip
        assert secret not in text  # api_key[11:19]: the key past the prefix a list shows


async def test_the_contract_and_its_docs_are_served_offline(client: httpx.AsyncClient) -> None:
    document = await client.get("/openapi.yaml")
    assert document.status_code == 200
    assert document.text.startswith("openapi: 3.0.3")
    page = await client.get("/docs")
    assert page.status_code == 200
    assert 'url: "/openapi.yaml"' in page.text
    assert "http" not in page.text.split("<body>", 1)[1]  # every asset from this service
    for asset in ("swagger-ui.css", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js"):
        served = await client.get(f"/docs/assets/{asset}")
        assert served.status_code == 200
        assert len(served.content) > 1000


async def test_the_request_id_is_echoed_or_made(client: httpx.AsyncClient) -> None:
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as captured:
        mine = await client.get("/api/v1/health", headers={"X-Request-ID": "trace-42.a:b"})
        odd = await client.get("/api/v1/health", headers={"X-Request-ID": "no spaces allowed"})
        none = await client.get("/api/v1/nothing")
    assert mine.headers["x-request-id"] == "trace-42.a:b"
    assert len(odd.headers["x-request-id"]) == 32
    assert odd.headers["x-request-id"] != none.headers["x-request-id"]
    logged = [entry["request_id"] for entry in captured if entry["event"] == "request_finished"]
    assert logged == [
        mine.headers["x-request-id"],
        odd.headers["x-request-id"],
        none.headers["x-request-id"],
    ]
