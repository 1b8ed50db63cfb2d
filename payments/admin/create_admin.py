"""`python -m payments create-admin --email E`: make a user an admin, creating the user (with the
password from ADMIN_PASSWORD, or typed at a prompt on a terminal) if it does not exist. No HTTP
route grants a role; this command, run by an operator, is the only way."""

from __future__ import annotations

import argparse
import getpass
import os
import sys

import asyncpg

from payments.identity.passwords import Passwords
from payments.platform.db import Q
from payments.settings import Settings

PASSWORD_LENGTH_MIN = 12  # an admin's password guards every account: longer than a user's 8


class AdminError(ValueError):
    """The command cannot go on; the message says why (never with the password)."""


def read_arguments(arguments: list[str]) -> str:
    parser = argparse.ArgumentParser(prog="python -m payments create-admin")
    parser.add_argument("--email", required=True, help="the admin's email")
    return str(parser.parse_args(arguments).email)


def read_password() -> str:
    """ADMIN_PASSWORD, or a prompt when a person is at a terminal."""
    password = os.environ.get("ADMIN_PASSWORD", "")
    if not password and sys.stdin.isatty():
        password = getpass.getpass("password for the new admin: ")
    if len(password) < PASSWORD_LENGTH_MIN:
        raise AdminError(
            f"set ADMIN_PASSWORD (at least {PASSWORD_LENGTH_MIN} characters), or run on a terminal"
        )
    return password


async def create_admin(settings: Settings, database_url: str, email: str) -> bool:
    """Make `email` an admin; True when the user was created for it. An existing user keeps its
    password. The grant is written to the audit log in the same statement."""
    conn = await asyncpg.connect(database_url, statement_cache_size=0)  # a pooler may be between
    passwords = Passwords(settings)
    try:
        created = False
        if await conn.fetchrow(Q.user_by_email, email) is None:
            password_hash = await passwords.hash(read_password())
            async with conn.transaction():
                created = await conn.fetchval(Q.register_user, email, "Admin", password_hash,
                                              settings.default_currency, 0) is not None  # fmt: skip
        promoted = await conn.fetchval(Q.make_admin, email)
        if promoted is None:
            raise AdminError("the user could not be found or created")
        return created
    finally:
        await conn.close()
        passwords.close()
