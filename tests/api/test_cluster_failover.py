"""A Redis Cluster primary killed under load (SIGKILL), its replica promoted, the service never
restarted: every transfer happens once, the transfer limit holds within its tolerance, and Redis
serves the user's slot again afterwards. Runs in `make test-cluster`, on a cluster of its own.

The tolerance (README, "Redis Cluster"): until the replica is promoted (the node timeout, 1 s here,
then an election), the dead primary's users are served as when Redis is down: their limits other
than sign-in's are not applied and PostgreSQL answers for their idempotency keys. Their answers
carry no RateLimit header. Among the answers the limiter decided, at most the limit plus the
requests in flight when the primary died are allowed: replication is asynchronous, so the promoted
replica may lack the last counts the dead primary acknowledged."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import httpx
import pytest

from payments.platform import redis_keys
from payments.platform.settings import RateLimit
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.users import User, log_in, new_user, send
from tests.books import balance_minor, transfer_count
from tests.conftest import CLUSTERED
from tests.redis_cluster import running_cluster

pytestmark = pytest.mark.skipif(not CLUSTERED, reason="make test-cluster runs it")

LIMIT = 40  # transfers per minute
SENDERS = 6  # requests in flight at once
PACE_S = 0.1  # between one sender's requests
KILL_AFTER_S = 1.5
LOAD_S = 5.0
OPENING_MINOR = 100_000


async def test_a_primary_killed_under_load(settings: Settings, db: asyncpg.Pool) -> None:
    with running_cluster() as cluster:
        tuned = settings.model_copy(update={
            "redis_url": cluster.url, "redis_cluster": True, "idempotency_lock_ttl_s": 1,
            "rate_limit_transfer": RateLimit(name="transfer", count=LIMIT, period_s=60),
        })  # fmt: skip
        async with serving(tuned) as http:
            alice, bob = await new_user(http, "alice"), await new_user(http, "bob")
            dead = cluster.primary_for(redis_keys.user_tag(alice.user_id))
            answers: dict[str, httpx.Response] = {}

            async def sender() -> None:
                deadline = time.monotonic() + LOAD_S
                while time.monotonic() < deadline:
                    key = uuid.uuid4().hex
                    answers[key] = await settled(http, alice, bob, key)
                    await asyncio.sleep(PACE_S)

            async def killer() -> None:
                await asyncio.sleep(KILL_AFTER_S)
                cluster.kill(dead)

            await asyncio.gather(killer(), *(sender() for _ in range(SENDERS)))
            await asyncio.to_thread(cluster.promoted_after, dead)
            created = {key: r for key, r in answers.items() if r.status_code == 201}
            limited = [r for r in created.values() if "ratelimit" in r.headers]
            refused = [r for r in answers.values() if r.status_code == 429]

            # Exactly once: each key moved its money once, and sending it again moves none. A
            # key whose fast copy Redis never got (answered without it, or the copy was lost with
            # the primary) is charged again like a new request: with the limit spent, a 429.
            assert await transfer_count(db) == len(created)
            for key, first in created.items():
                again = await send(http, alice, bob.account_number, "1.00", key=key)
                if again.status_code != 429:
                    assert again.status_code == 201
                    assert again.headers["idempotent-replayed"] == "true"
                    assert again.json()["id"] == first.json()["id"]
            assert await transfer_count(db) == len(created)
            moved = 100 * len(created)
            assert await balance_minor(db, alice.account_number) == OPENING_MINOR - moved
            assert await balance_minor(db, bob.account_number) == OPENING_MINOR + moved

            # The limit held, within its tolerance; requests were refused before and after.
            assert LIMIT <= len(limited) <= LIMIT + SENDERS, (len(limited), len(created))
            assert refused and len(created) - len(limited) >= 1  # some went by without Redis
            assert (await send(http, alice, bob.account_number, "1.00")).status_code == 429

            # Redis serves alice's slot again, on the promoted replica, with no restart.
            await http.get("/api/v1/accounts", headers=alice.auth)
            cached = await http.get("/api/v1/accounts", headers=alice.auth)
            assert cached.headers["cache-status"] == "payments; hit"
            back = await send(http, bob, alice.account_number, "1.00")
            assert back.status_code == 201
            assert back.headers["ratelimit"].startswith('"global"')
            # And redis-py's cluster client (sessions, the denylist, /ready) found it too.
            assert (await log_in(http, alice.email)).user_id == alice.user_id
            assert await ready_within(http, 5.0)


async def ready_within(http: httpx.AsyncClient, seconds: float) -> bool:
    """/ready answers 200 (PostgreSQL and Redis both answer its ping) within the time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await http.get("/api/v1/ready")).status_code == 200:
            return True
        await asyncio.sleep(0.1)
    return False


async def settled(http: httpx.AsyncClient, alice: User, bob: User, key: str) -> httpx.Response:
    """The key's final answer: 201, or 429 (no money moved). An answer still in flight (409) or
    an unavailable one (503) is asked again with the same key, as a client would."""
    for _ in range(200):
        response = await send(http, alice, bob.account_number, "1.00", key=key)
        if response.status_code in (201, 429):
            return response
        assert response.status_code in (409, 503), response.text
        await asyncio.sleep(0.05)
    raise AssertionError(f"no final answer for {key}")
