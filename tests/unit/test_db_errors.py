"""Which database failures a client is told to retry (503), and which are ours (500)."""

from __future__ import annotations

import asyncpg
import pytest

from payments.platform.db import as_unavailable


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("reset by peer"),
        TimeoutError(),
        asyncpg.ConnectionDoesNotExistError("connection was closed"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
    ],
)
def test_a_database_that_went_away_is_503_with_retry_after(error: Exception) -> None:
    unavailable = as_unavailable(error)
    assert unavailable is not None
    assert unavailable.problem.status == 503
    assert unavailable.headers == {"Retry-After": "1"}


def test_a_mistake_in_a_statement_is_not_called_unavailable() -> None:
    assert as_unavailable(asyncpg.UndefinedColumnError("column does not exist")) is None
    assert as_unavailable(ValueError("ours")) is None
