"""The real server with WORKERS=2: limits and idempotency hold across processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from payments.settings import Settings
from tests.api.processes import server
from tests.api.users import User
from tests.books import transfer_count


@pytest.fixture
def two_workers(settings: Settings, tmp_path: Path) -> Iterator[str]:
    with server(settings, tmp_path, workers=2) as (base_url, _):
        yield base_url


async def test_limits_and_keys_hold_across_two_processes(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, two_workers: str
) -> None:

    async def one(request: httpx.Request) -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=two_workers, timeout=10
        ) as fresh:  # a connection each
            return await fresh.send(request)

    body = {"to_account_number": bob.account_number, "amount": "1.00"}
    headers = {**alice.auth, "Idempotency-Key": "across"}
    moves = await asyncio.gather(*(one(httpx.Request("POST", f"{two_workers}/api/v1/transactions",
                                                     json=body, headers=headers)) for _ in range(10)))  # fmt: skip
    assert {r.status_code for r in moves} <= {201, 409}
    assert await transfer_count(db) == 1

    reads = await asyncio.gather(*(one(httpx.Request("GET", f"{two_workers}/api/v1/accounts",
                                                     headers=alice.auth)) for _ in range(30)))  # fmt: skip
    statuses = sorted(r.status_code for r in reads)
    assert statuses == [200] * 20 + [429] * 10  # 30 per minute in all, 10 of them spent above


async def test_metrics_add_up_both_processes(
    client: httpx.AsyncClient, alice: User, two_workers: str, tmp_path: Path
) -> None:
    """Requests spread over two processes; one scrape, served by either, counts all of them."""

    async def read() -> int:
        async with httpx.AsyncClient(
            base_url=two_workers, timeout=10
        ) as fresh:  # a connection each
            return (await fresh.get("/api/v1/accounts", headers=alice.auth)).status_code

    statuses = await asyncio.gather(*(read() for _ in range(24)))
    assert statuses == [200] * 24
    async with httpx.AsyncClient(base_url=two_workers, timeout=10) as fresh:
        scraped = (await fresh.get("/metrics")).text
    counted = sum(
        sample.value
        for family in text_string_to_metric_families(scraped)
        for sample in family.samples
        if sample.name == "payments_http_requests_total"
        and sample.labels == {"method": "GET", "route": "/api/v1/accounts", "status_class": "2xx"}
    )
    assert counted == 24
    assert len(list((tmp_path / "metrics").glob("*/counter_*.db"))) >= 2, (
        "each process keeps its own file"
    )


async def test_sigterm_lets_transfers_in_flight_commit_and_answer(
    client: httpx.AsyncClient,
    alice: User,
    bob: User,
    db: asyncpg.Pool,
    settings: Settings,
    tmp_path: Path,
) -> None:
    """Transfers wait on a row lock when SIGTERM arrives; the server stops taking requests, lets
    them finish, answers them, then exits. Every 201 is in the books; nothing is half done."""
    with server(settings, tmp_path, workers=1) as (base_url, process):
        async with db.acquire() as blocker:
            transaction = blocker.transaction()
            await transaction.start()
            await blocker.execute(
                "SELECT 1 FROM account WHERE account_number = $1 FOR UPDATE", bob.account_number
            )
            async with httpx.AsyncClient(base_url=base_url, timeout=20) as http:
                in_flight = [
                    asyncio.create_task(http.post("/api/v1/transactions", headers={**alice.auth, "Idempotency-Key": f"t{n}"},
                                                  json={"to_account_number": bob.account_number, "amount": "1.00"}))
                    for n in range(5)
                ]  # fmt: skip
                await asyncio.sleep(0.5)  # all five are waiting on the lock in PostgreSQL
                process.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.5)
                await transaction.rollback()
                answers = await asyncio.gather(*in_flight, return_exceptions=True)
        assert process.wait(15) == 0
    statuses = [a.status_code for a in answers if isinstance(a, httpx.Response)]
    assert statuses == [201] * 5
    assert await transfer_count(db) == 5


async def test_request_lines_reach_the_log_within_a_second_or_two(
    settings: Settings, tmp_path: Path
) -> None:
    """Info lines are buffered, not lost: the periodic flush writes them while the process runs."""
    with server(settings, tmp_path, workers=1, LOG_LEVEL="info") as (base_url, _):
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            answered = await http.get("/api/v1/health", headers={"X-Request-ID": "find-me-1"})
        assert answered.status_code == 200
        log = tmp_path / "server.log"
        for _ in range(30):
            if "find-me-1" in log.read_text():
                break
            await asyncio.sleep(0.1)
        line = next(line for line in log.read_text().splitlines() if "find-me-1" in line)
    assert '"event": "request_finished"' in line
