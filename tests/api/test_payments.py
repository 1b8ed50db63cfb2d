"""Payments: accepted at once (202), settled by the worker exactly once, the books balanced."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from redis.asyncio import Redis
from starlette.applications import Starlette

from payments.payments.jobs import PaymentsJob
from payments.payroll.jobs import PayrollJob
from payments.platform.db import Q
from payments.settings import Settings
from payments.worker import Worker
from tests.api.conftest import sample_queue
from tests.api.users import User, new_user
from tests.books import balance_minor

PAYMENTS = "/api/v1/payments"
Pay = Callable[..., Awaitable[httpx.Response]]


async def pay(
    client: httpx.AsyncClient, payer: User, recipient: str, amount: object, *,
    key: str | None = None, **fields: object,
) -> httpx.Response:  # fmt: skip
    headers = {**payer.auth, "Idempotency-Key": key or uuid.uuid4().hex}
    body = {"to_account_number": recipient, "amount": amount, **fields}
    return await client.post(PAYMENTS, json=body, headers=headers)


@asynccontextmanager
async def running_worker(
    settings: Settings, db: asyncpg.Pool, redis: Redis,
    job: type[PaymentsJob | PayrollJob] = PaymentsJob, **overrides: object,
) -> AsyncIterator[Worker]:  # fmt: skip
    """A worker with one job (the payments job unless told), in this process, on the tests'
    pool, for as long as the block runs; it must stop cleanly."""
    tuned = settings.model_copy(update={"worker_poll_interval_s": 0.05, **overrides})
    worker = Worker(tuned, db, [job(tuned, redis)])
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.stopping.set()
        assert await task


async def settled(db: asyncpg.Pool, count: int, timeout_s: float = 20.0) -> None:
    """Wait until `count` payments are final."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        final = await db.fetchval(
            "SELECT count(*) FROM payment WHERE status IN ('SUCCEEDED', 'FAILED')"
        )
        if final >= count:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"only {final} of {count} payments settled")


async def test_a_payment_is_accepted_at_once_and_settled_by_the_worker(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis,
) -> None:  # fmt: skip
    accepted = await pay(client, alice, bob.account_number, "25.00", key="p1", description="rent")
    assert accepted.status_code == 202, accepted.text
    body = accepted.json()
    assert accepted.headers["location"] == body["poll_url"] == f"{PAYMENTS}/{body['id']}"
    assert (body["status"], body["amount"], body["currency"]) == ("PENDING", "25.00", "USD")
    assert (body["transaction_id"], body["failure_reason"]) == (None, None)
    assert await balance_minor(db, bob.account_number) == 100000  # nothing moves at acceptance
    # The 202's body is rendered without reading the row again: the same bytes as a read of it.
    pending = await client.get(body["poll_url"], headers=alice.auth)
    assert pending.content == accepted.content
    replay = await pay(client, alice, bob.account_number, "25.00", key="p1", description="rent")
    assert (replay.status_code, replay.headers["idempotent-replayed"]) == (202, "true")
    assert replay.headers["location"] == accepted.headers["location"]
    assert replay.content == accepted.content

    async with running_worker(settings, db, redis):
        await settled(db, 1)
    done = (await client.get(body["poll_url"], headers=alice.auth)).json()
    assert (done["status"], done["failure_reason"]) == ("SUCCEEDED", None)
    seen_by_bob = await client.get(body["poll_url"], headers=bob.auth)
    assert seen_by_bob.json()["transaction_id"] == done["transaction_id"] is not None
    transaction = (await client.get(f"/api/v1/transactions/{done['transaction_id']}",
                                    headers=bob.auth)).json()  # fmt: skip
    assert (transaction["kind"], transaction["amount"]) == ("payment", "25.00")
    entries = await db.fetchval(
        "SELECT count(*) FROM ledger_entry WHERE transfer_id = $1", done["transaction_id"]
    )
    assert entries == 2
    assert await balance_minor(db, alice.account_number) == 100000 - 2500
    assert await balance_minor(db, bob.account_number) == 100000 + 2500
    # The replay still answers what was accepted; the current state is read with GET.
    later = await pay(client, alice, bob.account_number, "25.00", key="p1", description="rent")
    assert later.json()["status"] == "PENDING"


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [({"to_account_number": "AC0000000000000000"}, 422, "unknown_account"),
     ({"amount": "0"}, 422, "validation_error"), ({"amount": "1.001"}, 422, "validation_error"),
     ({"amount": "1000000.01"}, 422, "amount_too_large"), ({"currency": "EUR"}, 422, "currency_mismatch"),
     ({"from_account_number": "AC0000000000000000"}, 422, "unknown_account")],
)  # fmt: skip
async def test_what_can_be_decided_at_once_is_and_nothing_is_queued(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool,
    fields: dict[str, object], status: int, code: str,
) -> None:  # fmt: skip
    body = {"to_account_number": bob.account_number, "amount": "5.00", **fields}
    response = await client.post(PAYMENTS, json=body,
                                 headers={**alice.auth, "Idempotency-Key": uuid.uuid4().hex})  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (status, code)
    assert await db.fetchval("SELECT count(*) FROM payment") == 0


async def test_a_payment_to_oneself_and_without_a_key_are_refused(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    own = await pay(client, alice, alice.account_number, "5.00")
    assert (own.status_code, own.json()["code"]) == (422, "self_transfer")
    keyless = await client.post(PAYMENTS, headers=alice.auth,
                                json={"to_account_number": alice.account_number, "amount": "1"})  # fmt: skip
    assert (keyless.status_code, keyless.json()["code"]) == (400, "idempotency_key_missing")
    assert await db.fetchval("SELECT count(*) FROM payment") == 0


async def test_a_payer_who_can_afford_some_of_a_hundred_payments(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis,
) -> None:  # fmt: skip
    """100 payments of 15.00 at once from 1000.00: 66 succeed, 34 fail insufficient_funds, and
    the balance never goes below zero (the database would refuse it)."""
    accepted = await asyncio.gather(
        *(pay(client, alice, bob.account_number, "15.00") for _ in range(100))
    )
    assert [r.status_code for r in accepted] == [202] * 100
    async with running_worker(settings, db, redis):
        await settled(db, 100)
    outcomes = await db.fetch(
        "SELECT status, failure_reason, count(*) AS n FROM payment GROUP BY 1, 2 ORDER BY 1"
    )
    assert [(r["status"], r["failure_reason"], r["n"]) for r in outcomes] == [
        ("FAILED", "insufficient_funds", 34),
        ("SUCCEEDED", None, 66),
    ]
    assert await balance_minor(db, alice.account_number) == 1000
    assert await balance_minor(db, bob.account_number) == 100000 + 99000
    failed = await client.get(PAYMENTS, params={"status": "FAILED", "limit": "100"},
                              headers=alice.auth)  # fmt: skip
    assert len(failed.json()["data"]) == 34
    assert {p["failure_reason"] for p in failed.json()["data"]} == {"insufficient_funds"}


async def test_two_workers_never_settle_one_payment_twice(
    client: httpx.AsyncClient, db: asyncpg.Pool, settings: Settings, redis: Redis
) -> None:
    users = [await new_user(client, f"u{i}") for i in range(6)]
    for index in range(300):
        payer, payee = users[index % 6], users[(index + 1) % 6]
        assert (await pay(client, payer, payee.account_number, "1.00")).status_code == 202
    async with running_worker(settings, db, redis), running_worker(settings, db, redis):
        await settled(db, 300)
    assert await db.fetchval("SELECT count(*) FROM payment WHERE status = 'SUCCEEDED'") == 300
    assert await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'payment'") == 300
    assert await db.fetchval(
        "SELECT count(*) FROM payment p JOIN transfer t ON t.id = p.transfer_id"
        " WHERE t.amount_minor = p.amount_minor AND t.source_account_id = p.source_account_id"
    ) == 300  # fmt: skip
    attempts = await db.fetchval("SELECT array_agg(DISTINCT attempts) FROM payment")
    assert attempts == [1]  # each claimed once: no claim was taken over from the other


async def test_a_claim_whose_worker_died_is_taken_over_when_its_lease_runs_out(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis,
) -> None:  # fmt: skip
    await pay(client, alice, bob.account_number, "3.00")
    claimed = await db.fetch(Q.claim_payments, "dead-worker", 10, 1, 5)
    assert len(claimed) == 1
    status = await db.fetchval("SELECT status FROM payment")
    assert status == "PROCESSING"
    async with running_worker(settings, db, redis):
        await asyncio.sleep(0.5)
        assert await db.fetchval("SELECT status FROM payment") == "PROCESSING"  # leased
        await settled(db, 1, timeout_s=5)
    assert await db.fetchval("SELECT attempts FROM payment") == 2
    # The dead worker waking up late settles nothing: the payment is no longer its own.
    late = await db.fetch(Q.settle_payments, "dead-worker", [claimed[0]["id"]])
    assert late == []
    assert await balance_minor(db, bob.account_number) == 100000 + 300


async def test_a_payment_that_cannot_be_settled_fails_instead_of_holding_the_queue(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """Claimed payment_attempts_max times and never settled (its workers died each time): the
    next claim fails it with settlement_error, moving nothing."""
    payment_id = (await pay(client, alice, bob.account_number, "3.00")).json()["id"]
    for _ in range(3):
        assert len(await db.fetch(Q.claim_payments, "crashing", 10, 0, 3)) == 1
        await asyncio.sleep(0.01)
    failed = await db.fetch(Q.claim_payments, "next", 10, 30, 3)
    assert [tuple(row) for row in failed] == [(payment_id, False)]  # told, not claimed
    row = await db.fetchrow("SELECT status, failure_reason, transfer_id FROM payment")
    assert tuple(row) == ("FAILED", "settlement_error", None)
    assert await balance_minor(db, bob.account_number) == 100000


async def test_payments_are_the_parties_own(
    client: httpx.AsyncClient, alice: User, bob: User
) -> None:
    mallory = await new_user(client, "mallory")
    body = (await pay(client, alice, bob.account_number, "1.00")).json()
    assert (await client.get(body["poll_url"], headers=mallory.auth)).status_code == 404
    assert (await client.get(f"{PAYMENTS}/abc", headers=alice.auth)).status_code == 404
    assert (await client.get(PAYMENTS, headers=mallory.auth)).json()["data"] == []
    listed = await client.get(PAYMENTS, headers=bob.auth)
    assert [p["id"] for p in listed.json()["data"]] == [body["id"]]
    bad = await client.get(PAYMENTS, params={"status": "DONE"}, headers=bob.auth)
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")


async def test_ready_reports_the_queue_and_whether_a_worker_is_connected(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis, app: Starlette,
) -> None:  # fmt: skip
    await pay(client, alice, bob.account_number, "1.00")
    await sample_queue(app)
    alone = (await client.get("/api/v1/ready")).json()
    assert alone["components"] == {"postgres": "ok", "redis": "ok", "worker": "absent"}
    assert (alone["payments"]["pending"], alone["payments"]["processing"]) == (1, 0)
    assert alone["payments"]["oldest_pending_age_s"] >= 0
    async with running_worker(settings, db, redis):
        await settled(db, 1)
        await asyncio.sleep(0.2)  # the listener's connection is up
        await sample_queue(app)
        beside = await client.get("/api/v1/ready")
    assert beside.status_code == 200
    assert beside.json()["components"]["worker"] == "ok"
    assert beside.json()["payments"] == {
        "pending": 0, "processing": 0, "oldest_pending_age_s": 0.0}  # fmt: skip


async def test_a_claim_given_back_on_a_graceful_stop_is_no_attempt(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    payment_id = (await pay(client, alice, bob.account_number, "3.00")).json()["id"]
    for _ in range(5):  # five deploys, each stopping a worker with the payment in hand
        assert [row["id"] for row in await db.fetch(Q.claim_payments, "w", 10, 30, 3)] == [
            payment_id
        ]
        await db.fetch(Q.release_payments, "w", [payment_id])
    row = await db.fetchrow("SELECT status, attempts, lease_owner FROM payment")
    assert tuple(row) == ("PENDING", 0, None)


async def test_the_payee_may_reverse_a_settled_payment(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis,
) -> None:  # fmt: skip
    body = (await pay(client, alice, bob.account_number, "8.00")).json()
    async with running_worker(settings, db, redis):
        await settled(db, 1)
    transaction_id = (await client.get(body["poll_url"], headers=bob.auth)).json()["transaction_id"]
    reversed_ = await client.post(f"/api/v1/transactions/{transaction_id}/reverse", json={},
                                  headers={**bob.auth, "Idempotency-Key": "undo"})  # fmt: skip
    assert (reversed_.status_code, reversed_.json()["reverses"]) == (201, transaction_id)
    assert await balance_minor(db, alice.account_number) == 100000


async def test_a_worker_whose_loop_breaks_stops_rather_than_idle_for_ever(
    db: asyncpg.Pool, settings: Settings, redis: Redis
) -> None:
    """A loop may end only when asked to. One that broke (here: an error no handler expects)
    stops the whole worker, with an error, so that its supervisor starts a sound one."""

    class BrokenJob(PaymentsJob):
        async def claim(self, pool: asyncpg.Pool, worker: str) -> list[int]:
            raise RuntimeError("a bug")

    worker = Worker(settings, db, [BrokenJob(settings, redis)])
    assert await asyncio.wait_for(worker.run(), 15) is False


async def test_a_loop_survives_a_connection_caught_closing(
    db: asyncpg.Pool, settings: Settings, redis: Redis
) -> None:
    """asyncpg's InternalClientError (a connection between PostgreSQL's FATAL and its close) is
    a database error like the others: the loop pauses and claims again."""
    calls = 0

    class FlakyJob(PaymentsJob):
        async def claim(self, pool: asyncpg.Pool, worker: str) -> list[int]:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise asyncpg.InternalClientError("cannot switch to state 12")
            return await super().claim(pool, worker)

    tuned = settings.model_copy(update={"worker_concurrency": 1, "worker_poll_interval_s": 0.05})
    worker = Worker(tuned, db, [FlakyJob(tuned, redis)])
    task = asyncio.create_task(worker.run())
    await asyncio.sleep(1.0)
    worker.stopping.set()
    await task
    assert calls > 3


async def test_a_payment_from_an_account_of_another_currency_is_a_mismatch(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """Named by from_account_number, the payer's EUR account cannot pay a USD account: 422, as
    for a transfer (it was a 500 from the composite key)."""
    euros = await client.post("/api/v1/accounts", json={"currency": "EUR"}, headers=alice.auth)
    response = await pay(client, alice, bob.account_number, "1.00",
                         from_account_number=euros.json()["account_number"])  # fmt: skip
    assert (response.status_code, response.json()["code"]) == (422, "currency_mismatch")
    assert await db.fetchval("SELECT count(*) FROM payment") == 0
