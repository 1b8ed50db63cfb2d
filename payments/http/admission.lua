-- Admission: everything a request asks of Redis before its handler, in one call. The prologue
-- that admission.py puts before this text names the inputs: K.<key>, A.<argument>, and TIERS
-- (one {key, interval_ms, period_ms, new_only} per rate-limit tier); `reply()` returns R (and
-- each tier's state) in the order admission.py reads it.

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- Auth: a revoked session or token is refused before anything is charged. Without the
-- denylist's ready-marker Redis may have forgotten revocations: PostgreSQL is asked instead.
if A.check_denylist == '1' then
  if redis.call('EXISTS', K.denylist_ready) == 0 then
    R.verdict = 'denylist-unknown'; return reply()
  end
  if redis.call('EXISTS', K.revoked_family, K.revoked_token) > 0 then
    R.verdict = 'revoked'; return reply()
  end
end

-- Idempotency: the fast copy of the key's answer, or its in-flight marker.
if A.check_idempotency == '1' then
  local h = redis.call('HMGET', K.idempotency, 'fingerprint', 'status', 'body')
  if not h[1] then R.idempotency = 'new'
  elseif h[1] ~= A.fingerprint then R.idempotency = 'reused'
  elseif not h[2] then R.idempotency = 'in_use'
  else R.idempotency = 'replay'; R.stored_status = h[2]; R.stored_body = h[3] end
end
-- A replay or a refused duplicate moves no money: the new_only tiers are not charged for it.
local charge_new_only = (R.idempotency == 'none' or R.idempotency == 'new')

-- Rate limits, by GCRA (see rate_limit.py): every tier is decided first, and a request refused
-- by one tier is charged to none.
local tats, new_tats, charged = {}, {}, {}
for i, tier in ipairs(TIERS) do
  charged[i] = (tier.new_only == '0') or charge_new_only
  local tat = tonumber(redis.call('GET', tier.key) or now)
  if tat < now then tat = now end
  tats[i] = tat
  new_tats[i] = tat + tier.interval_ms
  if charged[i] and new_tats[i] - tier.period_ms > now then
    local wait = new_tats[i] - tier.period_ms - now
    if R.denied == 0 or wait > R.retry_ms then R.denied = i; R.retry_ms = wait end
  end
end
for i, tier in ipairs(TIERS) do
  local tat = tats[i]
  if R.denied == 0 and charged[i] then
    tat = new_tats[i]
    redis.call('SET', tier.key, string.format('%.0f', tat), 'PX', math.ceil(tat - now) + 1)
  end
  -- What is left, and how long until more becomes available (0 when the quota is full).
  local remaining = math.floor((now + tier.period_ms - tat) / tier.interval_ms)
  local next_ms = 0
  if tat > now then next_ms = tat - tier.period_ms + (remaining + 1) * tier.interval_ms - now end
  TIER_STATES[#TIER_STATES + 1] = remaining
  TIER_STATES[#TIER_STATES + 1] = math.ceil(next_ms)
end

-- The audit log records a refusal at most once a minute per principal (this request's tag) and
-- tier: the refused tier's field in K.refusal_audit holds until when it was last recorded.
if R.denied ~= 0 then
  local field = TIERS[R.denied].key
  local recorded_until = tonumber(redis.call('HGET', K.refusal_audit, field) or '0')
  if recorded_until <= now then
    redis.call('HSET', K.refusal_audit, field, now + tonumber(A.refusal_audit_ms))
    redis.call('PEXPIRE', K.refusal_audit, A.refusal_audit_ms)
    R.audit_refusal = 1
  end
end

if R.denied == 0 and R.idempotency == 'new' then
  redis.call('HSET', K.idempotency, 'fingerprint', A.fingerprint)
  redis.call('PEXPIRE', K.idempotency, A.in_flight_ttl_ms)
end

-- Response cache: the current version of the user's reads, and the entry if it is of it.
if R.denied == 0 and A.read_cache == '1' then
  local version = redis.call('GET', K.cache_version) or '0'
  local entry = redis.call('HMGET', K.cache_entry, 'version', 'body')
  R.cache_version = version
  if entry[1] == version then R.cached_body = entry[2] end
end
return reply()
