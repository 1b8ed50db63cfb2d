from __future__ import annotations

import httpx
from starlette.applications import Starlette

from tests.api.conftest import sample_queue
from tests.api.users import User, send


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_a_transfer_moves_money(client: httpx.AsyncClient, alice: User, bob: User) -> None:
    response = await send(client, alice, bob.account_number, "12.34")
    assert response.status_code == 201, response.text
    assert response.json()["amount"] == "12.34"


async def test_ready_names_its_components(client: httpx.AsyncClient, app: Starlette) -> None:
    await sample_queue(app)
    response = await client.get("/api/v1/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "components": {"postgres": "ok", "redis": "ok", "worker": "absent"},
        "payments": {"pending": 0, "processing": 0, "oldest_pending_age_s": 0.0},
    }
