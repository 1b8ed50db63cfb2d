"""The short form of `make chaos`, for `pytest -m chaos` and CI: the same three faults over a
shorter workload, and the run fails on any violation of the books."""

from __future__ import annotations

import pytest

from tests import chaos

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SECONDS = 15.0
CLIENTS = 16


async def test_the_books_survive_a_killed_worker_and_restarted_redis_and_postgres() -> None:
    report = await chaos.run(SECONDS, CLIENTS)

    assert report.violations == []
    assert [name for name, _ in report.faults] == [
        "worker killed (SIGKILL) and restarted",
        "API process killed (SIGKILL)",
        "Redis restarted, data lost",
        "PostgreSQL restarted",
    ]
    assert all(ready_s < chaos.READY_TIMEOUT_S for _, ready_s in report.faults)
    answered = [t for t in report.transfers if t.status is not None]
    assert sum(t.status == 201 for t in answered) > 100  # money really moved under the faults
    assert sum(t.status == 202 for t in answered) > 50  # and payments were accepted
    assert len(answered) == len(report.transfers)  # every key got its answer in the end
