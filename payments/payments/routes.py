"""Payments over HTTP: accept one (202, settled later by the worker), read one, list them."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, field_error, validate_body
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.idempotency import answer_response
from payments.http.pagination import keyset_page
from payments.http.responses import body_of, path_id, principal_of
from payments.money.amounts import AccountNumber, Currency, check_amount, check_currency
from payments.money.transfers import idempotency_key_of
from payments.platform import db
from payments.platform.db import Q
from payments.services import services

STATUSES = frozenset({"PENDING", "PROCESSING", "SUCCEEDED", "FAILED"})


class PaymentIn(RequestModel):
    to_account_number: AccountNumber
    amount: Any  # a decimal string or a JsonNumber: check_amount() parses it, exactly
    currency: Currency | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    from_account_number: AccountNumber | None = None


async def create_payment(request: Request) -> Response:
    """202 with the payment, PENDING: the row and the key's answer committed together, and a
    worker will settle it. What can be decided now is decided now, as for a transfer."""
    found = services(request)
    command = validate_body(PaymentIn, body_of(request))
    currency = check_currency(command.currency) if command.currency else None
    amount = check_amount(command.amount, currency, limit=found.settings.max_transfer_amount)
    key = idempotency_key_of(request)
    row = await db.run(found.settings, lambda: found.pool.fetchrow(
        Q.create_payment, principal_of(request).user_id, key.key, key.fingerprint,
        found.settings.idempotency_ttl_s, command.from_account_number, command.to_account_number,
        amount, currency, command.description,
    ))  # fmt: skip
    return answer_response(request.scope, row)


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
