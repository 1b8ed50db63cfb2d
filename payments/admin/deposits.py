"""Deposits: the one way money enters the books in production. An admin pays an amount from the
currency's funding account into a customer's account; the money, the transaction, its ledger
entries, the key's answer and the audit row commit in one statement."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, validate_body
from payments.http.idempotency import answer_response
from payments.http.rate_limit import client_address
from payments.http.responses import body_of, principal_of
from payments.http.state import state_of
from payments.money.amounts import AccountNumber, check_amount
from payments.money.transfers import idempotency_key_of
from payments.platform import db
from payments.platform.db import Q
from payments.services import services


class DepositIn(RequestModel):
    account_number: AccountNumber
    amount: Any  # a decimal string or a JsonNumber: check_amount() parses it, exactly
    reference: Annotated[str, StringConstraints(min_length=1, max_length=200)]


async def create_deposit(request: Request) -> Response:
    """201 with the deposit's transaction; the currency is the account's."""
    found = services(request)
    command = validate_body(DepositIn, body_of(request))
    amount = check_amount(command.amount, None, limit=found.settings.max_transfer_amount)
    key = idempotency_key_of(request)
    row = await db.run(found.settings, lambda: found.pool.fetchrow(
        Q.deposit, principal_of(request).user_id, key.key, key.fingerprint,
        found.settings.idempotency_ttl_s, command.account_number, amount, command.reference,
        client_address(request.scope), state_of(request.scope).request_id,
    ))  # fmt: skip
    return answer_response(request.scope, row)
