"""Rate limiting, three tiers, decided in the request's one Redis round trip (admission.py)."""

from __future__ import annotations

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.admission import Admission, AfterBatch, Plan, Tier, client_address, denylist_keys
from payments.http.errors import INVALID_TOKEN, RATE_LIMITED, UNAVAILABLE, ApiError
from payments.http.idempotency import is_money_moving, prepare_request
from payments.identity import sessions
from payments.identity.tokens import Principal
from payments.platform import metrics, redis_keys
from payments.services import Services

log = structlog.get_logger(__name__)

UNLIMITED_PATHS = frozenset({"/api/v1/health", "/api/v1/ready"})
AUTH_PREFIX = "/api/v1/auth/"
CACHED_VIEWS = {"/api/v1/accounts": "accounts", "/api/v1/transactions": "transactions"}


class RateLimitMiddleware:
    """Reject a request once any of its budgets is spent: global (per user, or per client address
    when anonymous), auth (auth routes, per address) and transfer (money-moving POSTs, per user).

    Keeps: one Redis round trip decides the tiers with the denylist, the idempotency lookup and
    the cache read; a replay is charged to the global tier only; Redis down, the auth tier
    refuses (503) and the others let requests through; a revoked token is refused either way."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not limited(scope["path"]):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            scope["payments.request"], receive = await prepare_request(
                scope, receive, body_bytes_max=self.services.settings.request_body_bytes_max
            )
        plan = self.plan(scope)
        admission = await self.admit(scope, plan)
        scope["payments.http.admission"] = admission
        batch = scope["payments.after"] = AfterBatch()
        if admission.denied is not None:
            scope["payments.rate_limit_tier"] = admission.denied.name
            metrics.RATE_LIMIT_DECISIONS.labels(
                tier=admission.denied.name, decision="refused"
            ).inc()
            raise ApiError(
                RATE_LIMITED, f"the {admission.denied.name} limit is spent; retry later",
                headers={"Retry-After": str(admission.retry_after_s), **budget_headers(admission)},
                tier=admission.denied.name,
            )  # fmt: skip
        for tier in admission.tiers:
            metrics.RATE_LIMIT_DECISIONS.labels(tier=tier.name, decision="allowed").inc()
        headers = budget_headers(admission)

        async def send_with_budget(message: Message) -> None:
            if message["type"] == "http.response.start":
                await batch.send(self.services.redis_link)
                response_headers = MutableHeaders(scope=message)
                for name, value in headers.items():
                    response_headers[name] = value
            await send(message)

        await self.app(scope, receive, send_with_budget)

    def plan(self, scope: Scope) -> Plan:
        settings = self.services.settings
        principal: Principal | None = scope.get("payments.principal")
        address = client_address(scope)
        if principal is None:
            tag = redis_keys.client_tag(address)
        else:
            tag = redis_keys.user_tag(principal.user_id)
        tiers = [Tier(settings.rate_limit_global, redis_keys.rate_limit(tag, "global"))]
        if scope["path"].startswith(AUTH_PREFIX):
            tiers.append(Tier(settings.rate_limit_auth, redis_keys.rate_limit(tag, "auth")))
        plan = Plan(tag=tag, tiers=tiers)
        if principal is None:
            return plan
        plan.denylist_keys = denylist_keys(
            principal.user_id, principal.family_id, principal.token_id
        )
        prepared = scope.get("payments.request")
        if prepared is not None and prepared.error is None:
            if is_money_moving(scope["method"], scope["path"]):
                tiers.append(
                    Tier(
                        settings.rate_limit_transfer,
                        redis_keys.rate_limit(tag, "transfer"),
                        new_only=True,
                    )
                )
            if prepared.key is not None:
                plan.idempotency_key = redis_keys.idempotency(principal.user_id, prepared.key)
                plan.fingerprint = prepared.fingerprint.hex()
                plan.in_flight_ttl_ms = settings.idempotency_lock_ttl_s * 1000
        view = cache_view(scope)
        if view is not None:
            scope["payments.cache_view"] = view
            plan.cache_keys = (
                redis_keys.cache_version(principal.user_id),
                redis_keys.cache_entry(principal.user_id, view),
            )
        return plan

    async def admit(self, scope: Scope, plan: Plan) -> Admission:
        """Ask Redis; when it has forgotten the denylist or does not answer, ask PostgreSQL
        whether the token's session was revoked, and copy the denylist back."""
        principal: Principal | None = scope.get("payments.principal")
        admission = await self.services.admitter.admit(plan)
        if admission.revoked:
            raise revoked_token()
        if admission.redis_up and admission.denylist_known:
            return admission
        if principal is not None:
            if admission.redis_up:  # Redis lost this user's denylist: copy it back, ask again
                await sessions.restore_denylist(self.services, principal.user_id)
                admission = await self.services.admitter.admit(plan)
                if admission.revoked:
                    raise revoked_token()
                if admission.redis_up and admission.denylist_known:
                    return admission
            if await sessions.revoked_in_database(self.services, principal):
                raise revoked_token()
            admission = Admission(
                redis_up=False, idempotency="unknown" if plan.idempotency_key else "none"
            )
        if any(tier.limit.name == "auth" for tier in plan.tiers):
            # Blind to the auth tier, we would let password guessing through: refuse instead.
            raise ApiError(
                UNAVAILABLE, "sign-in is unavailable for a moment", headers={"Retry-After": "1"}
            )
        return admission


def limited(path: str) -> bool:
    """Every /api/v1 route but health and ready."""
    return path.startswith("/api/v1/") and path not in UNLIMITED_PATHS


def cache_view(scope: Scope) -> str | None:
    """The cached view a GET reads: the account list, or the first page of the history."""
    view = CACHED_VIEWS.get(scope["path"])
    if scope["method"] != "GET" or view is None:
        return None
    query = scope.get("query_string", b"").decode("latin-1")
    if view == "accounts":
        return view if not query else None
    if not query:
        return f"{view}:default"
    if query.startswith("limit=") and "&" not in query and query[6:].isdigit() and len(query) <= 9:
        return f"{view}:{int(query[6:])}"
    return None


def budget_headers(admission: Admission) -> dict[str, str]:
    """IETF draft-10 RateLimit-Policy and RateLimit, naming every tier the request touched."""
    if not admission.tiers:
        return {}
    return {
        "RateLimit-Policy": ", ".join(
            f'"{t.name}";q={t.quota};w={t.window_s}' for t in admission.tiers
        ),
        "RateLimit": ", ".join(
            f'"{t.name}";r={t.remaining};t={t.reset_s}' for t in admission.tiers
        ),
    }


def revoked_token() -> ApiError:
    return ApiError(INVALID_TOKEN, "the access token was revoked",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})  # fmt: skip
