"""Rate limits: which tiers a request is counted against, what is left of each, and the layer
that refuses a request once any of them is spent.

The tiers are decided in the request's one admission round trip (admission.lua), by GCRA (the
generic cell rate algorithm, as in redis-cell): one timestamp per key, the theoretical arrival
time (TAT). With a quota of q requests per window w, each request advances TAT by the emission
interval T = w / q, and a request is allowed while the new TAT is at most w ahead of now: q
requests may come in a burst, then one every T. Unlike a fixed window it never admits 2q across a
window edge, and unlike a sliding log it stores one number. The clock is Redis's own (TIME), so
several API hosts agree whatever their clocks say.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.errors import RATE_LIMITED, UNAVAILABLE, ApiError, problem_response
from payments.http.state import RequestState, state_of
from payments.platform import metrics, redis_keys
from payments.platform.db import as_unavailable
from payments.platform.settings import RateLimit
from payments.services import Services
from payments.settings import Settings

if TYPE_CHECKING:
    from payments.http.admission import Admission

STRICT_TIERS = frozenset({"auth", "login"})  # blind to these, we would let password guessing in


@dataclass(frozen=True, slots=True)
class Tier:
    """A rate-limit tier that applies to this request; new_only tiers (the transfer tier) are not
    charged for a replay or a refused duplicate, only for money that may move."""

    limit: RateLimit
    key: str
    new_only: bool = False

    def arguments(self) -> list[Any]:
        """interval_ms, period_ms, new_only: the script's TIER_FIELDS."""
        interval_ms = self.limit.period_s * 1000 / self.limit.count
        return [f"{interval_ms:.3f}", self.limit.period_s * 1000, "1" if self.new_only else "0"]


@dataclass(frozen=True, slots=True)
class TierState:
    """One tier after this request: `reset_s` is the IETF draft-10 `t`, the seconds until more
    quota becomes available (0 when the quota is full; on a refusal, Retry-After)."""

    name: str
    quota: int
    window_s: int
    remaining: int
    reset_s: int


def client_address(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def plan_tiers(settings: Settings, state: RequestState, scope: Scope) -> tuple[str, list[Tier]]:
    """The request's hash tag (its user's, or its client address's when anonymous) and its tiers:
    global always, then those its route names. The transfer tier counts only requests that may
    move money: none that was refused before it ran."""
    principal = state.principal
    if principal is None:
        tag = redis_keys.client_tag(client_address(scope))
    else:
        tag = redis_keys.user_tag(principal.user_id)
    tiers = [Tier(settings.rate_limit_global, redis_keys.rate_limit(tag, "global"))]
    for name in state.rules.tiers:
        if name == "auth":
            tiers.append(Tier(settings.rate_limit_auth, redis_keys.rate_limit(tag, "auth")))
        elif name == "transfer" and principal is not None and state.refusal is None:
            tiers.append(
                Tier(settings.rate_limit_transfer, redis_keys.rate_limit(tag, "transfer"), True)
            )
    return tag, tiers


def read_tiers(
    tiers: list[Tier], values: list[Any], *, denied_index: int, retry_ms: int
) -> tuple[list[TierState], TierState | None, int]:
    """Each tier's state from the script's reply (remaining, next_ms per tier), the tier that
    refused (1-based index, 0 for none) and the Retry-After it gives."""
    states = [
        TierState(tier.limit.name, tier.limit.count, tier.limit.period_s,
                  max(0, int(values[2 * i])), max(0, -(-int(values[2 * i + 1]) // 1000)))
        for i, tier in enumerate(tiers)
    ]  # fmt: skip
    if not denied_index:
        return states, None, 0
    retry_after_s = max(1, -(-retry_ms // 1000))
    refused = states[denied_index - 1]
    denied = TierState(refused.name, refused.quota, refused.window_s, 0, retry_after_s)
    states[denied_index - 1] = denied
    return states, denied, retry_after_s


def budget_headers(tiers: list[TierState]) -> dict[str, str]:
    """IETF draft-10 RateLimit-Policy and RateLimit, naming every tier the request touched."""
    if not tiers:
        return {}
    return {
        "RateLimit-Policy": ", ".join(f'"{t.name}";q={t.quota};w={t.window_s}' for t in tiers),
        "RateLimit": ", ".join(f'"{t.name}";r={t.remaining};t={t.reset_s}' for t in tiers),
    }


def login_account_tag(state: RequestState) -> str | None:
    """The login tier's hash tag: per account (the email, case-folded), so that one password cannot
    be guessed from many addresses. None when the body names no email (it will get its 422)."""
    payload = state.body.payload if state.body is not None else None
    email = payload.get("email") if isinstance(payload, dict) else None
    if not isinstance(email, str) or state.refusal is not None:
        return None
    return redis_keys.login_tag(hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32])


class RateLimitMiddleware:
    """Refuses a request once any of its budgets is spent, and tells every response it decided
    what is left (RateLimit-Policy, RateLimit).

    Keeps: a refused request is charged to no tier; a replay is charged to the global tier only;
    Redis down, the auth and login tiers refuse (503) and the others let requests through; a
    refusal decided before the limiter (a bad body or key, a forbidden route) is answered after
    it, counted and with the budget headers, like every other answer it decided."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not state_of(scope).rules.limited:
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        admission = state.admitted()
        tiers = list(admission.tiers)
        refusal = self.refusal(scope, state, admission)
        if refusal is None and "login" in state.rules.tiers:
            refusal = await self.spend_login_tier(scope, state, tiers)
        headers = budget_headers(tiers)
        started = False

        async def send_with_budget(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                response_headers = MutableHeaders(scope=message)
                for name, value in headers.items():
                    response_headers[name] = value
            await send(message)

        try:
            if refusal is not None:
                raise refusal
            await self.app(scope, receive, send_with_budget)
        except Exception as error:
            problem = error if isinstance(error, ApiError) else as_unavailable(error)
            if started or problem is None:
                raise
            await problem_response(problem)(scope, receive, send_with_budget)

    def refusal(self, scope: Scope, state: RequestState, admission: Admission) -> ApiError | None:
        """429 for a spent tier, 503 when Redis cannot decide a strict tier, else the refusal an
        outer layer decided; the allowed tiers are counted."""
        if not admission.redis_up and STRICT_TIERS.intersection(state.rules.tiers):
            return ApiError(
                UNAVAILABLE, "sign-in is unavailable for a moment", headers={"Retry-After": "1"}
            )
        if admission.denied is not None:
            return self.refused(scope, state, admission)
        for tier in admission.tiers:
            metrics.RATE_LIMIT_DECISIONS.labels(tier=tier.name, decision="allowed").inc()
        return state.refusal

    def refused(self, scope: Scope, state: RequestState, admission: Admission) -> ApiError:
        """429 for the tier that refused. The first refusal of a principal and tier in a minute
        (Redis said so in the same round trip) is queued for the audit log; the others are not,
        so that a storm of 429s stays one row a minute."""
        denied = admission.denied
        assert denied is not None
        state.rate_limit_tier = denied.name
        metrics.RATE_LIMIT_DECISIONS.labels(tier=denied.name, decision="refused").inc()
        if admission.audit_refusal:
            principal = state.principal
            self.services.audit.record(
                "rate_limit.refused", actor_id=principal.user_id if principal else None,
                target=state.route, ip=client_address(scope), request_id=state.request_id,
                details={"tier": denied.name, "method": scope["method"]},
            )  # fmt: skip
        return ApiError(
            RATE_LIMITED, f"the {denied.name} limit is spent; retry later",
            headers={"Retry-After": str(admission.retry_after_s)}, tier=denied.name,
        )  # fmt: skip

    async def spend_login_tier(
        self, scope: Scope, state: RequestState, tiers: list[TierState]
    ) -> ApiError | None:
        """The per-account login tier: a second round trip, on login only (its key lives in the
        account's hash slot, not the address's). Its state joins the budget headers."""
        tag = login_account_tag(state)
        if tag is None:
            return None
        tier = Tier(self.services.settings.rate_limit_login, redis_keys.rate_limit(tag, "login"))
        admission = await self.services.admitter.admit_tiers(tag, [tier])
        if not admission.redis_up:
            return ApiError(
                UNAVAILABLE, "sign-in is unavailable for a moment", headers={"Retry-After": "1"}
            )
        tiers.extend(admission.tiers)
        if admission.denied is not None:
            return self.refused(scope, state, admission)
        metrics.RATE_LIMIT_DECISIONS.labels(tier="login", decision="allowed").inc()
        return None
