"""The contract's two seed users, created once (a second seed changes nothing)."""

from __future__ import annotations

import asyncpg
import structlog

from payments.identity.passwords import Passwords
from payments.money.amounts import to_minor_units
from payments.platform.db import Q
from payments.settings import Settings

log = structlog.get_logger(__name__)

SEED_USERS = (
    ("alice@finpay.dev", "Alice Finpay", "password123", "ZAR", "10000.00"),
    ("bob@finpay.dev", "Bob Finpay", "password123", "ZAR", "5000.00"),
)


async def seed(settings: Settings, database_url: str) -> None:
    passwords = Passwords(settings)
    conn = await asyncpg.connect(database_url, statement_cache_size=0)  # a pooler may be between
    try:
        for email, full_name, password, currency, opening in SEED_USERS:
            if await conn.fetchrow(Q.user_by_email, email) is not None:
                continue
            password_hash = await passwords.hash(password)
            await conn.fetchval(Q.register_user, email, full_name, password_hash, currency,
                                to_minor_units(opening, currency))  # fmt: skip
            log.info("seed_user_created", email=email)
    finally:
        await conn.close()
        passwords.close()
