"""The ledger-chain scenario: GET /ledger/accounts/{n}/chain on an account with CHAIN_ENTRIES
entries, its time, and the API process's resident memory before and after (the chain is walked in
PostgreSQL, so the API's memory must not grow with it)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import asyncpg

from tests.bench.client import Connection, request
from tests.population import FundedUser
from tests.procfs import listening_on

CHAIN_ENTRIES = 100_000
BATCH = 2_000  # transfers a transaction: one account row updated this often stays cheap
CHECKS = 5

# BATCH transfers of 0.01 from the account to its peers in turn, through move_money_v1 like every
# transfer, so that the entries chain as they do in service.
MOVE_BATCH = """
SELECT count(m.transfer_id)
  FROM generate_series(1, $3) g,
       LATERAL move_money_v1($1, ($2::bigint[])[1 + g % cardinality($2::bigint[])], 1,
                             'USD', 'transfer', NULL, NULL, NULL) m
"""


async def grow_chain(database_url: str, owner: FundedUser, peers: list[FundedUser]) -> int:
    """Entries on the owner's account until it holds CHAIN_ENTRIES; their count."""
    conn = await asyncpg.connect(database_url)
    try:
        ids = {row["account_number"]: row["id"] for row in await conn.fetch(
            "SELECT id, account_number FROM account WHERE account_number = ANY($1)",
            [owner.account_number] + [peer.account_number for peer in peers])}  # fmt: skip
        peer_ids = [ids[peer.account_number] for peer in peers]
        count_entries = "SELECT count(*) FROM ledger_entry WHERE account_id = $1"
        while (
            held := await conn.fetchval(count_entries, ids[owner.account_number])
        ) < CHAIN_ENTRIES:
            batch = min(BATCH, CHAIN_ENTRIES - held)
            moved = await conn.fetchval(MOVE_BATCH, ids[owner.account_number], peer_ids, batch)
            assert moved == batch, f"{batch - moved} transfers of the batch were refused"
        return int(held)
    finally:
        await conn.close()


def resident_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak so far) of a process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(field)


async def chain_check(
    port: int, database_url: str, users: list[FundedUser]
) -> tuple[list[float], dict[str, object]]:
    """The timings of CHECKS chain checks, and what was measured around them."""
    owner, peers = users[0], users[1:51]
    started = time.perf_counter()
    entries = await grow_chain(database_url, owner, peers)
    print(f"  ledger-chain: {entries} entries on one account in {time.perf_counter() - started:.0f} s",
          file=sys.stderr)  # fmt: skip
    api = min(listening_on(port))  # the API process (with WORKERS=1, the only one)
    rss_before, peak_before = resident_kib(api, "VmRSS"), resident_kib(api, "VmHWM")
    connection = await Connection.open("127.0.0.1", port)
    timings = []
    try:
        raw = request("GET", f"/api/v1/ledger/accounts/{owner.account_number}/chain",
                      {"Authorization": f"Bearer {owner.token}"})  # fmt: skip
        for _ in range(CHECKS):
            started = time.perf_counter()
            status, _, body = await connection.send(raw)
            timings.append(time.perf_counter() - started)
            assert status == 200 and b'"valid":true' in body, body[:200]
    finally:
        await connection.close()
    return timings, {
        "entries": entries, "api_rss_kib_before": rss_before, "api_rss_kib_after": resident_kib(api, "VmRSS"),
        "api_peak_kib_before": peak_before, "api_peak_kib_after": resident_kib(api, "VmHWM"),
    }  # fmt: skip
