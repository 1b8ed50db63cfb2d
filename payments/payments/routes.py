"""Payments over HTTP: accept one (202, settled later by the worker), read one, list them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import field_error
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.idempotency import answer_response
from payments.http.pagination import keyset_page
from payments.http.responses import path_id, principal_of
from payments.money.transfers import send_money_request
from payments.platform.db import Q
from payments.services import services

STATUSES = frozenset({"PENDING", "PROCESSING", "SUCCEEDED", "FAILED"})


async def create_payment(request: Request) -> Response:
    """202 with the payment, PENDING: the row and the key's answer committed together, and a
    worker will settle it. A payment takes a transfer's body, and what can be decided now is
    decided now, as for a transfer."""
    return answer_response(request.scope, await send_money_request(request, Q.create_payment))


async def get_payment(request: Request) -> Response:
    """The payer's or the payee's; to anyone else it does not exist."""
    found = services(request)
    body = await found.pool.fetchval(
        Q.payment_of_user, path_id(request), principal_of(request).user_id
    )
    if body is None:
        raise ApiError(NOT_FOUND, "no such payment")
    return Response(body.encode(), media_type="application/json")


async def list_payments(request: Request) -> Response:
    """The caller's payments, sent and received, newest first; `status` narrows them."""
    found = services(request)
    status = request.query_params.get("status")
    if status is not None and status not in STATUSES:
        raise field_error("status", f"must be one of {', '.join(sorted(STATUSES))}")
    user_id = principal_of(request).user_id
    return await keyset_page(request, lambda before_id, limit: found.pool.fetch(
        Q.payments_of_user, user_id, before_id, status, limit
    ))  # fmt: skip
