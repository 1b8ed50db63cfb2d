"""FX over HTTP: quote a rate (locked for FX_QUOTE_TTL), read a quote, and the admins' view of
the clearing accounts. The transfer at a quoted rate is POST /transactions with fx_quote_id."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from payments.fx import rates
from payments.http.body import RequestModel, field_error, validate_body
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.idempotency import answer_response
from payments.http.responses import body_of, path_id, principal_of
from payments.http.state import state_of
from payments.money.amounts import Currency, check_amount, check_currency, to_minor_units
from payments.platform import db
from payments.platform.db import Q
from payments.services import services


class QuoteIn(RequestModel):
    from_currency: Currency
    to_currency: Currency
    from_amount: Any  # a decimal string or a JsonNumber: check_amount() parses it, exactly


async def create_quote(request: Request) -> Response:
    """201 with the quote: the rate locked now, for FX_QUOTE_TTL by the database's clock."""
    found = services(request)
    settings = found.settings
    command = validate_body(QuoteIn, body_of(request))
    from_currency = check_currency(command.from_currency, "from_currency")
    to_currency = check_currency(command.to_currency, "to_currency")
    if from_currency == to_currency:
        raise field_error("to_currency", "must differ from from_currency")
    amount = check_amount(command.from_amount, from_currency,
                          limit=settings.max_transfer_amount, field="from_amount")  # fmt: skip
    quoted = rates.quote(found.rates, from_currency=from_currency, to_currency=to_currency,
                         from_minor=to_minor_units(amount, from_currency))  # fmt: skip
    key = state_of(request.scope).idempotency_key
    row = await db.run(settings, lambda: found.pool.fetchrow(
        Q.create_fx_quote, principal_of(request).user_id, key.key if key else None,
        key.fingerprint if key else None, settings.idempotency_ttl_s, from_currency, to_currency,
        quoted.rate_text, quoted.from_minor, quoted.to_minor, quoted.as_of,
        settings.fx_quote_ttl_s,
    ))  # fmt: skip
    return answer_response(request.scope, row)


async def get_quote(request: Request) -> Response:
    """The caller's own quote, its status as of now; anyone else's does not exist."""
    found = services(request)
    body = await found.pool.fetchval(
        Q.fx_quote_of_user, path_id(request), principal_of(request).user_id
    )
    if body is None:
        raise ApiError(NOT_FOUND, "no such quote")
    return Response(body.encode(), media_type="application/json")


async def list_positions(request: Request) -> Response:
    """Admins: each currency's clearing accounts, their summed balance being the service's FX
    position in that currency."""
    found = services(request)
    body = await found.pool.fetchval(Q.fx_positions)
    return Response(f'{{"data":{body or "[]"}}}'.encode(), media_type="application/json",
                    headers={"Cache-Control": "no-store"})  # fmt: skip
