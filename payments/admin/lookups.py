"""GET /admin/accounts/{account_number} and GET /admin/transactions/{id}: any account or
transaction, whoever owns it, for admins (a non-admin is answered 403 before these run)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from payments.http.errors import NOT_FOUND, ApiError
from payments.http.responses import path_id, path_text
from payments.platform.db import Q
from payments.services import services


async def get_account(request: Request) -> Response:
    """200 Account, with its kind, user_id and owner_email; 404 for an unknown number."""
    body = await services(request).pool.fetchval(
        Q.admin_account, path_text(request, "account_number")
    )
    if body is None:
        raise ApiError(NOT_FOUND, "no such account")
    return Response(body.encode(), media_type="application/json")


async def get_transaction(request: Request) -> Response:
    """200 Transaction, any one; 404 for an unknown or malformed id."""
    body = await services(request).pool.fetchval(Q.admin_transfer, path_id(request))
    if body is None:
        raise ApiError(NOT_FOUND, "no such transaction")
    return Response(body.encode(), media_type="application/json")
