"""GET /admin/audit-logs (filters, keyset pages, newest first) and GET /admin/audit-logs/verify
(the hash chain, checked in SQL). Admin only: the routes' rules say so, and a non-admin is
answered 403 before these run."""

from __future__ import annotations

import json
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import field_error
from payments.http.pagination import keyset_page
from payments.http.responses import json_response
from payments.platform.db import Q
from payments.services import services

ACTION = re.compile(r"^[a-z_]+(\.[a-z_]+)*$")  # the column's own check (sql/0003)
ACTION_CHARS_MAX = 64
ID_DIGITS_MAX = 18


def action_filter(request: Request) -> str | None:
    text = request.query_params.get("action")
    if text is None:
        return None
    if len(text) > ACTION_CHARS_MAX or not ACTION.match(text):
        raise field_error("action", "must be an action name, like auth.login")
    return text


def actor_filter(request: Request) -> int | None:
    text = request.query_params.get("actor_id")
    if text is None:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > ID_DIGITS_MAX:
        raise field_error("actor_id", "must be a user id")
    return int(text)


def event_body(row: Any) -> str:
    """An audit row as compact JSON; details is the object the row holds."""
    event = dict(row)
    event["details"] = json.loads(event["details"])
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False)


async def list_audit_events(request: Request) -> Response:
    """200 {data, next_cursor}: audit events newest first, of one action and one actor if asked."""
    found = services(request)
    action = action_filter(request)
    actor_id = actor_filter(request)

    async def fetch(before_id: int, limit: int) -> list[dict[str, Any]]:
        rows = await found.pool.fetch(Q.audit_events, action, actor_id, before_id, limit)
        return [{"id": row["id"], "body": event_body(row)} for row in rows]

    return await keyset_page(request, fetch)


async def verify_audit_log(request: Request) -> Response:
    """200 {"valid": true, "entries": N}, or {"valid": false, "tampered_at": id}: the first row
    whose fields no longer give its hash or whose link to the row before is broken. Computed in
    one SQL statement; no row is loaded into the service."""
    row = await services(request).pool.fetchrow(Q.audit_chain_check)
    assert row is not None
    if row["valid"]:
        return json_response(200, {"valid": True, "entries": row["entries"]})
    return json_response(
        200, {"valid": False, "entries": row["entries"], "tampered_at": row["tampered_at"]}
    )
