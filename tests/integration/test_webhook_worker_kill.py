"""At least once: a worker SIGKILLed after it claimed a delivery and sent it, before it recorded
the answer, loses nothing. The claim's lease runs out, another worker sends the same event again,
and the receiver sees it twice (which is why receivers deduplicate by event id)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import pytest

from payments.platform.db import Q
from payments.settings import Settings
from payments.webhooks.sealing import Sealer
from tests.api.processes import start_worker
from tests.api.receiver import Receiver, signature_is_valid
from tests.books import reset_books
from tests.conftest import TEST_WEBHOOK_SECRET_KEY

pytestmark = pytest.mark.slow
SECRET = "whsec_" + "k" * 43
LEASE_S = 2  # PAYMENT_LEASE 1s, but a delivery's lease outlasts its WEBHOOK_TIMEOUT (1s) + 1


async def open_two_users(db: asyncpg.Pool) -> tuple[int, str]:
    for name in ("payer", "payee"):
        await db.fetchval(Q.register_user, f"{name}@example.com", "P", "x" * 40, "USD", 10_000)
    rows = await db.fetch("SELECT u.id, a.account_number FROM app_user u"
                          " JOIN account a ON a.user_id = u.id ORDER BY u.id")  # fmt: skip
    return rows[0]["id"], rows[1]["account_number"]


async def test_a_delivery_whose_worker_was_killed_is_sent_again_after_the_lease(
    db: asyncpg.Pool, database_url: str, redis_url: str, tmp_path: Path, settings: Settings
) -> None:
    await reset_books(db)
    receiver = await Receiver(lambda n: (200, 30.0 if n == 1 else 0.0)).start()
    payer_id, payee_account = await open_two_users(db)
    await db.execute(
        "INSERT INTO webhook_endpoint (user_id, url, events, secret_sealed)"
        " VALUES ($1, $2, ARRAY['transaction.created'], $3)",
        payer_id, f"{receiver.url}/hooks", Sealer(settings).seal(SECRET),
    )  # fmt: skip
    row = await db.fetchrow(Q.transfer_funds, payer_id, "k1", b"f" * 32, 3600, None,
                            payee_account, "1.00", None, None)  # fmt: skip
    assert row["status"] == 201
    variables = {"WEBHOOK_SECRET_KEY": TEST_WEBHOOK_SECRET_KEY, "WEBHOOK_TIMEOUT": "1s"}
    worker = start_worker(database_url, redis_url, tmp_path, **variables)
    try:
        await asyncio.wait_for(receiver.arrived.wait(), 20)  # sent, and the answer is pending
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    delivery = await db.fetchrow("SELECT state, attempts FROM webhook_delivery")
    assert (delivery["state"], delivery["attempts"]) == ("pending", 1)
    assert await db.fetchval("SELECT count(*) FROM webhook_attempt") == 0  # never recorded

    worker = start_worker(database_url, redis_url, tmp_path, **variables)
    try:
        for _ in range(200):
            if await db.fetchval("SELECT state FROM webhook_delivery") == "delivered":
                break
            await asyncio.sleep(0.1)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(20) == 0
        await receiver.stop()
    assert await db.fetchval("SELECT state FROM webhook_delivery") == "delivered"
    first, second = receiver.received
    assert first.event_id == second.event_id
    assert first.body == second.body
    assert signature_is_valid(SECRET, second)
    assert second.at - first.at >= LEASE_S - 0.3  # not before the lease ran out
    attempts = await db.fetch("SELECT attempt, outcome FROM webhook_attempt")
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(2, "delivered")]
    await reset_books(db)
