"""Identity's settings: token keys and lifetimes, and the cost of a password hash."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, SecretStr

from payments.platform.settings import Env, Section, parse_duration_s


class IdentitySettings(Section):
    jwt_secret: Annotated[SecretStr, Env("JWT_SECRET")] = SecretStr("")
    # The `kid` header; a new id with a new secret rotates the key.
    jwt_key_id: Annotated[str, Env("JWT_KEY_ID"), Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = "k1"
    jwt_issuer: str = "payments"
    jwt_audience: str = "payments-api"
    jwt_leeway_s: int = 30  # clock skew we forgive between hosts
    access_token_ttl_s: Annotated[int, Env("ACCESS_TOKEN_TTL", parse_duration_s), Field(ge=1)] = (
        15 * 60
    )
    refresh_token_ttl_s: Annotated[int, Env("REFRESH_TOKEN_TTL", parse_duration_s), Field(ge=1)] = (
        7 * 86400
    )

    # OWASP's minimum for Argon2id: 19 MiB, two passes, one lane (about 60 ms a verify here).
    argon2_time_cost: int = 2
    argon2_memory_cost_kib: int = 19_456
    argon2_parallelism: int = 1
    password_hash_threads: int = 1  # hashing runs in its own pool, off the event loop
    password_hash_queue_max: int = 32  # a login flood waits in a bounded queue, then gets 503
    # One client address may hold this many places in that queue, so that a flood from one
    # address cannot take every place from the real logins of others (raise it where many
    # people sign in from behind one address).
    password_hash_per_client_max: Annotated[
        int, Env("SIGN_IN_CONCURRENCY_PER_ADDRESS"), Field(ge=1)
    ] = 4
    password_hash_nice: int = 19  # hashing threads yield the CPU to requests (Linux niceness)

    api_keys_active_max: int = 20  # unrevoked API keys a user may hold (409 api_key_limit)
    # How long a process trusts what PostgreSQL said of a key before asking again; a revocation
    # reaches every process sooner, through the Redis denylist each request checks.
    api_key_cache_max_age_s: int = 60
    api_key_cache_entries_max: int = 10_000  # keys one process remembers (about 300 B each)
    api_key_last_used_interval_s: int = 60  # last_used_at is written at most this often
