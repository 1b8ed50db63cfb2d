"""Webhook endpoints (make one, its secret shown once; list; delete), an endpoint's delivery log,
and sending an event again. Only the owner sees or touches them: anyone else gets 404."""

from __future__ import annotations

import asyncio
from typing import Annotated, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, field_error, validate_body
from payments.http.errors import NOT_FOUND, WEBHOOK_ENDPOINT_LIMIT, ApiError
from payments.http.pagination import keyset_page
from payments.http.rate_limit import client_address
from payments.http.responses import body_of, json_response, path_id, path_text, principal_of
from payments.http.state import state_of
from payments.platform import db
from payments.platform.db import Q
from payments.services import services
from payments.webhooks.addresses import UrlRefused, checked_target
from payments.webhooks.sealing import Sealer, new_secret

EventType = Literal["transaction.created", "payment.succeeded", "payment.failed",
                    "payroll_job.completed"]  # fmt: skip


class EndpointIn(RequestModel):
    url: Annotated[str, Field(min_length=1, max_length=2048)]
    events: Annotated[list[EventType], Field(min_length=1, max_length=4)]


async def create_endpoint(request: Request) -> Response:
    """201 with the secret, the only time it is shown; the database keeps it sealed. 422 for a
    URL the service will not send to, 409 webhook_endpoint_limit past the most a user may have."""
    found = services(request)
    settings = found.settings
    command = validate_body(EndpointIn, body_of(request))
    events = sorted(set(command.events))
    try:  # outside development, the host's addresses must be public (checked again at delivery)
        guarded = settings.env == "production"
        await asyncio.wait_for(
            checked_target(command.url, guarded=guarded), settings.webhook_timeout_s
        )
    except UrlRefused as refused:
        raise field_error("url", str(refused)) from None
    except TimeoutError:
        raise field_error("url", "its host did not resolve in time") from None
    principal = principal_of(request)
    secret = new_secret()
    row = await db.run(settings, lambda: found.pool.fetchrow(
        Q.create_webhook_endpoint, principal.user_id, command.url, events,
        Sealer(settings).seal(secret), settings.webhook_endpoints_live_max,
        client_address(request.scope), state_of(request.scope).request_id,
    ))  # fmt: skip
    if row is None or row["id"] is None:
        limit = settings.webhook_endpoints_live_max
        raise ApiError(WEBHOOK_ENDPOINT_LIMIT, f"a user may have {limit} webhook endpoints")
    return json_response(201, {
        "id": row["id"], "url": command.url, "events": events, "secret": secret,
        "created_at": row["created_at"],
    })  # fmt: skip


async def list_endpoints(request: Request) -> Response:
    """The caller's endpoints, newest first, a keyset page at a time; never a secret."""
    found = services(request)
    user_id = principal_of(request).user_id
    return await keyset_page(request, lambda before_id, limit: found.pool.fetch(
        Q.webhook_endpoints_of_user, user_id, before_id, limit
    ))  # fmt: skip


async def delete_endpoint(request: Request) -> Response:
    """204: nothing more is sent to it, and what it still had to send fails. 404 for an endpoint
    that is not the caller's, or is gone."""
    found = services(request)
    deleted = await found.pool.fetchval(
        Q.delete_webhook_endpoint, path_id(request), principal_of(request).user_id,
        client_address(request.scope), state_of(request.scope).request_id,
    )  # fmt: skip
    if deleted is None:
        raise ApiError(NOT_FOUND, "no such webhook endpoint")
    return Response(status_code=204)


async def list_deliveries(request: Request) -> Response:
    """The attempts to send to one of the caller's endpoints, newest first."""
    found = services(request)
    endpoint_id = path_id(request)
    if not await found.pool.fetchval(
        Q.webhook_endpoint_is_owned, endpoint_id, principal_of(request).user_id
    ):
        raise ApiError(NOT_FOUND, "no such webhook endpoint")
    return await keyset_page(request, lambda before_id, limit: found.pool.fetch(
        Q.webhook_attempts_of_endpoint, endpoint_id, before_id, limit
    ))  # fmt: skip


async def redeliver_event(request: Request) -> Response:
    """202: the event is sent again to each of the caller's endpoints that it went to, with a
    fresh set of attempts. 404 for an event the caller's endpoints never had."""
    found = services(request)
    event_id = path_text(request, "id")
    if not event_id.startswith("evt_") or len(event_id) > 64:
        raise ApiError(NOT_FOUND, "no such event")
    rows = await found.pool.fetch(
        Q.redeliver_webhook_event, event_id, principal_of(request).user_id
    )
    if not rows:
        raise ApiError(NOT_FOUND, "no such event")
    return json_response(
        202, {"id": event_id, "endpoint_ids": [row["endpoint_id"] for row in rows]}
    )
