"""API keys for servers: make one (shown once), list them (never the key), revoke one. These
routes take a person's access token, never a key (Rules.api_key is False on them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import StringConstraints
from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import RequestModel, validate_body
from payments.http.errors import API_KEY_LIMIT, NOT_FOUND, UNAVAILABLE, ApiError
from payments.http.pagination import keyset_page
from payments.http.rate_limit import client_address
from payments.http.responses import body_of, json_response, path_id, principal_of
from payments.http.state import state_of
from payments.identity import sessions
from payments.identity.api_key_cache import api_key_family_id, new_api_key
from payments.platform import db
from payments.platform.db import Q
from payments.services import services


class ApiKeyIn(RequestModel):
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


async def create_api_key(request: Request) -> Response:
    """201 with the key, the only time it is shown: PostgreSQL keeps its SHA-256 alone. 409
    api_key_limit when the caller already holds the most active keys a user may."""
    found = services(request)
    command = validate_body(ApiKeyIn, body_of(request))
    principal = principal_of(request)
    key, prefix, key_hash = new_api_key()
    row = await db.run(found.settings, lambda: found.pool.fetchrow(
        Q.create_api_key, principal.user_id, command.name, prefix, key_hash,
        found.settings.api_keys_active_max, client_address(request.scope),
        state_of(request.scope).request_id,
    ))  # fmt: skip
    if row is None or row["id"] is None:
        limit = found.settings.api_keys_active_max
        raise ApiError(API_KEY_LIMIT, f"a user may hold {limit} active API keys; revoke one first")
    return json_response(201, {
        "id": row["id"], "name": command.name, "prefix": prefix, "key": key,
        "created_at": row["created_at"],
    })  # fmt: skip


async def list_api_keys(request: Request) -> Response:
    """The caller's keys, active and revoked, newest first, a keyset page at a time."""
    found = services(request)
    user_id = principal_of(request).user_id
    return await keyset_page(request, lambda before_id, limit: found.pool.fetch(
        Q.api_keys_of_user, user_id, before_id, limit
    ))  # fmt: skip


async def revoke_api_key(request: Request) -> Response:
    """204, and from then on the key is refused by every process: PostgreSQL records the
    revocation first, then Redis denies the key's family, which every request checks in its one
    round trip. Revoking a revoked key is 204 again (and denies it again); another user's key is
    404, as if it did not exist."""
    found = services(request)
    principal = principal_of(request)
    api_key_id = path_id(request)
    revoked = await found.pool.fetchval(
        Q.revoke_api_key, api_key_id, principal.user_id, client_address(request.scope),
        state_of(request.scope).request_id,
    )  # fmt: skip
    if revoked is None:
        raise ApiError(NOT_FOUND, "no such API key")
    denied = await sessions.deny(found, user_id=principal.user_id,
                                 family_id=api_key_family_id(api_key_id),
                                 ttl_s=sessions.key_revocation_ttl_s(found))  # fmt: skip
    if not denied:  # revoked in PostgreSQL, but a process may still trust its memory of the key
        raise ApiError(UNAVAILABLE, "the key is revoked but not yet everywhere: send this again",
                       headers={"Retry-After": "1"})  # fmt: skip
    return Response(status_code=204)
