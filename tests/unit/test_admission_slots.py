"""Every key of one admission script is in one Redis Cluster slot (one hash tag), whatever parts
the request asks for: otherwise a cluster refuses the script (CROSSSLOT) and every request falls
back as if Redis were down."""

from __future__ import annotations

from redis.crc import key_slot

from payments.http.admission import Plan, script_inputs
from payments.http.rate_limit import Tier
from payments.platform import redis_keys
from payments.platform.settings import RateLimit

LIMIT = RateLimit(name="x", count=10, period_s=60)


def slots(plan: Plan) -> set[int]:
    keys, _ = script_inputs(plan)
    return {key_slot(key.encode()) for key in keys}


def test_a_signed_in_request_with_every_part_is_one_slot() -> None:
    tag = redis_keys.user_tag(42)
    plan = Plan(
        tag=tag,
        tiers=[Tier(LIMIT, redis_keys.rate_limit(tag, "global")),
               Tier(LIMIT, redis_keys.rate_limit(tag, "transfer"), True)],
        denylist_keys=(redis_keys.denylist_ready(42), redis_keys.revoked_family(42, "f"),
                       redis_keys.revoked_token(42, "t")),
        idempotency_key=redis_keys.idempotency(42, "a key {with braces}"),
        cache_keys=(redis_keys.cache_version(42), redis_keys.cache_entry(42, "accounts")),
    )  # fmt: skip
    assert slots(plan) == {key_slot(b"u:42")}


def test_anonymous_and_login_requests_are_one_slot_each() -> None:
    address = redis_keys.client_tag("10.0.0.7")
    anonymous = Plan(tag=address, tiers=[Tier(LIMIT, redis_keys.rate_limit(address, "auth"))])
    assert slots(anonymous) == {key_slot(b"ip:10.0.0.7")}
    account = redis_keys.login_tag("ab" * 16)
    login = Plan(tag=account, tiers=[Tier(LIMIT, redis_keys.rate_limit(account, "login"))])
    assert slots(login) == {key_slot(("login:" + "ab" * 16).encode())}
