"""Authentication: a valid, unrevoked Bearer access token or API key on every route that is not
public, and an admin's on the admin routes. A token's signature is checked here, with no I/O; a
key is looked up in PostgreSQL once a minute by each process (api_key_cache.py). Whether either
was revoked is asked in the request's one Redis round trip (admission.py), and PostgreSQL is asked
when Redis cannot say."""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from payments.http.errors import FORBIDDEN, INVALID_TOKEN, ApiError
from payments.http.state import RequestState, state_of
from payments.identity import sessions
from payments.identity.api_key_cache import is_api_key
from payments.identity.tokens import Principal
from payments.platform import redis_keys
from payments.services import Services

if TYPE_CHECKING:  # the admission layer imports this module
    from payments.http.admission import Admission, Plan

log = structlog.get_logger(__name__)


class AuthMiddleware:
    """Sets the request state's principal on every route that is not public, or answers 401
    invalid_token; marks a non-admin on an admin route for 403, answered once it is counted.

    Keeps: only a token we signed, unexpired, of our issuer and audience, or a key PostgreSQL knows
    unrevoked, becomes a principal; a key only on a route whose rules accept one."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or state_of(scope).rules.public:
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        credential = bearer_token(scope)
        if not is_api_key(credential):
            principal = self.services.tokens.verify(credential)
        elif state.rules.api_key:
            principal = await self.services.api_keys.principal(self.services.pool, credential)
        else:
            raise ApiError(INVALID_TOKEN, "this route takes an access token, not an API key: "
                           "API keys and sessions are managed by a signed-in person",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip
        state.principal = principal
        structlog.contextvars.bind_contextvars(principal_id=principal.user_id)
        if state.rules.admin and not principal.is_admin:
            state.refusal = ApiError(FORBIDDEN, "this route is for admins")
        await self.app(scope, receive, send)


def bearer_token(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
    raise ApiError(INVALID_TOKEN, "send an access token: Authorization: Bearer <token>",
                   headers={"WWW-Authenticate": "Bearer"})  # fmt: skip


def denylist_keys(principal: Principal) -> tuple[str, str, str]:
    """Authentication's part of the admission round trip: the keys that say whether the token's
    session, or the token itself, was revoked."""
    return (
        redis_keys.denylist_ready(principal.user_id),
        redis_keys.revoked_family(principal.user_id, principal.family_id),
        redis_keys.revoked_token(principal.user_id, principal.token_id),
    )


async def settle_revocation(
    services: Services, state: RequestState, plan: Plan, admission: Admission
) -> Admission | None:
    """Authentication's reading of the admission: 401 for a revoked token or key. When Redis has
    forgotten the user's denylist, it is copied back from PostgreSQL and Redis asked again; when
    Redis does not answer, PostgreSQL decides alone, and None says the other layers must fall
    back as if Redis were down."""
    if admission.revoked:
        raise revoked_token(state.principal)
    if (admission.redis_up and admission.denylist_known) or state.principal is None:
        return admission
    if admission.redis_up:  # Redis lost this user's denylist: copy it back, ask again
        await sessions.restore_denylist(services, state.principal.user_id)
        admission = await services.admitter.admit(plan)
        if admission.revoked:
            raise revoked_token(state.principal)
        if admission.redis_up and admission.denylist_known:
            return admission
    if await sessions.revoked_in_database(services, state.principal):
        raise revoked_token(state.principal)
    return None


def revoked_token(principal: Principal | None) -> ApiError:
    key = principal is not None and principal.api_key_id is not None
    return ApiError(INVALID_TOKEN, f"the {'API key' if key else 'access token'} was revoked",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip
