"""Payroll over HTTP: submit a job of up to 10,000 payments (202, paid later by the worker),
follow its progress, and page through its items."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, field_error, validate_body
from payments.http.errors import NOT_FOUND, VALIDATION_ERROR, ApiError
from payments.http.idempotency import answer_response
from payments.http.pagination import decode_cursor, encode_cursor, page_limit
from payments.http.rate_limit import client_address
from payments.http.responses import body_of, page_response, path_id, principal_of
from payments.http.state import state_of
from payments.money.amounts import AccountNumber, Currency, check_amount, check_currency
from payments.money.transfers import idempotency_key_of
from payments.platform import db
from payments.platform.db import Q
from payments.services import services

ITEM_STATUSES = frozenset({"PENDING", "SUCCEEDED", "FAILED"})
ERRORS_MAX = 100  # a 422 names at most this many faulty items


class ItemIn(RequestModel):
    to_account_number: AccountNumber
    amount: Any  # a decimal string or a JsonNumber: check_amount() parses it, exactly
    currency: Currency | None = None
    reference: Annotated[str, StringConstraints(max_length=200)] | None = None


class JobIn(RequestModel):
    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    from_account_number: AccountNumber | None = None
    items: Annotated[list[ItemIn], Field(min_length=1)]


def checked_amounts(items: list[ItemIn], limit: str) -> list[str]:
    """Each item's amount as a checked plain decimal; 422 naming every faulty item (by its
    position in items, and its index, which counts from 1)."""
    amounts: list[str] = []
    errors: list[dict[str, Any]] = []
    for position, item in enumerate(items):
        try:
            currency = check_currency(item.currency) if item.currency else None
            amounts.append(check_amount(item.amount, currency, limit=limit))
        except ApiError as error:
            for fault in error.extensions.get("errors") or [{"field": "amount",
                                                              "message": error.detail}]:  # fmt: skip
                errors.append({"field": f"items.{position}.{fault['field']}",
                               "message": fault["message"], "index": position + 1})  # fmt: skip
    if errors:
        raise ApiError(VALIDATION_ERROR, f"{len(errors)} item(s) cannot be paid",
                       errors=errors[:ERRORS_MAX])  # fmt: skip
    return amounts


def validate_job(payload: Any) -> JobIn:
    """The body as a JobIn; each fault of an item also names the item's index (from 1)."""
    try:
        return validate_body(JobIn, payload)
    except ApiError as error:
        for fault in error.extensions.get("errors", []):
            parts = str(fault["field"]).split(".")
            if len(parts) > 1 and parts[0] == "items" and parts[1].isdigit():
                fault["index"] = int(parts[1]) + 1
        raise


async def create_job(request: Request) -> Response:
    """202 with the job, QUEUED: every item checked first (the edge checks each amount, the
    database each account), then the job and its items stored with the key's answer in one
    statement, one round trip."""
    found = services(request)
    settings = found.settings
    command = validate_job(body_of(request))
    if len(command.items) > settings.payroll_items_max:
        raise field_error("items", f"a job holds at most {settings.payroll_items_max} items")
    amounts = checked_amounts(command.items, settings.max_transfer_amount)
    key = idempotency_key_of(request)
    items = command.items
    row = await db.run(settings, lambda: found.pool.fetchrow(
        Q.create_payroll_job, principal_of(request).user_id, key.key, key.fingerprint,
        settings.idempotency_ttl_s, command.name, command.from_account_number,
        [item.to_account_number for item in items], amounts,
        [item.currency for item in items], [item.reference for item in items],
        client_address(request.scope), state_of(request.scope).request_id,
    ))  # fmt: skip
    return answer_response(request.scope, row)


async def job_body(request: Request) -> tuple[int, str]:
    """The job named in the path, the owner's or for an admin; 404 for anyone else."""
    found = services(request)
    principal = principal_of(request)
    job_id = path_id(request)
    body = await found.pool.fetchval(
        Q.payroll_job_of_user, job_id, principal.user_id, principal.is_admin
    )
    if body is None:
        raise ApiError(NOT_FOUND, "no such payroll job")
    return job_id, body


async def get_job(request: Request) -> Response:
    """The job and its progress as it is now (it moves while the worker pays)."""
    _, body = await job_body(request)
    return Response(body.encode(), media_type="application/json")


async def list_items(request: Request) -> Response:
    """A job's items in index order, a keyset page at a time; `status` narrows them."""
    found = services(request)
    job_id, _ = await job_body(request)
    status = request.query_params.get("status")
    if status is not None and status not in ITEM_STATUSES:
        raise field_error("status", f"must be one of {', '.join(sorted(ITEM_STATUSES))}")
    settings = found.settings
    limit = page_limit(
        request.query_params.get("limit"), settings.page_size_default, settings.page_size_max
    )
    cursor = request.query_params.get("cursor")
    after = decode_cursor(cursor, found.cursor_key) if cursor is not None else 0
    rows = await found.pool.fetch(Q.payroll_items, job_id, after, status, limit + 1)
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]["id"], found.cursor_key) if len(rows) > limit else None
    return page_response([row["body"] for row in page], next_cursor)
