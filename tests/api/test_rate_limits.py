"""The three tiers, their IETF headers, and what a replay is charged."""

from __future__ import annotations

import re

import httpx
from redis.asyncio import Redis

from payments.platform.settings import RateLimit
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.test_idempotency import plant_marker
from tests.api.users import User, new_user, send

POLICY = re.compile(r'^"(\w+)";q=(\d+);w=(\d+)$')
STATE = re.compile(r'^"(\w+)";r=(\d+);t=(\d+)$')


def budgets(response: httpx.Response) -> dict[str, tuple[int, int, int, int]]:
    """tier -> (quota, window, remaining, reset) from RateLimit-Policy and RateLimit."""
    policies = [
        POLICY.match(part.strip()) for part in response.headers["ratelimit-policy"].split(",")
    ]
    states = [STATE.match(part.strip()) for part in response.headers["ratelimit"].split(",")]
    assert all(policies) and all(states), response.headers
    result = {}
    for policy, state in zip(policies, states, strict=True):
        assert policy is not None and state is not None
        assert policy.group(1) == state.group(1)
        result[policy.group(1)] = (
            int(policy.group(2)),
            int(policy.group(3)),
            int(state.group(2)),
            int(state.group(3)),
        )
    return result


def tight(settings: Settings, **limits: tuple[int, int]) -> Settings:
    return settings.model_copy(update={
        f"rate_limit_{tier}": RateLimit(name=tier, count=count, period_s=period)
        for tier, (count, period) in limits.items()
    })  # fmt: skip


async def test_the_global_tier_counts_down_then_refuses(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await new_user(client)
    async with serving(tight(settings, **{"global": (5, 60)})) as http:
        seen = []
        for _ in range(5):
            response = await http.get("/api/v1/accounts", headers=user.auth)
            assert response.status_code == 200
            seen.append(budgets(response)["global"])
        assert [remaining for _, _, remaining, _ in seen] == [4, 3, 2, 1, 0]
        assert all((quota, window) == (5, 60) for quota, window, _, _ in seen)
        refused = await http.get("/api/v1/accounts", headers=user.auth)
        assert refused.status_code == 429
        assert refused.json()["code"] == "rate_limited"
        assert refused.json()["tier"] == "global"
        retry_after = int(refused.headers["retry-after"])
        assert 1 <= retry_after <= 12  # one request frees every 60 / 5 = 12 s
        assert budgets(refused)["global"][2:] == (0, retry_after)


async def test_health_and_ready_are_not_limited(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with serving(tight(settings, **{"global": (1, 60)})) as http:
        for _ in range(3):
            response = await http.get("/api/v1/health")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers


async def test_the_auth_tier_is_per_client_address(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    user = await new_user(client)
    body = {"email": user.email, "password": "wrong password"}
    limited = tight(settings, auth=(3, 60))
    async with serving(limited, "10.0.0.1") as http:
        codes = [(await http.post("/api/v1/auth/login", json=body)).status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
        refused = await http.post("/api/v1/auth/login", json=body)
        assert set(budgets(refused)) == {"global", "auth"}
        assert budgets(refused)["auth"][2] == 0
    async with serving(limited, "10.0.0.2") as http:
        assert (await http.post("/api/v1/auth/login", json=body)).status_code == 401


async def test_anonymous_requests_count_against_the_global_tier_per_address(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    async with serving(tight(settings, **{"global": (2, 60)}), "10.0.0.3") as http:
        body = {"email": "nobody@example.com", "password": "x"}
        codes = [(await http.post("/api/v1/auth/login", json=body)).status_code for _ in range(3)]
        assert codes == [401, 401, 429]


async def test_the_transfer_tier_spares_replays(
    client: httpx.AsyncClient, alice: User, bob: User, settings: Settings
) -> None:
    async with serving(tight(settings, transfer=(2, 60))) as http:
        first = await send(http, alice, bob.account_number, "1.00", key="t1")
        assert budgets(first)["transfer"][2] == 1
        await send(http, alice, bob.account_number, "1.00", key="t2")
        refused = await send(http, alice, bob.account_number, "1.00", key="t3")
        assert (refused.status_code, refused.json()["tier"]) == (429, "transfer")
        # A retry of a transfer that went through is served, even with the tier spent.
        replay = await send(http, alice, bob.account_number, "1.00", key="t1")
        assert replay.status_code == 201
        assert replay.headers["idempotent-replayed"] == "true"
        assert budgets(replay)["transfer"][2] == 0
        # The refused one stored nothing: once the tier has room, the same key runs.
        reads = await http.get("/api/v1/transactions", headers=alice.auth)
        assert "transfer" not in budgets(reads)


async def test_a_401_carries_no_budget(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/accounts", headers={"Authorization": "Bearer nonsense"})
    assert response.status_code == 401
    assert "ratelimit" not in response.headers
    assert "ratelimit-policy" not in response.headers


async def test_t_is_the_seconds_until_more_quota_everywhere(
    client: httpx.AsyncClient, alice: User, bob: User, settings: Settings
) -> None:
    """draft-10's `t`: seconds until more quota becomes available. 0 while the quota is full,
    one emission interval (60 / 10 = 6 s) once a request was spent, and on a 429 the same number
    as Retry-After, never the time until the whole window is back."""
    async with serving(tight(settings, transfer=(10, 60))) as http:
        reads = await http.get("/api/v1/accounts", headers=alice.auth)
        assert "transfer" not in budgets(reads)
        states = []
        for index in range(10):
            response = await send(http, alice, bob.account_number, "1.00", key=f"t{index}")
            assert response.status_code == 201
            states.append(budgets(response)["transfer"])
        assert [remaining for *_, remaining, _ in states] == list(range(9, -1, -1))
        assert all(5 <= reset <= 6 for *_, reset in states), states
        refused = await send(http, alice, bob.account_number, "1.00", key="t10")
        assert refused.status_code == 429
        retry_after = int(refused.headers["retry-after"])
        assert budgets(refused)["transfer"][2:] == (0, retry_after)
        assert 1 <= retry_after <= 6
    async with serving(tight(settings, **{"global": (100, 900)})) as http:
        fresh = await new_user(http, "fresh")
        first = await http.get("/api/v1/accounts", headers=fresh.auth)
        assert budgets(first)["global"][2:] == (99, 9)  # 900 / 100 = 9 s until the next unit


async def test_refusals_before_the_handler_carry_the_budget(
    client: httpx.AsyncClient, alice: User, bob: User, settings: Settings, redis: Redis
) -> None:
    """Each of these was counted against the global tier: each says what is left."""
    body = {"to_account_number": bob.account_number, "amount": "1.00"}
    auth = alice.auth
    async with serving(tight(settings, **{"global": (50, 60)})) as http:
        answers = {
            "missing key": await http.post("/api/v1/transactions", json=body, headers=auth),
            "invalid key": await http.post("/api/v1/transactions", json=body,
                                           headers={**auth, "Idempotency-Key": ""}),
            "malformed": await http.post("/api/v1/transactions", content=b"{",
                                         headers={**auth, "Idempotency-Key": "m",
                                                  "Content-Type": "application/json"}),
            "too large": await http.post("/api/v1/transactions", json={**body, "d": "x" * 70_000},
                                         headers={**auth, "Idempotency-Key": "l"}),
            "not json": await http.post("/api/v1/transactions", content=b"a=1",
                                        headers={**auth, "Idempotency-Key": "n"}),
            "invalid": await http.post("/api/v1/transactions", json={"amount": "x"},
                                       headers={**auth, "Idempotency-Key": "v"}),
        }  # fmt: skip
        await send(http, alice, bob.account_number, "1.00", key="used")
        answers["reused"] = await send(http, alice, bob.account_number, "2.00", key="used")
        await plant_marker(redis, alice, "busy", body, 30_000)
        answers["in flight"] = await send(http, alice, bob.account_number, "1.00", key="busy")
    expected = {"missing key": 400, "invalid key": 400, "malformed": 400, "too large": 413,
                "not json": 415, "invalid": 422, "reused": 422, "in flight": 409}  # fmt: skip
    assert {name: r.status_code for name, r in answers.items()} == expected
    remaining = [budgets(answers[name])["global"][2] for name in expected]
    assert remaining == sorted(remaining, reverse=True)  # each one counted
    assert len(set(remaining)) == len(remaining)


async def test_login_is_limited_per_account_from_any_address(
    client: httpx.AsyncClient, settings: Settings
) -> None:
    """One password is not guessed from many addresses: the login tier follows the email."""
    user = await new_user(client)
    limited = tight(settings, login=(3, 900))
    codes = []
    for address in ("10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4"):
        async with serving(limited, address) as http:
            body = {"email": user.email.upper(), "password": "wrong password"}
            response = await http.post("/api/v1/auth/login", json=body)
            codes.append(response.status_code)
    assert codes == [401, 401, 401, 429]
    assert response.json()["tier"] == "login"
    assert budgets(response)["login"][2] == 0
    assert set(budgets(response)) == {"global", "auth", "login"}
    async with serving(limited, "10.1.0.5") as http:  # another account is not held up
        other = await new_user(http, "other")
        assert other.token
