"""Transfers: send money, list and read the caller's transactions, reverse one."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import JsonNumber, RequestModel, field_error, validate_body
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.idempotency import IdempotencyKey, answer_response
from payments.http.pagination import keyset_page
from payments.http.rate_limit import client_address
from payments.http.responses import body_of, path_id, principal_of
from payments.http.state import state_of
from payments.money.amounts import (
    AccountNumber,
    Currency,
    check_amount,
    check_currency,
    to_minor_units,
)
from payments.platform import db, metrics
from payments.platform.db import Q
from payments.services import services


class TransferIn(RequestModel):
    to_account_number: AccountNumber
    amount: Any  # a decimal string or a JsonNumber: check_amount() parses it, exactly
    currency: Currency | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    from_account_number: AccountNumber | None = None


class FxTransferIn(TransferIn):
    """A transfer at a quoted rate: the quote says how much, so the amount may be left out."""

    amount: Any = None  # when given, it must equal the quote's from_amount
    fx_quote_id: Any  # the quote's id: a JSON integer (or its digits as a string)


def quote_id_of(value: object) -> int:
    text = value.text if isinstance(value, JsonNumber) else value
    if not isinstance(text, str) or not text.isascii() or not text.isdigit() or len(text) > 18:
        raise field_error("fx_quote_id", "must be a quote's id")
    return int(text)


def idempotency_key_of(request: Request) -> IdempotencyKey:
    """The key of a money-moving request: its route requires one, so the layers found it."""
    key = state_of(request.scope).idempotency_key
    if key is None:
        raise RuntimeError("a money-moving route ran without its idempotency key")
    return key


async def send_money_request(request: Request, query: str) -> asyncpg.Record:
    """A transfer's or a payment's body (they take the same one), checked at the edge, then sent
    with the key to `query`, one statement that claims the key, decides and answers."""
    found = services(request)
    command = validate_body(TransferIn, body_of(request))
    currency = check_currency(command.currency) if command.currency else None
    amount = check_amount(command.amount, currency, limit=found.settings.max_transfer_amount)
    key = idempotency_key_of(request)
    row: asyncpg.Record = await db.run(found.settings, lambda: found.pool.fetchrow(
        query, principal_of(request).user_id, key.key, key.fingerprint,
        found.settings.idempotency_ttl_s, command.from_account_number, command.to_account_number,
        amount, currency, command.description,
    ))  # fmt: skip
    return row


async def create_transfer(request: Request) -> Response:
    """Debit, credit, the transfer and its two ledger entries, and the key's stored answer, in
    one statement: all commit, or none. One round trip to PostgreSQL. With fx_quote_id, the
    transfer at the quote's rate (send_fx_transfer), one statement too."""
    payload = body_of(request)
    if isinstance(payload, dict) and ("fx_quote_id" in payload or "fxQuoteId" in payload):
        row = await send_fx_transfer(request)
    else:
        row = await send_money_request(request, Q.transfer_funds)
    record_outcome(row)
    return answer_response(request.scope, row)


async def send_fx_transfer(request: Request) -> asyncpg.Record:
    """The quote consumed (ACTIVE -> USED), from_amount from the sender into a clearing account of
    its currency and to_amount from one of the other currency's to the recipient (the pair the
    quote's id picks), and the key's answer: one statement, all or nothing."""
    found = services(request)
    command = validate_body(FxTransferIn, body_of(request))
    quote_id = quote_id_of(command.fx_quote_id)
    currency = check_currency(command.currency) if command.currency else None
    amount = None
    if command.amount is not None:
        amount = check_amount(command.amount, currency, limit=found.settings.max_transfer_amount)
    key = idempotency_key_of(request)
    row: asyncpg.Record = await db.run(found.settings, lambda: found.pool.fetchrow(
        Q.fx_transfer, principal_of(request).user_id, key.key, key.fingerprint,
        found.settings.idempotency_ttl_s, command.from_account_number, command.to_account_number,
        amount, currency, command.description, quote_id,
    ))  # fmt: skip
    return row


def record_outcome(row: asyncpg.Record) -> None:
    """payments_transfers_total by outcome, and the amount moved per currency."""
    if row["replayed"]:
        metrics.TRANSFERS.labels(outcome="replayed").inc()
        return
    if row["status"] != 201:
        metrics.TRANSFERS.labels(outcome=row["code"]).inc()
        return
    metrics.TRANSFERS.labels(outcome="created").inc()
    metrics.AMOUNT_MOVED.labels(currency=row["currency"]).inc(
        to_minor_units(row["amount"], row["currency"])
    )


async def list_transfers(request: Request) -> Response:
    """The caller's transactions, newest first, a keyset page at a time."""
    found = services(request)
    user_id = principal_of(request).user_id
    return await keyset_page(request, lambda before_id, limit: found.pool.fetch(
        Q.transfers_of_user, user_id, before_id, limit
    ))  # fmt: skip


async def get_transfer(request: Request) -> Response:
    """Visible to its sender and its recipient only; to anyone else it does not exist."""
    found = services(request)
    body = await found.pool.fetchval(
        Q.transfer_of_user, path_id(request), principal_of(request).user_id
    )
    if body is None:
        raise ApiError(NOT_FOUND, "no such transaction")
    return Response(body.encode(), media_type="application/json")


async def reverse_transfer(request: Request) -> Response:
    """The recipient (or an admin) sends the amount back, as a new transaction that `reverses`
    the first; one statement, like a transfer."""
    found = services(request)
    principal = principal_of(request)
    transfer_id = path_id(request)
    key = idempotency_key_of(request)
    row = await db.run(found.settings, lambda: found.pool.fetchrow(
        Q.reverse_transfer, principal.user_id, principal.is_admin, key.key, key.fingerprint,
        found.settings.idempotency_ttl_s, transfer_id, client_address(request.scope),
        state_of(request.scope).request_id,
    ))  # fmt: skip
    record_outcome(row)
    return answer_response(request.scope, row)
