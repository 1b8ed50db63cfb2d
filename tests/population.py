"""Many users at once for the load runs (make chaos, make bench): each with a funded account and
a signed-in session, made directly in the database, as registering and signing in a thousand
users through argon2 would take minutes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import asyncpg

from payments.identity.tokens import AccessTokens
from payments.platform.db import Q

NOT_A_PASSWORD_HASH = "$argon2id$not-a-real-hash-000000"  # these users never sign in


@dataclass(frozen=True)
class FundedUser:
    user_id: int
    account_number: str
    token: str


async def open_funded_users(
    database_url: str, tokens: AccessTokens, *, prefix: str, count: int, opening_minor: int,
    currency: str = "USD",
) -> list[FundedUser]:  # fmt: skip
    """`count` users named `<prefix><n>@example.com`, each holding `opening_minor` paid from the
    currency's funding account through the ledger, so the books stay balanced."""
    conn = await asyncpg.connect(database_url)
    users = []
    try:
        for n in range(count):
            email = f"{prefix}{n}@example.com"
            created = await conn.fetchval(Q.register_user, email, f"{prefix} {n}",
                                          NOT_A_PASSWORD_HASH, currency, opening_minor)  # fmt: skip
            assert created is not None, email
            row = await conn.fetchrow(
                "SELECT u.id, a.account_number FROM app_user u JOIN account a ON a.user_id = u.id"
                " WHERE u.email = $1", email)  # fmt: skip
            family_id = uuid.uuid4()
            await conn.execute(Q.start_token_family, family_id, row["id"])
            token = tokens.issue(user_id=row["id"], role="user", family_id=str(family_id)).token
            users.append(FundedUser(row["id"], row["account_number"], token))
    finally:
        await conn.close()
    return users
