"""Admission: everything a request needs from Redis before its handler, in one round trip, and
the writes the layers queue for after it, in a second.

Each concern plans its own part and reads its own answer, in its own file: authentication the
denylist (auth.py), the rate limits their tiers (rate_limit.py), idempotency the key's fast copy
(idempotency.py), the response cache its entry (response_cache.py). This layer reads a POST's body
once, asks each for its part, runs the one script (admission.lua), and hands the answer on in the
request state. The script's keys, arguments and reply are named below, once, for both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http import auth, idempotency, rate_limit, response_cache
from payments.http.body import read_request_body, replay
from payments.http.errors import ApiError
from payments.http.state import RequestState, state_of
from payments.platform import metrics, redis_keys
from payments.platform.redis_link import REDIS_ERRORS, RedisLink, Script
from payments.services import Services

log = structlog.get_logger(__name__)

# The script's inputs and reply, by name. admission.lua reads K.<name> and A.<name> and fills
# R.<name>; a prologue made from these tuples maps them to and from Redis's positional arrays.
KEY_NAMES = (
    "denylist_ready",
    "revoked_family",
    "revoked_token",
    "idempotency",
    "cache_version",
    "cache_entry",
    "refusal_audit",
)  # fmt: skip  (then one key per tier)
ARGUMENT_NAMES = (
    "check_denylist",
    "check_idempotency",
    "fingerprint",
    "in_flight_ttl_ms",
    "read_cache",
    "refusal_audit_ms",
)  # fmt: skip  (then interval_ms, period_ms, new_only per tier)
REPLY_DEFAULTS = {
    "verdict": "'ok'",
    "idempotency": "'none'",
    "stored_status": "''",
    "stored_body": "''",
    "denied": "0",
    "retry_ms": "0",
    "cache_version": "''",
    "cached_body": "''",
    "audit_refusal": "0",
}  # fmt: skip  (then remaining, next_ms per tier)
REPLY_NAMES = tuple(REPLY_DEFAULTS)
TIER_FIELDS = ("interval_ms", "period_ms", "new_only")
# A 429 storm must not become an audit-log storm: one row per principal and tier this often.
REFUSAL_AUDIT_INTERVAL_MS = 60_000


def script_text() -> str:
    """admission.lua behind a prologue that names KEYS, ARGV and the reply."""
    keys = ", ".join(f"{name} = KEYS[{i}]" for i, name in enumerate(KEY_NAMES, 1))
    arguments = ", ".join(f"{name} = ARGV[{i}]" for i, name in enumerate(ARGUMENT_NAMES, 1))
    tier = ", ".join(
        f"{name} = ARGV[{len(ARGUMENT_NAMES)} + {len(TIER_FIELDS)} * (i - 1) + {j}]"
        for j, name in enumerate(TIER_FIELDS, 1)
    )
    defaults = ", ".join(f"{name} = {value}" for name, value in REPLY_DEFAULTS.items())
    reply = ", ".join(f"R.{name}" for name in REPLY_NAMES)
    prologue = f"""
local K = {{{keys}}}
local A = {{{arguments}}}
local TIERS = {{}}
for i = 1, #KEYS - {len(KEY_NAMES)} do
  TIERS[i] = {{key = KEYS[{len(KEY_NAMES)} + i], {tier}}}
  TIERS[i].interval_ms = tonumber(TIERS[i].interval_ms)
  TIERS[i].period_ms = tonumber(TIERS[i].period_ms)
end
local R = {{{defaults}}}
local TIER_STATES = {{}}
local function reply()
  local out = {{{reply}}}
  for _, value in ipairs(TIER_STATES) do out[#out + 1] = value end
  return out
end
"""
    return prologue + (Path(__file__).parent / "admission.lua").read_text(encoding="utf-8")


IdempotencyState = Literal["none", "new", "replay", "in_use", "reused", "unknown"]


@dataclass(slots=True)
class Plan:
    """What one request asks of Redis: each concern fills in its part."""

    tag: str  # the hash tag every key of the request shares (its user's or its address's)
    tiers: list[rate_limit.Tier]
    denylist_keys: tuple[str, str, str] | None = None  # ready, family, token
    idempotency_key: str | None = None
    fingerprint: str = ""
    in_flight_ttl_ms: int = 0
    cache_keys: tuple[str, str] | None = None  # version, entry


@dataclass(slots=True)
class Admission:
    """Redis's answer. redis_up False: Redis did not answer, and every layer falls back."""

    redis_up: bool = True
    revoked: bool = False
    denylist_known: bool = True
    idempotency: IdempotencyState = "none"
    stored_status: int = 0
    stored_body: bytes = b""
    denied: rate_limit.TierState | None = None
    retry_after_s: int = 0
    tiers: list[rate_limit.TierState] = field(default_factory=list)
    cache_version: str | None = None
    cached_body: bytes | None = None
    audit_refusal: bool = False  # the refusal is the first of its principal and tier this minute


def unreachable(plan: Plan) -> Admission:
    """What every layer falls back on when Redis does not answer."""
    return Admission(redis_up=False, idempotency="unknown" if plan.idempotency_key else "none")


class Admitter:
    """Runs a plan through the process's shared Redis connection."""

    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.script = Script(script_text())

    async def admit_tiers(self, tag: str, tiers: list[rate_limit.Tier]) -> Admission:
        """Rate-limit tiers alone, outside a request's admission (the per-account login tier)."""
        return await self.admit(Plan(tag=tag, tiers=tiers))

    async def admit(self, plan: Plan) -> Admission:
        unused = f"payments:{plan.tag}:unused"  # stands in for a part not asked for, in its slot
        named_keys = {
            "denylist_ready": (plan.denylist_keys or (unused,) * 3)[0],
            "revoked_family": (plan.denylist_keys or (unused,) * 3)[1],
            "revoked_token": (plan.denylist_keys or (unused,) * 3)[2],
            "idempotency": plan.idempotency_key or unused,
            "cache_version": (plan.cache_keys or (unused, unused))[0],
            "cache_entry": (plan.cache_keys or (unused, unused))[1],
            "refusal_audit": redis_keys.refusal_audit(plan.tag),
        }
        named_arguments: dict[str, Any] = {
            "check_denylist": "1" if plan.denylist_keys else "0",
            "check_idempotency": "1" if plan.idempotency_key else "0",
            "fingerprint": plan.fingerprint,
            "in_flight_ttl_ms": plan.in_flight_ttl_ms,
            "read_cache": "1" if plan.cache_keys else "0",
            "refusal_audit_ms": REFUSAL_AUDIT_INTERVAL_MS,
        }
        keys = [named_keys[name] for name in KEY_NAMES] + [tier.key for tier in plan.tiers]
        arguments = [named_arguments[name] for name in ARGUMENT_NAMES]
        for tier in plan.tiers:
            arguments += tier.arguments()
        try:
            reply = await self.link.run_script(self.script, keys, arguments)
        except REDIS_ERRORS:
            log.warning("redis_unavailable", layer="admission")
            metrics.REDIS_FALLBACKS.labels(layer="admission").inc()
            return unreachable(plan)
        return parse_reply(plan, reply)


def parse_reply(plan: Plan, reply: list[Any]) -> Admission:
    named = dict(zip(REPLY_NAMES, reply, strict=False))
    verdict = named["verdict"].decode()
    if verdict == "revoked":
        return Admission(revoked=True)
    if verdict == "denylist-unknown":
        return Admission(denylist_known=False)
    admission = Admission(
        idempotency=named["idempotency"].decode(),
        stored_status=int(named["stored_status"]) if named["stored_status"] else 0,
        stored_body=named["stored_body"] or b"",
        cache_version=named["cache_version"].decode() if named["cache_version"] else None,
        cached_body=named["cached_body"] or None,
        audit_refusal=int(named["audit_refusal"]) == 1,
    )
    tier_values = reply[len(REPLY_NAMES) :]
    admission.tiers, admission.denied, admission.retry_after_s = rate_limit.read_tiers(
        plan.tiers, tier_values, denied_index=int(named["denied"]), retry_ms=int(named["retry_ms"])
    )
    return admission


class AfterBatch:
    """Redis writes the layers queue while the handler runs, sent as one pipeline before the
    response starts (so a write's cache invalidation lands before its client can read again)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Any, ...]] = []

    def add(self, command: str, *arguments: Any) -> None:
        self.commands.append((command, *arguments))

    async def send(self, link: RedisLink) -> None:
        if not self.commands:
            return
        commands, self.commands = self.commands, []
        try:
            await link.execute(*commands)
        except REDIS_ERRORS:
            log.warning("redis_unavailable", layer="after_batch")
            metrics.REDIS_FALLBACKS.labels(layer="after_batch").inc()


class AdmissionMiddleware:
    """Reads a POST's body once, runs the request's one admission round trip, and sends the
    writes the layers queued just before the response starts.

    Keeps: every limited request is decided by one Redis call; a request whose body or key was
    refused is still counted, and its refusal waits in the state for the rate-limit layer; a
    revoked token is refused whether or not Redis remembers the revocation (auth.py)."""

    def __init__(self, app: ASGIApp, *, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        if not state.rules.limited:
            await self.app(scope, receive, send)
            return
        if scope["method"] == "POST":
            receive = await self.read_body(scope, receive, state)
        plan = self.plan(scope, state)
        admission = await self.services.admitter.admit(plan)
        settled = await auth.settle_revocation(self.services, state, plan, admission)
        state.admission = settled or unreachable(plan)
        batch = state.after = AfterBatch()

        async def send_after_batch(message: Message) -> None:
            if message["type"] == "http.response.start":
                await batch.send(self.services.redis_link)
            await send(message)

        await self.app(scope, receive, send_after_batch)

    async def read_body(self, scope: Scope, receive: Receive, state: RequestState) -> Receive:
        """The body, read once and given again to the handler; a refusal waits its turn."""
        try:
            state.body = await read_request_body(
                scope, receive, bytes_max=self.services.settings.request_body_bytes_max
            )
        except ApiError as error:
            state.refusal = error
            return receive
        return replay(state.body.raw, receive)

    def plan(self, scope: Scope, state: RequestState) -> Plan:
        """Each concern's part. The key is read first: a request refused for its key or body is
        not charged to the tiers that count money-moving requests."""
        settings = self.services.settings
        state.idempotency_key = idempotency.plan_key(scope, state)
        tag, tiers = rate_limit.plan_tiers(settings, state, scope)
        plan = Plan(tag=tag, tiers=tiers)
        if state.principal is None:
            return plan
        plan.denylist_keys = auth.denylist_keys(state.principal)
        if state.idempotency_key is not None:
            plan.idempotency_key = idempotency.redis_key(state.principal, state.idempotency_key)
            plan.fingerprint = state.idempotency_key.fingerprint.hex()
            plan.in_flight_ttl_ms = settings.idempotency_lock_ttl_s * 1000
        state.cache_view = response_cache.view_of(scope, state)
        if state.cache_view is not None:
            plan.cache_keys = response_cache.keys_of(state.principal, state.cache_view)
        return plan
