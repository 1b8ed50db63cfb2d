"""Access tokens (a verified token is remembered, but never past its expiry) and password hashing."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
import time

import pytest
from jose import jwt
from pydantic import SecretStr

from payments.http.errors import ApiError
from payments.identity import tokens as security
from payments.identity.passwords import Passwords
from payments.identity.tokens import AccessTokens
from payments.settings import Settings

SETTINGS = Settings(env="test", jwt_secret=SecretStr("unit-secret-" + "x" * 40),
                    argon2_time_cost=1, argon2_memory_cost_kib=1024)  # fmt: skip


def test_a_remembered_token_still_expires() -> None:
    """A token remembered while it was valid is refused once its `exp` (and leeway) has passed."""
    tokens = AccessTokens(SETTINGS)
    token = tokens.issue(user_id=7, role="user", family_id="f").token
    assert tokens.verify(token).user_id == 7
    assert token in tokens.verified

    expired_at = int(time.time()) - SETTINGS.jwt_leeway_s - 1
    claims = {**jwt.get_unverified_claims(token), "exp": expired_at}
    expired = jwt.encode(claims, SETTINGS.jwt_secret.get_secret_value(),
                         headers={"kid": SETTINGS.jwt_key_id, "typ": "at+jwt"})  # fmt: skip
    tokens.verified[expired] = dataclasses.replace(tokens.verified[token], expires_at=expired_at)
    with pytest.raises(ApiError) as refused:
        tokens.verify(expired)
    assert refused.value.problem.code == "invalid_token"


def test_a_token_altered_by_one_character_is_not_taken_from_memory() -> None:
    tokens = AccessTokens(SETTINGS)
    token = tokens.issue(user_id=7, role="user", family_id="f").token
    tokens.verify(token)
    with pytest.raises(ApiError):
        # Not the last character: its low bits are padding, and some changes decode the same.
        tokens.verify(token[:-10] + ("A" if token[-10] != "A" else "B") + token[-9:])


def test_the_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(security, "VERIFIED_TOKENS_MAX", 3)
    tokens = AccessTokens(SETTINGS)
    issued = [tokens.issue(user_id=n, role="user", family_id="f").token for n in range(1, 6)]
    for token in issued:
        assert tokens.verify(token).user_id == issued.index(token) + 1
        assert len(tokens.verified) <= 3


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread niceness is Linux's")
async def test_password_hashing_runs_at_the_lower_priority_and_the_event_loop_does_not() -> None:
    passwords = Passwords(SETTINGS)

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    in_pool = await asyncio.get_running_loop().run_in_executor(passwords.executor, niceness)
    assert in_pool == max(SETTINGS.password_hash_nice, niceness())  # it can only be raised
    assert SETTINGS.password_hash_nice > niceness() == 0
    assert await passwords.verify(await passwords.hash("a password"), "a password", client="t")
