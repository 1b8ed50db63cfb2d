"""Webhooks: endpoints and their secrets, the outbox (an event commits with its change, or not at
all), signed deliveries with retries and a delivery log, redelivery, and the address guard."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis

from payments.payroll.jobs import PayrollJob
from payments.platform.db import Q, create_pool
from payments.settings import Settings
from payments.webhooks.jobs import WebhookJob, retry_delay_s
from payments.webhooks.sealing import Sealer
from payments.worker import Worker
from tests.api.conftest import serving
from tests.api.receiver import Receiver, signature_is_valid
from tests.api.test_fx import open_account, quote_id
from tests.api.test_payments import running_worker
from tests.api.test_payroll import finished, open_payees, submit
from tests.api.users import User, new_user, send

API = "/api/v1/webhooks"
ALL_EVENTS = ["transaction.created", "payment.succeeded", "payment.failed"]


async def add_endpoint(
    client: httpx.AsyncClient, user: User, url: str, events: list[str] | None = None
) -> dict[str, Any]:
    response = await client.post(
        f"{API}/endpoints", json={"url": url, "events": events or ALL_EVENTS}, headers=user.auth
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


@asynccontextmanager
async def receiving(
    answer: Callable[[int], tuple[int, float]] | None = None,
) -> AsyncIterator[Receiver]:
    receiver = await (Receiver(answer) if answer else Receiver()).start()
    try:
        yield receiver
    finally:
        await receiver.stop()


@asynccontextmanager
async def delivering(settings: Settings, **overrides: Any) -> AsyncIterator[WebhookJob]:
    """A worker process's webhooks job, in this process: quick polls, tiny backoff and batch waits."""
    quick = settings.model_copy(update={"worker_poll_interval_s": 0.05, "webhook_retry_base_s": 0.05,
                                        "webhook_batch_wait_s": 0.01, **overrides})  # fmt: skip
    assert quick.database_url is not None
    pool = await create_pool(quick, quick.database_url, size_max=4)
    job = WebhookJob(quick)
    worker = Worker(quick, pool, [job])
    running = asyncio.create_task(worker.run())
    try:
        yield job
    finally:
        worker.stopping.set()
        assert await running
        await job.stop(pool, 1.0)
        await pool.close()


async def eventually(check: Callable[[], Any], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def delivery_states(db: asyncpg.Pool) -> list[str]:
    return [
        row["state"] for row in await db.fetch("SELECT state FROM webhook_delivery ORDER BY id")
    ]


# Endpoints


async def test_an_endpoint_shows_its_secret_once_and_keeps_it_sealed(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, settings: Settings
) -> None:
    made = await add_endpoint(client, alice, "https://example.com/hooks", ["transaction.created"])
    assert set(made) == {"id", "url", "events", "secret", "created_at"}
    assert made["secret"].startswith("whsec_")
    assert len(made["secret"]) >= 6 + 43  # 32 random bytes, url-safe base64
    assert made["events"] == ["transaction.created"]
    sealed = await db.fetchval(
        "SELECT secret_sealed FROM webhook_endpoint WHERE id = $1", made["id"]
    )
    assert made["secret"] not in sealed
    assert Sealer(settings).open(sealed) == made["secret"]

    listed = await client.get(f"{API}/endpoints", headers=alice.auth)
    assert listed.status_code == 200
    assert listed.json() == {"data": [{k: v for k, v in made.items() if k != "secret"}],
                             "next_cursor": None}  # fmt: skip
    assert "whsec_" not in listed.text
    audit = await db.fetchval(
        "SELECT count(*) FROM audit_log WHERE action = 'webhook_endpoint.created'"
    )
    assert audit == 1


async def test_only_the_owner_sees_or_deletes_an_endpoint(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    made = await add_endpoint(client, alice, "https://example.com/a")
    assert (await client.get(f"{API}/endpoints", headers=bob.auth)).json()["data"] == []
    assert (
        await client.delete(f"{API}/endpoints/{made['id']}", headers=bob.auth)
    ).status_code == 404
    assert (
        await client.get(f"{API}/endpoints/{made['id']}/deliveries", headers=bob.auth)
    ).status_code == 404
    assert (
        await client.delete(f"{API}/endpoints/{made['id']}", headers=alice.auth)
    ).status_code == 204
    assert (
        await client.delete(f"{API}/endpoints/{made['id']}", headers=alice.auth)
    ).status_code == 404
    assert (await client.get(f"{API}/endpoints", headers=alice.auth)).json()["data"] == []
    assert (await client.delete(f"{API}/endpoints/x1", headers=alice.auth)).status_code == 404


@pytest.mark.parametrize(
    "body",
    [
        {"url": "ftp://example.com/", "events": ["transaction.created"]},
        {"url": "https://user:pw@example.com/", "events": ["transaction.created"]},
        {"url": "/relative", "events": ["transaction.created"]},
        {"url": "https://example.com/", "events": []},
        {"url": "https://example.com/", "events": ["transaction.deleted"]},
        {"url": "https://example.com/"},
        {"url": 5, "events": ["transaction.created"]},
    ],
)
async def test_a_bad_endpoint_is_a_validation_error_and_makes_nothing(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, body: dict[str, Any]
) -> None:
    response = await client.post(f"{API}/endpoints", json=body, headers=alice.auth)
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "validation_error"
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoint") == 0


async def test_an_api_key_cannot_make_an_endpoint(client: httpx.AsyncClient, alice: User) -> None:
    made = await client.post("/api/v1/api-keys", json={"name": "shop"}, headers=alice.auth)
    key_auth = {"Authorization": f"Bearer {made.json()['key']}"}
    body = {"url": "https://example.com/", "events": ["transaction.created"]}
    response = await client.post(f"{API}/endpoints", json=body, headers=key_auth)
    assert response.status_code == 401
    assert (await client.get(f"{API}/endpoints", headers=key_auth)).status_code == 200


PRIVATE_URLS = [
    "http://127.0.0.1/",
    "http://10.0.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://localhost:8080/",  # a name that resolves to loopback
    "http://[::1]/",
    "http://[::ffff:10.0.0.1]/",  # IPv4-mapped
    "http://100.64.0.1/",  # shared address space
]


@pytest.mark.parametrize("url", PRIVATE_URLS)
async def test_production_refuses_urls_that_resolve_to_private_addresses(
    settings: Settings, db: asyncpg.Pool, url: str
) -> None:
    async with serving(settings.model_copy(update={"env": "production"})) as http:
        user = await new_user(http, "guarded")
        response = await http.post(f"{API}/endpoints", headers=user.auth,
                                   json={"url": url, "events": ["transaction.created"]})  # fmt: skip
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["field"] == "url"
    assert await db.fetchval("SELECT count(*) FROM webhook_endpoint") == 0


async def test_development_accepts_a_local_receiver(client: httpx.AsyncClient, alice: User) -> None:
    await add_endpoint(client, alice, "http://127.0.0.1:9/hooks")


# The outbox


async def test_a_transfer_emits_one_event_to_each_endpoint_of_both_parties(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    await add_endpoint(client, alice, "https://example.com/a1")
    await add_endpoint(
        client, alice, "https://example.com/a2", ["payment.succeeded"]
    )  # not this one
    await add_endpoint(client, bob, "https://example.com/b1")
    sent = await send(client, alice, bob.account_number, "12.50")
    assert sent.status_code == 201
    events = await db.fetch("SELECT id, type, payload FROM webhook_event")
    assert [e["type"] for e in events] == ["transaction.created"]
    assert (
        await db.fetchval(
            "SELECT count(*) FROM webhook_delivery WHERE event_id = $1", events[0]["id"]
        )
        == 2
    )
    import json

    payload = json.loads(events[0]["payload"])
    assert set(payload) == {"id", "type", "created_at", "data"}
    assert payload["id"].startswith("evt_")
    assert payload["data"]["object"] == sent.json()


async def test_no_endpoint_no_event(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    assert (await send(client, alice, bob.account_number, "1.00")).status_code == 201
    assert await db.fetchval("SELECT count(*) FROM webhook_event") == 0


async def test_a_refused_transfer_emits_nothing(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    await add_endpoint(client, alice, "https://example.com/a")
    refused = await send(client, alice, bob.account_number, "5000.00")
    assert refused.status_code == 422
    assert refused.json()["code"] == "insufficient_funds"
    assert await db.fetchval("SELECT count(*) FROM webhook_event") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_delivery") == 0


async def test_a_transfer_that_rolls_back_emits_nothing(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    await add_endpoint(client, alice, "https://example.com/a")
    async with db.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        row = await conn.fetchrow(Q.transfer_funds, alice.user_id, "k-rolled-back", b"f" * 32, 3600,
                                  None, bob.account_number, "3.00", None, None)  # fmt: skip
        assert row["status"] == 201
        assert await conn.fetchval("SELECT count(*) FROM webhook_event") == 1  # inside, it is there
        await transaction.rollback()
    assert await db.fetchval("SELECT count(*) FROM webhook_event") == 0
    assert await db.fetchval("SELECT count(*) FROM webhook_delivery") == 0


async def test_a_reversal_emits_transaction_created(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    sent = await send(client, alice, bob.account_number, "2.00")
    await add_endpoint(client, bob, "https://example.com/b")
    headers = {**bob.auth, "Idempotency-Key": uuid.uuid4().hex}
    reversed_ = await client.post(
        f"/api/v1/transactions/{sent.json()['id']}/reverse", json={}, headers=headers
    )
    assert reversed_.status_code == 201
    rows = await db.fetch("SELECT type, payload FROM webhook_event")
    assert [row["type"] for row in rows] == ["transaction.created"]
    assert reversed_.json()["id"] == int(
        rows[0]["payload"].split('"object":{"id":')[1].split(",")[0]
    )


async def test_a_settled_payment_emits_payment_succeeded_or_failed(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    await add_endpoint(
        client, bob, "https://example.com/b", ["payment.succeeded", "payment.failed"]
    )
    for amount in ("4.00", "999.00"):  # the second is more than alice holds by then
        headers = {**alice.auth, "Idempotency-Key": uuid.uuid4().hex}
        accepted = await client.post("/api/v1/payments", headers=headers,
                                     json={"to_account_number": bob.account_number, "amount": amount})  # fmt: skip
        assert accepted.status_code == 202
    await send(client, alice, bob.account_number, "900.00")
    claimed = await db.fetch(Q.claim_payments, "test-worker", 10, 30, 5)
    await db.fetch(Q.settle_payments, "test-worker", [row["id"] for row in claimed])
    rows = await db.fetch("SELECT type, payload FROM webhook_event ORDER BY id")
    assert [row["type"] for row in rows] == ["payment.succeeded", "payment.failed"]
    assert '"failure_reason":"insufficient_funds"' in rows[1]["payload"]


# Delivery


async def test_each_event_reaches_each_endpoint_once_signed_with_its_secret(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    async with receiving() as receiver:
        a1 = await add_endpoint(client, alice, f"{receiver.url}/a1")
        a2 = await add_endpoint(client, alice, f"{receiver.url}/a2")
        b1 = await add_endpoint(client, bob, f"{receiver.url}/b1")
        secrets = {"/a1": a1["secret"], "/a2": a2["secret"], "/b1": b1["secret"]}
        async with delivering(settings):
            for amount in ("1.00", "2.00"):
                assert (await send(client, alice, bob.account_number, amount)).status_code == 201
            await eventually(lambda: asyncio.sleep(0, len(receiver.received) >= 6))
            await eventually(lambda: _all_delivered(db))
            await asyncio.sleep(0.3)  # nothing more arrives
        assert len(receiver.received) == 6
        by_path: dict[str, list[str]] = {}
        for received in receiver.received:
            assert signature_is_valid(secrets[received.path], received)
            assert not signature_is_valid(
                secrets["/b1" if received.path != "/b1" else "/a1"], received
            )
            assert received.event["id"] == received.event_id
            assert received.event["type"] == "transaction.created"
            by_path.setdefault(received.path, []).append(received.event_id)
        assert {path: len(set(ids)) for path, ids in by_path.items()} == {
            "/a1": 2,
            "/a2": 2,
            "/b1": 2,
        }
        assert set(by_path["/a1"]) == set(by_path["/b1"])  # the same two events, to both parties


async def _all_delivered(db: asyncpg.Pool) -> bool:
    states = await delivery_states(db)
    return bool(states) and set(states) == {"delivered"}


async def test_a_receiver_that_fails_twice_gets_the_same_event_three_times(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    async with receiving(lambda n: (500 if n <= 2 else 200, 0.0)) as receiver:
        endpoint = await add_endpoint(client, alice, f"{receiver.url}/flaky")
        async with delivering(settings, webhook_retry_base_s=0.2):
            await send(client, alice, bob.account_number, "1.00")
            await eventually(lambda: _all_delivered(db))
        assert len(receiver.received) == 3
        assert len({r.event_id for r in receiver.received}) == 1
        assert len({r.body for r in receiver.received}) == 1  # byte for byte
        # Full jitter: the n-th retry waits a random time up to 0.2 * 2^(n-1) s; each gap stays
        # under its own bound (plus the 50 ms poll and two 10 ms batch waits), and the bound doubles.
        gaps = [b.at - a.at for a, b in zip(receiver.received, receiver.received[1:], strict=False)]
        assert gaps[0] < 0.2 + 0.15
        assert gaps[1] < 0.4 + 0.15
    log = await client.get(f"{API}/endpoints/{endpoint['id']}/deliveries", headers=alice.auth)
    attempts = log.json()["data"]
    assert [(a["attempt"], a["outcome"], a["status_code"]) for a in attempts] == [
        (3, "delivered", 200), (2, "retrying", 500), (1, "retrying", 500)]  # fmt: skip
    assert attempts[1]["error"] == "answered 500"
    assert attempts[1]["response_excerpt"] == '{"ok":true}'
    scheduled = await db.fetch(
        "SELECT extract(epoch FROM next_attempt_at - attempted_at)::float8 AS wait_s"
        " FROM webhook_attempt WHERE outcome = 'retrying' ORDER BY id")  # fmt: skip
    assert 0 <= scheduled[0]["wait_s"] <= 0.2
    assert 0 <= scheduled[1]["wait_s"] <= 0.4
    paged = await client.get(
        f"{API}/endpoints/{endpoint['id']}/deliveries?limit=2", headers=alice.auth
    )
    cursor = paged.json()["next_cursor"]
    rest = await client.get(f"{API}/endpoints/{endpoint['id']}/deliveries?limit=2&cursor={cursor}",
                            headers=alice.auth)  # fmt: skip
    assert [a["attempt"] for a in rest.json()["data"]] == [1]
    assert rest.json()["next_cursor"] is None


def test_the_backoff_doubles_up_to_the_cap() -> None:
    bounds = [retry_delay_s(n, base_s=1.0, cap_s=60.0, draw=0.999999) for n in range(1, 9)]
    assert [round(b) for b in bounds] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert retry_delay_s(3, base_s=1.0, cap_s=60.0, draw=0.0) == 0.0  # full jitter: from zero


async def test_a_receiver_that_never_answers_ends_failed_and_redelivery_sends_again(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    answers = {"hang": True}
    async with receiving(lambda n: (200, 30.0 if answers["hang"] else 0.0)) as receiver:
        endpoint = await add_endpoint(client, alice, f"{receiver.url}/dead")
        async with delivering(settings, webhook_timeout_s=0.2, webhook_max_attempts=3):
            await send(client, alice, bob.account_number, "1.00")
            await eventually(lambda: _states_are(db, ["failed"]))
            assert len(receiver.received) == 3
            log = await client.get(
                f"{API}/endpoints/{endpoint['id']}/deliveries", headers=alice.auth
            )
            outcomes = [(a["outcome"], a["status_code"], a["error"]) for a in log.json()["data"]]
            assert outcomes == [("failed", None, "no answer within 0.2 s")] + [
                ("retrying", None, "no answer within 0.2 s")] * 2  # fmt: skip
            event_id = receiver.received[0].event_id

            answers["hang"] = False
            again = await client.post(f"{API}/events/{event_id}/redeliver", headers=bob.auth)
            assert again.status_code == 404  # not bob's endpoint
            again = await client.post(f"{API}/events/{event_id}/redeliver", headers=alice.auth)
            assert again.status_code == 202
            assert again.json() == {"id": event_id, "endpoint_ids": [endpoint["id"]]}
            await eventually(lambda: _states_are(db, ["delivered"]))
        assert [r.event_id for r in receiver.received] == [event_id] * 4
    unknown = await client.post(f"{API}/events/evt_{'0' * 32}/redeliver", headers=alice.auth)
    assert unknown.status_code == 404


async def _states_are(db: asyncpg.Pool, states: list[str]) -> bool:
    return await delivery_states(db) == states


async def test_workers_claiming_at_once_never_take_the_same_delivery(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """Three workers claim 5 at a time, at once, until nothing is due: every delivery is claimed
    once, by one of them, its attempt counted once."""
    await add_endpoint(client, alice, "http://127.0.0.1:9/a")
    await add_endpoint(client, bob, "http://127.0.0.1:9/b")
    sent = await asyncio.gather(
        *(send(client, alice, bob.account_number, "0.01") for _ in range(40))
    )
    assert {response.status_code for response in sent} == {201}

    async def claims(worker: str) -> list[int]:
        taken: list[int] = []
        async with db.acquire() as conn:
            while rows := await conn.fetch(Q.claim_webhook_deliveries, worker, 5, 60, 8, []):
                taken += [row["id"] for row in rows]
        return taken

    taken = await asyncio.gather(*(claims(f"w{n}") for n in range(3)))
    every = [delivery_id for ids in taken for delivery_id in ids]
    assert len(every) == len(set(every)) == 80
    rows = await db.fetch("SELECT lease_owner, attempts, count(*) AS n FROM webhook_delivery"
                          " GROUP BY 1, 2 ORDER BY 1")  # fmt: skip
    assert [(row["lease_owner"], row["attempts"], row["n"]) for row in rows] == [
        (f"w{n}", 1, len(ids)) for n, ids in enumerate(taken) if ids
    ]


async def test_a_slow_receiver_holds_up_no_other(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    async with receiving(lambda n: (200, 2.0)) as slow, receiving() as fast:
        for _ in range(3):
            await add_endpoint(client, alice, f"{slow.url}/slow")
        await add_endpoint(client, bob, f"{fast.url}/fast")
        async with delivering(settings):
            await send(client, alice, bob.account_number, "1.00")
            await slow.arrived.wait()
            started = time.monotonic()
            await send(client, alice, bob.account_number, "1.00")
            await eventually(lambda: asyncio.sleep(0, len(fast.received) == 2), timeout_s=1.5)
            assert time.monotonic() - started < 1.0  # while three answers are 2 s away
            transfer = await send(client, alice, bob.account_number, "1.00")
            assert transfer.status_code == 201


async def test_production_refuses_a_private_address_at_delivery_too(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    """An endpoint that got past the check (written in the database directly, or a name whose
    address changed): the guarded worker does not connect to it."""
    async with receiving() as receiver:
        sealed = Sealer(settings).seal("whsec_" + "x" * 43)
        port = receiver.url.rsplit(":", 1)[1]
        for url in (f"http://127.0.0.1:{port}/", f"http://localhost:{port}/"):
            await db.execute(
                "INSERT INTO webhook_endpoint (user_id, url, events, secret_sealed)"
                " VALUES ($1, $2, ARRAY['transaction.created'], $3)", alice.user_id, url, sealed)  # fmt: skip
        async with delivering(settings, env="production", webhook_max_attempts=2):
            await send(client, alice, bob.account_number, "1.00")
            await eventually(lambda: _states_are(db, ["failed", "failed"]))
        assert receiver.received == []
    errors = await db.fetch("SELECT DISTINCT error FROM webhook_attempt")
    assert [row["error"] for row in errors] == [
        "refused: the URL must not resolve to a loopback, private, link-local or other non-public address"]  # fmt: skip


async def test_deleting_an_endpoint_fails_what_it_still_had_to_send(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    endpoint = await add_endpoint(client, alice, "https://example.com/a")
    await send(client, alice, bob.account_number, "1.00")
    assert await delivery_states(db) == ["pending"]
    assert (
        await client.delete(f"{API}/endpoints/{endpoint['id']}", headers=alice.auth)
    ).status_code == 204
    assert await delivery_states(db) == ["failed"]
    stats = await db.fetchrow(Q.webhook_queue_stats)
    assert (stats["pending"], stats["failed"]) == (0, 1)


async def test_a_slow_hosts_backlog_leaves_places_for_other_hosts(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings
) -> None:
    """With 4 places and a share of 2 per host, 10 deliveries due to a receiver that takes 2 s
    each never take the 4 places: a delivery to another host goes out at once. (A claim reads
    the head of the queue, 8 x webhook_claim_max rows: the 10 fit in it.)"""
    async with receiving(lambda n: (200, 2.0)) as slow, receiving() as fast:
        await add_endpoint(client, alice, f"{slow.url}/slow")
        for _ in range(10):
            await send(client, alice, bob.account_number, "1.00")
        await add_endpoint(client, bob, f"{fast.url}/fast")
        limits = {"webhook_concurrency_max": 4, "webhook_host_in_flight_max": 2,
                  "webhook_claim_max": 2, "webhook_claim_min": 1}  # fmt: skip
        async with delivering(settings, **limits):
            await eventually(lambda: asyncio.sleep(0, len(slow.received) == 2))
            started = time.monotonic()
            await send(client, alice, bob.account_number, "1.00")
            await eventually(lambda: asyncio.sleep(0, len(fast.received) == 1), timeout_s=1.5)
            assert time.monotonic() - started < 1.0
            assert len(slow.received) == 2  # its share, no more


async def test_an_fx_transfer_emits_transaction_created_to_both_parties(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    bob_eur = await open_account(client, bob, "EUR")
    await add_endpoint(client, alice, "https://example.com/a")
    await add_endpoint(client, bob, "https://example.com/b")
    quote = await quote_id(client, alice, "USD", "EUR", "10.00")
    sent = await send(client, alice, bob_eur, None, fx_quote_id=quote)
    assert sent.status_code == 201, sent.text
    rows = await db.fetch("SELECT id, type, payload FROM webhook_event")
    assert [row["type"] for row in rows] == ["transaction.created"]
    assert json.loads(rows[0]["payload"])["data"]["object"]["id"] == sent.json()["id"]
    assert await db.fetchval("SELECT count(*) FROM webhook_delivery WHERE event_id = $1",
                             rows[0]["id"]) == 2  # fmt: skip


async def test_a_finished_payroll_job_emits_payroll_job_completed_once(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, redis: Redis, settings: Settings
) -> None:
    await add_endpoint(client, alice, "https://example.com/a", ["payroll_job.completed"])
    payees = await open_payees(db, 3)
    submitted = await submit(
        client, alice, [{"to_account_number": n, "amount": "1.00"} for n in payees]
    )
    assert submitted.status_code == 202, submitted.text
    async with running_worker(settings, db, redis, PayrollJob, payroll_batch_size=2):
        job = await finished(client, alice, submitted.json()["id"])
    rows = await db.fetch("SELECT type, payload FROM webhook_event")
    assert [row["type"] for row in rows] == ["payroll_job.completed"]
    emitted = json.loads(rows[0]["payload"])["data"]["object"]
    assert (emitted["id"], emitted["status"], emitted["progress"]) == (
        job["id"],
        "COMPLETED",
        "3/3",
    )


async def test_the_audit_row_of_an_endpoint_keeps_no_secret_of_its_url(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    made = await add_endpoint(client, alice, "https://hooks.example.com/in?token=t0ken-s3cret")
    details = await db.fetchval(
        "SELECT details::text FROM audit_log WHERE action = 'webhook_endpoint.created'"
    )
    assert details is not None and "t0ken-s3cret" not in details
    assert '"url": "https://hooks.example.com/in"' in details
    assert made["url"] == "https://hooks.example.com/in?token=t0ken-s3cret"  # the owner's own
