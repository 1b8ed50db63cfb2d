"""The caller's accounts: list, open one in another currency, read one."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, validate_body
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.idempotency import answer_response
from payments.http.responses import body_of, page_response, path_text, principal_of
from payments.http.state import state_of
from payments.money.amounts import Currency, check_currency
from payments.platform import db
from payments.platform.db import Q
from payments.services import services

ACCOUNTS_PER_USER_MAX = 100  # one per currency; far fewer currencies exist


class AccountIn(RequestModel):
    currency: Currency


async def list_accounts(request: Request) -> Response:
    found = services(request)
    rows = await found.pool.fetch(
        Q.accounts_of_user, principal_of(request).user_id, ACCOUNTS_PER_USER_MAX
    )
    return page_response([row["body"] for row in rows], None)


async def open_account(request: Request) -> Response:
    """201 with the new account, opening at zero; 409 account_exists for a second in a currency."""
    found = services(request)
    command = validate_body(AccountIn, body_of(request))
    currency = check_currency(command.currency)
    key = state_of(request.scope).idempotency_key
    row = await db.run(found.settings, lambda: found.pool.fetchrow(
        Q.open_account, principal_of(request).user_id, key and key.key, key and key.fingerprint,
        found.settings.idempotency_ttl_s, currency,
    ))  # fmt: skip
    return answer_response(request.scope, row)


async def get_account(request: Request) -> Response:
    """The caller's own account; anyone else's is a 404, as if it did not exist."""
    found = services(request)
    body = await found.pool.fetchval(
        Q.account_of_user, path_text(request, "account_number"), principal_of(request).user_id
    )
    if body is None:
        raise ApiError(NOT_FOUND, "no such account")
    return Response(body.encode(), media_type="application/json")
