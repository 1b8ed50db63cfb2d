"""Test users: register, log in, and move money through the API."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from payments.platform.db import Q

PASSWORD = "correct horse battery"
_numbers = itertools.count(1)


@dataclass
class User:
    email: str
    token: str
    refresh_token: str
    account_number: str
    user_id: int

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


async def new_user(client: httpx.AsyncClient, name: str | None = None) -> User:
    email = f"{name or 'user'}{next(_numbers)}@example.com"
    registered = await client.post(
        "/api/v1/auth/register",
        json={"email": email, "password": PASSWORD, "full_name": "Test User"},
    )
    assert registered.status_code == 201, registered.text
    return await log_in(client, email)


async def log_in(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> User:
    response = await client.post("/api/v1/auth/login", json={"email": email, "password": password})
    assert response.status_code == 200, response.text
    body = response.json()
    return User(email, body["access_token"], body["refresh_token"],
                body["account"]["account_number"], body["user"]["id"])  # fmt: skip


async def send(
    client: httpx.AsyncClient, sender: User, recipient: str, amount: Any, *,
    key: str | None = None, **fields: Any,
) -> httpx.Response:  # fmt: skip
    headers = {**sender.auth, "Idempotency-Key": key or uuid.uuid4().hex}
    body = {"to_account_number": recipient, "amount": amount, **fields}
    return await client.post("/api/v1/transactions", json=body, headers=headers)


async def reverse(
    client: httpx.AsyncClient, user: User, transfer_id: int, *, key: str | None = None
) -> httpx.Response:
    headers = {**user.auth, "Idempotency-Key": key or uuid.uuid4().hex}
    return await client.post(
        f"/api/v1/transactions/{transfer_id}/reverse", json={}, headers=headers
    )


async def make_admin(client: httpx.AsyncClient, db: asyncpg.Pool, name: str = "admin") -> User:
    """A user made admin as create-admin makes one, logged in afresh (the role is in the token)."""
    user = await new_user(client, name)
    assert await db.fetchval(Q.make_admin, user.email) == user.user_id
    return await log_in(client, user.email)
