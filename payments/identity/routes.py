"""Register, log in, refresh, log out."""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.admin.audit import origin
from payments.http.body import RequestModel, validate_body
from payments.http.errors import EMAIL_TAKEN, INVALID_CREDENTIALS, ApiError
from payments.http.rate_limit import client_address
from payments.http.responses import body_of, json_response, principal_of
from payments.identity import sessions
from payments.money.amounts import to_minor_units
from payments.platform import db
from payments.platform.db import Q
from payments.services import services

Email = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254,
                           pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]  # fmt: skip
RefreshToken = Annotated[str, StringConstraints(min_length=1, max_length=512)]


class RegisterIn(RequestModel):
    email: Email
    password: Annotated[str, StringConstraints(min_length=8, max_length=128)]
    full_name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]


class LoginIn(RequestModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RefreshIn(RequestModel):
    refresh_token: RefreshToken


class LogoutIn(RequestModel):
    refresh_token: RefreshToken | None = None


async def register(request: Request) -> Response:
    """A user, their first account, and its opening balance paid through the ledger."""
    found = services(request)
    command = validate_body(RegisterIn, body_of(request))
    password_hash = await found.passwords.hash(
        command.password, client=client_address(request.scope)
    )
    settings = found.settings
    opening_minor = to_minor_units(settings.opening_balance_text, settings.default_currency)
    created = await db.run(settings, lambda: found.pool.fetchval(
        Q.register_user, command.email, command.full_name, password_hash,
        settings.default_currency, opening_minor,
    ))  # fmt: skip
    if created is None:
        raise ApiError(EMAIL_TAKEN, "an account with this email exists already")
    return Response(created.encode(), status_code=201, media_type="application/json")


async def login(request: Request) -> Response:
    """A token pair for the right password; the same 401, at the same cost, for a wrong password
    and for an unknown email."""
    found = services(request)
    command = validate_body(LoginIn, body_of(request))
    user = await found.pool.fetchrow(Q.user_by_email, command.email)
    stored_hash = user["password_hash"] if user else None
    if not await found.passwords.verify(
        stored_hash, command.password, client=client_address(request.scope)
    ):
        # The account tried, when there is one: never the email typed, which may be a password.
        found.audit.record(
            "auth.login_failed", actor_id=None, target=str(user["id"]) if user else None,
            details={"reason": "wrong_password" if user else "unknown_email"},
            **origin(request.scope),
        )  # fmt: skip
        raise ApiError(INVALID_CREDENTIALS, "the email or the password is wrong")
    assert user is not None

    async with found.pool.acquire() as conn:
        tokens = await sessions.start(found, conn, user_id=user["id"], role=user["role"])
        account = await conn.fetchval(Q.first_account_body, user["id"])
    found.audit.record("auth.login", actor_id=user["id"], target=str(user["id"]),
                       **origin(request.scope))  # fmt: skip
    # Redis learns this user's revocations now, so the session's first request needs no fallback.
    await sessions.restore_denylist(found, user["id"])
    if found.passwords.needs_rehash(user["password_hash"]):
        new_hash = await found.passwords.hash(
            command.password, client=client_address(request.scope)
        )
        await found.pool.execute(Q.rehash_password, user["id"], new_hash)
    user_out = {"id": user["id"], "email": user["email"], "full_name": user["full_name"]}
    return json_response(200, {**tokens, "user": user_out, "account": json.loads(account)})


async def refresh(request: Request) -> Response:
    found = services(request)
    command = validate_body(RefreshIn, body_of(request))
    return json_response(
        200, await sessions.rotate(found, command.refresh_token, **origin(request.scope))
    )


async def logout(request: Request) -> Response:
    found = services(request)
    command = validate_body(LogoutIn, body_of(request) or {})
    principal = principal_of(request)
    await sessions.end(found, principal, command.refresh_token)
    found.audit.record("auth.logout", actor_id=principal.user_id, target=str(principal.user_id),
                       **origin(request.scope))  # fmt: skip
    return Response(status_code=204)
