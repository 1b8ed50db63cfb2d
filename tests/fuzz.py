"""make fuzz: schemathesis against the live service, from openapi.yaml. Zero 5xx, and every
response must match the contract (status, content type, headers and schema).

Every check runs but positive_data_acceptance, which expects any schema-valid body to succeed:
an unknown account number, a cursor we did not sign or an amount above the balance is valid by
schema and refused by design. Logout is left out: it would revoke the token the run uses. The
run's user is an admin (as create-admin makes one), so that the admin routes are fuzzed too.
FUZZ_EXAMPLES sets the examples per operation (each makes several requests)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import asyncpg
import httpx

from payments.identity.seed import SEED_USERS, seed
from payments.platform.db import Q
from payments.platform.embedded import servers
from payments.platform.migrate import migrate
from tests.api.processes import server
from tests.conftest import ROOT, make_settings

HIGH = "1000000/1m"


async def make_admin(database_url: str, email: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval(Q.make_admin, email) is not None
    finally:
        await conn.close()


def main() -> int:
    examples = os.environ.get("FUZZ_EXAMPLES", "60")
    with tempfile.TemporaryDirectory() as scratch, servers(
        Path(scratch), database_url=os.environ.get("DATABASE_URL") or None,
        redis_url=os.environ.get("REDIS_URL") or None,
    ) as (database_url, redis_url):  # fmt: skip
        settings = make_settings(database_url, redis_url)
        asyncio.run(migrate(database_url))
        asyncio.run(seed(settings, database_url))
        asyncio.run(make_admin(database_url, SEED_USERS[0][0]))
        limits = {
            "RATE_LIMIT_GLOBAL": HIGH,
            "RATE_LIMIT_AUTH": HIGH,
            "RATE_LIMIT_TRANSFER": HIGH,
            "RATE_LIMIT_LOGIN": HIGH,
        }
        with server(settings, Path(scratch), workers=1, **limits) as (base_url, _):
            email, _, password, _, _ = SEED_USERS[0]
            login = httpx.post(
                f"{base_url}/api/v1/auth/login", json={"email": email, "password": password}
            )
            token = login.json()["access_token"]
            command = [
                sys.executable, "-m", "schemathesis.cli", "run", str(ROOT / "openapi.yaml"),
                "--url", base_url, "--header", f"Authorization: Bearer {token}",
                "--exclude-operation-id", "logout", "--exclude-checks", "positive_data_acceptance",
                "--max-examples", examples, "--generation-deterministic", "--request-timeout", "10",
            ]  # fmt: skip
            return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
