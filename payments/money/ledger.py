"""The ledger as an auditor reads it: a transaction's entries and whether they balance, an
account's entries and its hash chain, and reconciliation over a range of days.

Each route has an own-account form and an admin form (/admin/ledger/...) that reaches any
account; both run the same queries, with `any_account` saying which. The chain and the
reconciliation are computed in PostgreSQL (sql/0006): nothing is loaded into this process."""

from __future__ import annotations

import datetime
from typing import Annotated

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, field_error, validate_body
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.pagination import keyset_page
from payments.http.responses import body_of, json_response, path_id, path_text, principal_of
from payments.http.state import state_of
from payments.platform.db import Q
from payments.services import services

RECONCILE_DAYS_MAX = 366
IsoDate = Annotated[str, StringConstraints(pattern=r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")]


class ReconcileIn(RequestModel):
    start_date: IsoDate
    end_date: IsoDate


def _is_admin_route(request: Request) -> bool:
    """The /admin/ledger/... forms reach any account: their rules say admin, so only admins
    get this far."""
    return state_of(request.scope).rules.admin


async def _account_id(request: Request, any_account: bool) -> int:
    """The account named in the path: the caller's own, or any one for an admin; else 404."""
    account_id: int | None = await services(request).pool.fetchval(
        Q.ledger_account, path_text(request, "account_number"),
        principal_of(request).user_id, any_account,
    )  # fmt: skip
    if account_id is None:
        raise ApiError(NOT_FOUND, "no such account")
    return account_id


async def transaction_entries(request: Request) -> Response:
    """The entries of a transaction the caller is a party to. The other party's entry leaves out
    balance_after and the hashes, which would disclose that party's balance."""
    principal = principal_of(request)
    rows = await services(request).pool.fetch(
        Q.ledger_transaction_entries, path_id(request), principal.user_id,
        principal.is_admin and _is_admin_route(request),
    )  # fmt: skip
    if not rows:
        raise ApiError(NOT_FOUND, "no such transaction")
    content = f'{{"data":[{",".join(row["body"] for row in rows)}]}}'
    return Response(content.encode(), media_type="application/json")


async def verify_transaction(request: Request) -> Response:
    """{"balanced": true} when the transaction's debits equal its credits in each currency."""
    principal = principal_of(request)
    body = await services(request).pool.fetchval(
        Q.ledger_verify_transaction, path_id(request), principal.user_id,
        principal.is_admin and _is_admin_route(request),
    )  # fmt: skip
    if body is None:
        raise ApiError(NOT_FOUND, "no such transaction")
    return Response(body.encode(), media_type="application/json")


async def account_entries(request: Request) -> Response:
    """An account's entries, newest first, a keyset page at a time."""
    found = services(request)
    account_id = await _account_id(request, _is_admin_route(request))
    return await keyset_page(request, lambda before_id, limit: found.pool.fetch(
        Q.ledger_entries_of_account, account_id, before_id, limit
    ))  # fmt: skip


async def account_chain(request: Request) -> Response:
    """{"valid": true, "entries": N}, or where the chain first breaks: `tampered_at`."""
    account_id = await _account_id(request, _is_admin_route(request))
    row = await services(request).pool.fetchrow(Q.ledger_chain, account_id)
    assert row is not None
    content: dict[str, object] = {"valid": row["valid"], "entries": row["entries"]}
    if not row["valid"]:
        content.update(tampered_at=row["tampered_at"], detail=row["detail"])
    return json_response(200, content)


async def reconcile_account(request: Request) -> Response:
    """The account's balance against its entries, each transaction against its entries, each
    settled payment against its transaction, and the chain, over whole UTC days. The caller's
    own account, or any one for an admin."""
    command = validate_body(ReconcileIn, body_of(request))
    start, end = _date(command.start_date, "start_date"), _date(command.end_date, "end_date")
    if end < start:
        raise field_error("end_date", "must not be before start_date")
    if (end - start).days + 1 > RECONCILE_DAYS_MAX:
        raise field_error("end_date", f"the range spans at most {RECONCILE_DAYS_MAX} days")
    account_id = await _account_id(request, principal_of(request).is_admin)
    body = await services(request).pool.fetchval(Q.reconcile_account, account_id, start, end)
    return Response(body.encode(), media_type="application/json")


def _date(text: str, field: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(text)
    except ValueError:
        raise field_error(field, "is not a calendar date (YYYY-MM-DD)") from None
