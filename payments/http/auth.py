"""Authentication: a valid, unrevoked Bearer access token, or a public route."""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Receive, Scope, Send

from payments.http.errors import INVALID_TOKEN, ApiError
from payments.services import Services

log = structlog.get_logger(__name__)

API_PREFIX = "/api/v1/"
PUBLIC_API_PATHS = frozenset(
    {"/api/v1/auth/register", "/api/v1/auth/login", "/api/v1/auth/refresh", "/api/v1/health",
     "/api/v1/ready"}
)  # fmt: skip


def is_public(path: str) -> bool:
    """Everything outside /api/v1 (metrics, openapi.yaml, docs) and the routes listed above."""
    return not path.startswith(API_PREFIX) or path in PUBLIC_API_PATHS


class AuthMiddleware:
    """Sets scope["payments.principal"] on protected routes, or answers 401 invalid_token.

    Keeps: only a token we signed, unexpired, of our issuer and audience, becomes a principal.
    Whether its session was revoked is asked in the request's one Redis round trip, with the rate
    limits (admission.py, called by the rate-limit layer), before anything else runs."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_public(scope["path"]):
            await self.app(scope, receive, send)
            return
        principal = self.services.tokens.verify(bearer_token(scope))
        scope["payments.principal"] = principal
        structlog.contextvars.bind_contextvars(principal_id=principal.user_id)
        await self.app(scope, receive, send)


def bearer_token(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return str(token.strip())
    raise ApiError(INVALID_TOKEN, "send an access token: Authorization: Bearer <token>",
                   headers={"WWW-Authenticate": "Bearer"})  # fmt: skip
