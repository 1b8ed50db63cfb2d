"""Admission: everything a request needs from Redis before its handler, in one round trip.

One Lua script checks the denylist, decides every rate-limit tier, looks up the idempotency key's
fast copy (setting the in-flight marker for a new request) and reads the response cache. What the
layers write back after the handler (the stored answer, cache fills and invalidations) is queued in
an AfterBatch and sent together just before the response starts. Both go through the process's
shared connection (redis_link.py).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field
from typing import Any, Literal

import structlog
from redis.exceptions import RedisError

from payments.platform import metrics, redis_keys
from payments.platform.redis_link import RedisLink, Script
from payments.platform.settings import RateLimit

log = structlog.get_logger(__name__)
REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# Rate limits use GCRA (the generic cell rate algorithm, as in redis-cell): one timestamp per key,
# the theoretical arrival time (TAT). With a quota of q requests per window w, each request
# advances TAT by the emission interval T = w / q, and a request is allowed while the new TAT is
# at most w ahead of now: q requests may come in a burst, then one every T. Unlike a fixed window
# it never admits 2q across a window edge, and unlike a sliding log it stores one number.
# All tiers are decided together: a request refused by one tier is charged to none. The clock is
# Redis's own (TIME), so several API hosts agree whatever their clocks say.
ADMISSION_SCRIPT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

if ARGV[1] == '1' then
  if redis.call('EXISTS', KEYS[1]) == 1 then
    if redis.call('EXISTS', KEYS[2], KEYS[3]) > 0 then return {'revoked'} end
  else
    return {'denylist-unknown'}
  end
end

local idem = 'none'
local stored_status, stored_body = '', ''
if ARGV[2] == '1' then
  local h = redis.call('HMGET', KEYS[4], 'fingerprint', 'status', 'body')
  if not h[1] then idem = 'new'
  elseif h[1] ~= ARGV[3] then idem = 'reused'
  elseif not h[2] then idem = 'in_use'
  else idem = 'replay'; stored_status = h[2]; stored_body = h[3] end
end
local charge_new_only = (idem == 'none' or idem == 'new')

local n = tonumber(ARGV[6])
local denied, retry_ms = 0, 0
local tats, new_tats, charged = {}, {}, {}
for i = 1, n do
  local interval = tonumber(ARGV[4 + 3 * i])
  local period = tonumber(ARGV[5 + 3 * i])
  charged[i] = (ARGV[6 + 3 * i] == '0') or charge_new_only
  local tat = tonumber(redis.call('GET', KEYS[6 + i]) or now)
  if tat < now then tat = now end
  tats[i] = tat
  new_tats[i] = tat + interval
  if charged[i] and new_tats[i] - period > now then
    local wait = new_tats[i] - period - now
    if denied == 0 or wait > retry_ms then denied = i; retry_ms = wait end
  end
end

local reply = {'ok', idem, stored_status, stored_body, denied, retry_ms, '', ''}
for i = 1, n do
  local interval = tonumber(ARGV[4 + 3 * i])
  local period = tonumber(ARGV[5 + 3 * i])
  local tat = tats[i]
  if denied == 0 and charged[i] then
    tat = new_tats[i]
    redis.call('SET', KEYS[6 + i], string.format('%.0f', tat), 'PX', math.ceil(tat - now) + 1)
  end
  reply[#reply + 1] = math.floor((now + period - tat) / interval)
  reply[#reply + 1] = math.ceil((tat - now) / 1000)
end

if denied == 0 and idem == 'new' then
  redis.call('HSET', KEYS[4], 'fingerprint', ARGV[3])
  redis.call('PEXPIRE', KEYS[4], ARGV[4])
end
if denied == 0 and ARGV[5] == '1' then
  local version = redis.call('GET', KEYS[5]) or '0'
  local entry = redis.call('HMGET', KEYS[6], 'version', 'body')
  reply[7] = version
  if entry[1] == version then reply[8] = entry[2] end
end
return reply
"""

IdempotencyState = Literal["none", "new", "replay", "in_use", "reused", "unknown"]


@dataclass(frozen=True, slots=True)
class Tier:
    """A rate-limit tier that applies to this request; new_only tiers (the transfer tier) are not
    charged for a replay or a refused duplicate, only for money that may move."""

    limit: RateLimit
    key: str
    new_only: bool = False


@dataclass(frozen=True, slots=True)
class TierState:
    name: str
    quota: int
    window_s: int
    remaining: int
    reset_s: int


@dataclass(slots=True)
class Plan:
    """What one request asks of Redis."""

    tag: str
    tiers: list[Tier]
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
    denied: TierState | None = None
    retry_after_s: int = 0
    tiers: list[TierState] = field(default_factory=list)
    cache_version: str | None = None
    cached_body: bytes | None = None


class Admitter:
    def __init__(self, link: RedisLink) -> None:
        self.link = link
        self.script = Script(ADMISSION_SCRIPT)

    async def admit(self, plan: Plan) -> Admission:
        unused = f"payments:{plan.tag}:unused"
        denylist = plan.denylist_keys or (unused, unused, unused)
        cache = plan.cache_keys or (unused, unused)
        keys = [*denylist, plan.idempotency_key or unused, *cache, *(t.key for t in plan.tiers)]
        arguments: list[Any] = [
            "1" if plan.denylist_keys else "0",
            "1" if plan.idempotency_key else "0",
            plan.fingerprint,
            plan.in_flight_ttl_ms,
            "1" if plan.cache_keys else "0",
            len(plan.tiers),
        ]
        for tier in plan.tiers:
            interval_ms = tier.limit.period_s * 1000 / tier.limit.count
            arguments += [
                f"{interval_ms:.3f}",
                tier.limit.period_s * 1000,
                "1" if tier.new_only else "0",
            ]
        try:
            reply = await self.link.run_script(self.script, keys, arguments)
        except REDIS_ERRORS:
            log.warning("redis_unavailable", layer="admission")
            metrics.REDIS_FALLBACKS.labels(layer="admission").inc()
            return Admission(
                redis_up=False, idempotency="unknown" if plan.idempotency_key else "none"
            )
        return parse_reply(plan, reply)


def parse_reply(plan: Plan, reply: list[Any]) -> Admission:
    verdict = reply[0].decode() if isinstance(reply[0], bytes) else str(reply[0])
    if verdict == "revoked":
        return Admission(revoked=True)
    if verdict == "denylist-unknown":
        return Admission(denylist_known=False)
    tiers = [
        TierState(
            t.limit.name,
            t.limit.count,
            t.limit.period_s,
            max(0, int(reply[8 + 2 * i])),
            max(0, int(reply[9 + 2 * i])),
        )
        for i, t in enumerate(plan.tiers)
    ]
    denied_index = int(reply[4])
    admission = Admission(
        idempotency=reply[1].decode(),
        stored_status=int(reply[2]) if reply[2] else 0,
        stored_body=reply[3] or b"",
        tiers=tiers,
        cache_version=reply[6].decode() if reply[6] else None,
        cached_body=reply[7] or None,
    )
    if denied_index:
        retry_after_s = max(1, -(-int(reply[5]) // 1000))
        denied = tiers[denied_index - 1]
        admission.denied = TierState(denied.name, denied.quota, denied.window_s, 0, retry_after_s)
        admission.tiers[denied_index - 1] = admission.denied
        admission.retry_after_s = retry_after_s
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


def client_address(scope: MutableMapping[str, Any]) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


def denylist_keys(user_id: int, family_id: str, token_id: str) -> tuple[str, str, str]:
    return (
        redis_keys.denylist_ready(user_id),
        redis_keys.revoked_family(user_id, family_id),
        redis_keys.revoked_token(user_id, token_id),
    )
