"""The ledger: a transaction's entries and their balance, an account's entries and hash chain,
reconciliation, and that each finds damage planted directly in the database at the right id."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import itertools
from typing import Any

import asyncpg
import httpx
from redis.asyncio import Redis

from payments.platform.housekeeping import check_ledger
from payments.settings import Settings
from tests.api.test_payments import pay, running_worker, settled
from tests.api.users import User, make_admin, new_user, reverse, send
from tests.books import reset_books

LEDGER = "/api/v1/ledger"


def recomputed(entry: dict[str, Any]) -> str:
    """The hash as README and sql/0006 tell an auditor to compute it."""
    fields = [entry["id"], entry["transaction_id"], entry["account_number"], entry["direction"],
              entry["amount"], entry["currency"], entry["balance_after"], entry["created_at"],
              entry["prev_hash"] or ""]  # fmt: skip
    return hashlib.sha256("|".join(map(str, fields)).encode()).hexdigest()


async def repair(db: asyncpg.Pool, sql: str, *args: Any) -> None:
    """A change to history, as only an operator's deliberate repair may make one."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL payments.history_repair = 'on'")
        await conn.execute(sql, *args)


async def entries_of(client: httpx.AsyncClient, user: User, account: str) -> list[dict[str, Any]]:
    """All of an account's entries, newest first, page by page."""
    found: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"limit": "7", **({"cursor": cursor} if cursor else {})}
        page = await client.get(f"{LEDGER}/accounts/{account}/entries", params=params,
                                headers=user.auth)  # fmt: skip
        assert page.status_code == 200, page.text
        found += page.json()["data"]
        cursor = page.json()["next_cursor"]
        if cursor is None:
            return found


async def chain(client: httpx.AsyncClient, user: User, account: str) -> dict[str, Any]:
    answer = await client.get(f"{LEDGER}/accounts/{account}/chain", headers=user.auth)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


async def test_a_transactions_entries_balance_and_hide_the_other_partys_balance(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    sent = await send(client, alice, bob.account_number, "12.34")
    transfer_id = sent.json()["id"]
    seen = await client.get(f"{LEDGER}/transactions/{transfer_id}", headers=alice.auth)
    assert seen.status_code == 200
    debit, credit = seen.json()["data"]
    assert (debit["direction"], debit["account_number"], debit["amount"], debit["currency"]) == (
        "debit", alice.account_number, "12.34", "USD")  # fmt: skip
    assert debit["balance_after"] == "987.66" and debit["hash"] == recomputed(debit)
    assert debit["transaction_id"] == credit["transaction_id"] == transfer_id
    # Bob's entry, seen by Alice: no balance, no hashes (they would disclose his balance).
    assert (credit["account_number"], credit["direction"], credit["amount"]) == (
        bob.account_number, "credit", "12.34")  # fmt: skip
    assert credit["balance_after"] is credit["hash"] is credit["prev_hash"] is None
    verified = await client.get(f"{LEDGER}/transactions/{transfer_id}/verify", headers=bob.auth)
    assert verified.json() == {"transaction_id": transfer_id, "balanced": True, "currencies": [
        {"currency": "USD", "debits": "12.34", "credits": "12.34"}]}  # fmt: skip

    stranger = await new_user(client, "stranger")
    for path in (f"{LEDGER}/transactions/{transfer_id}", f"{LEDGER}/transactions/{transfer_id}/verify",
                 f"{LEDGER}/transactions/999999999", f"{LEDGER}/transactions/x1"):  # fmt: skip
        refused = await client.get(path, headers=stranger.auth)
        assert (refused.status_code, refused.json()["code"]) == (404, "not_found"), path

    admin = await make_admin(client, db)
    whole = await client.get(f"{API_ADMIN}/transactions/{transfer_id}", headers=admin.auth)
    assert [entry["hash"] == recomputed(entry) for entry in whole.json()["data"]] == [True, True]
    assert (
        await client.get(f"{API_ADMIN}/transactions/{transfer_id}", headers=alice.auth)
    ).status_code == 403

    # One side gone: not balanced, and still found (a 404 would hide the damage).
    await repair(db, "DELETE FROM ledger_entry WHERE transfer_id = $1 AND direction = 'credit'",
                 transfer_id)  # fmt: skip
    broken = await client.get(f"{API_ADMIN}/transactions/{transfer_id}/verify", headers=admin.auth)
    assert broken.status_code == 200
    assert broken.json()["balanced"] is False
    assert broken.json()["currencies"] == [
        {"currency": "USD", "debits": "12.34", "credits": "0.00"}
    ]
    await reset_books(db)  # broken on purpose: the next test starts afresh


API_ADMIN = "/api/v1/admin/ledger"


async def test_an_accounts_entries_page_newest_first_and_chain_by_hash(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    for cents in range(1, 11):
        assert (await send(client, alice, bob.account_number, f"0.{cents:02d}")).status_code == 201
    entries = await entries_of(client, alice, alice.account_number)
    assert len(entries) == 11  # the opening balance and ten transfers
    assert [entry["id"] for entry in entries] == sorted((e["id"] for e in entries), reverse=True)
    assert entries[0]["balance_after"] == "999.45" and entries[-1]["balance_after"] == "1000.00"
    oldest_first = entries[::-1]
    assert oldest_first[0]["prev_hash"] is None
    for before, entry in itertools.pairwise(oldest_first):
        assert entry["prev_hash"] == before["hash"]
    assert all(entry["hash"] == recomputed(entry) for entry in entries)
    assert await chain(client, alice, alice.account_number) == {"valid": True, "entries": 11}

    refused = await client.get(
        f"{LEDGER}/accounts/{bob.account_number}/entries", headers=alice.auth
    )
    assert (refused.status_code, refused.json()["code"]) == (404, "not_found")
    refused = await client.get(f"{LEDGER}/accounts/{bob.account_number}/chain", headers=alice.auth)
    assert refused.status_code == 404
    admin = await make_admin(client, db)
    reached = await client.get(
        f"{API_ADMIN}/accounts/{bob.account_number}/chain", headers=admin.auth
    )
    assert reached.json() == {"valid": True, "entries": 11}
    bad = await client.get(f"{LEDGER}/accounts/{alice.account_number}/entries?cursor=forged",
                           headers=alice.auth)  # fmt: skip
    assert (bad.status_code, bad.json()["code"]) == (422, "validation_error")


async def test_forty_concurrent_transfers_on_one_account_leave_its_chain_whole(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    others = [await new_user(client, f"peer{n}") for n in range(8)]
    sends = [send(client, alice, peer.account_number, "1.00") for peer in others for _ in range(3)]
    sends += [send(client, peer, alice.account_number, "2.00") for peer in others for _ in range(2)]
    answers = await asyncio.gather(*sends)
    assert [answer.status_code for answer in answers] == [201] * 40
    assert await chain(client, alice, alice.account_number) == {"valid": True, "entries": 41}
    entries = await entries_of(client, alice, alice.account_number)
    assert entries[0]["balance_after"] == "1008.00"  # 1000 - 24 + 32
    assert all(entry["hash"] == recomputed(entry) for entry in entries)
    for peer in others:
        assert await chain(client, peer, peer.account_number) == {"valid": True, "entries": 6}


async def test_a_changed_moved_or_deleted_entry_is_found_where_it_is(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    for _ in range(4):
        await send(client, alice, bob.account_number, "1.00")
    ids = [entry["id"] for entry in await entries_of(client, alice, alice.account_number)][::-1]
    middle, newest = ids[2], ids[-1]

    await repair(
        db, "UPDATE ledger_entry SET amount_minor = amount_minor + 1 WHERE id = $1", middle
    )
    assert await chain(client, alice, alice.account_number) == {
        "valid": False, "entries": 5, "tampered_at": middle,
        "detail": "the entry's fields no longer give its hash"}  # fmt: skip
    await repair(
        db, "UPDATE ledger_entry SET amount_minor = amount_minor - 1 WHERE id = $1", middle
    )
    assert (await chain(client, alice, alice.account_number))["valid"] is True

    bob_account = await db.fetchval(
        "SELECT id FROM account WHERE account_number = $1", bob.account_number
    )
    await repair(db, "UPDATE ledger_entry SET account_id = $2 WHERE id = $1", middle, bob_account)
    assert (await chain(client, bob, bob.account_number))["tampered_at"] == middle
    assert (await chain(client, alice, alice.account_number))["tampered_at"] == ids[3]
    await repair(db, "DELETE FROM ledger_entry WHERE id = $1", middle)
    found = await chain(client, alice, alice.account_number)
    assert (found["valid"], found["entries"], found["tampered_at"]) == (False, 4, ids[3])
    assert found["detail"] == "the entry's prev_hash is not the hash of the entry before it"

    await repair(db, "DELETE FROM ledger_entry WHERE id = $1", newest)  # the tail cut off
    assert (await chain(client, alice, alice.account_number))["tampered_at"] == ids[3]
    await reset_books(db)


async def reconcile(
    client: httpx.AsyncClient, user: User, account: str, **dates: str
) -> httpx.Response:
    today = datetime.datetime.now(datetime.UTC).date()
    body = {"start_date": str(today - datetime.timedelta(days=1)), "end_date": str(today), **dates}
    return await client.post(f"/api/v1/accounts/{account}/reconcile", json=body, headers=user.auth)


async def test_reconciliation_of_clean_books_with_reversals_and_payments_is_balanced(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis,
) -> None:  # fmt: skip
    sent = await send(client, alice, bob.account_number, "100.00")
    assert (await reverse(client, bob, sent.json()["id"])).status_code == 201
    assert (await pay(client, alice, bob.account_number, "30.00")).status_code == 202
    async with running_worker(settings, db, redis):
        await settled(db, 1)
    answer = await reconcile(client, alice, alice.account_number)
    assert answer.status_code == 200, answer.text
    report = answer.json()
    today = datetime.datetime.now(datetime.UTC).date()
    assert report == {
        "account_number": alice.account_number, "currency": "USD",
        "start_date": str(today - datetime.timedelta(days=1)), "end_date": str(today),
        "opening_balance": "0.00", "closing_balance": "970.00", "entry_count": 4,
        "transaction_count": 4, "balanced": True, "discrepancies": [],
    }  # fmt: skip
    earlier = await reconcile(client, alice, alice.account_number, start_date="2020-01-01",
                              end_date="2020-12-31")  # fmt: skip
    assert (earlier.json()["entry_count"], earlier.json()["closing_balance"]) == (0, "0.00")


async def test_reconciliation_finds_each_kind_of_damage_planted_in_the_books(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool, settings: Settings,
    redis: Redis,
) -> None:  # fmt: skip
    first = (await send(client, alice, bob.account_number, "5.00")).json()["id"]
    second = (await send(client, alice, bob.account_number, "6.00")).json()["id"]
    third = (await send(client, alice, bob.account_number, "7.00")).json()["id"]
    assert (await pay(client, alice, bob.account_number, "8.00")).status_code == 202
    async with running_worker(settings, db, redis):
        await settled(db, 1)
    payment_id = await db.fetchval("SELECT id FROM payment")
    entry = {row["direction"]: row["id"] for row in await db.fetch(
        "SELECT id, direction FROM ledger_entry WHERE transfer_id = $1", second)}  # fmt: skip

    await repair(db, "UPDATE ledger_entry SET amount_minor = 601 WHERE id = $1", entry["debit"])
    await repair(
        db, "DELETE FROM ledger_entry WHERE transfer_id = $1 AND direction = 'debit'", third
    )
    await db.execute("UPDATE payment SET transfer_id = $1 WHERE id = $2", first, payment_id)
    await db.execute("UPDATE account SET balance_minor = balance_minor + 1 WHERE account_number = $1",
                     alice.account_number)  # fmt: skip
    admin = await make_admin(client, db)
    report = (await reconcile(client, admin, alice.account_number)).json()
    assert report["balanced"] is False
    found = {(d["kind"], d["transaction_id"], d["entry_id"], d["payment_id"])
             for d in report["discrepancies"]}  # fmt: skip
    third_credit = await db.fetchval(
        "SELECT id FROM ledger_entry WHERE transfer_id = $1 AND direction = 'credit'", third
    )
    next_debit = await db.fetchval(
        "SELECT min(e.id) FROM ledger_entry e JOIN account a ON a.id = e.account_id"
        " WHERE a.account_number = $1 AND e.id > $2",
        alice.account_number,
        entry["debit"],
    )
    assert {
        ("amount_mismatch", second, entry["debit"], None),
        ("unbalanced_transaction", second, None, None),
        ("chain_break", second, entry["debit"], None),
        ("balance_mismatch", second, entry["debit"], None),
        ("missing_entry", third, None, None),
        ("unbalanced_transaction", third, None, None),
        ("payment_without_transaction", first, None, payment_id),
        ("balance_mismatch", None, None, None),
    } <= found
    # The entry after the deleted one (the payment's debit) no longer links to its predecessor.
    next_transfer = await db.fetchval(
        "SELECT transfer_id FROM ledger_entry WHERE id = $1", next_debit
    )
    assert ("chain_break", next_transfer, next_debit, None) in found
    assert third_credit is not None  # the credit side stays; only the debit went
    # The periodic check counts what reconciliation finds, and more: it reads every account.
    assert await check_ledger(db) >= len(found)
    await reset_books(db)


async def test_reconcile_is_the_owners_or_an_admins_and_checks_its_dates(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    stranger = await reconcile(client, bob, alice.account_number)
    assert (stranger.status_code, stranger.json()["code"]) == (404, "not_found")
    for dates, field in (({"start_date": "2026-02-30"}, "start_date"),
                         ({"start_date": "2026-01-02", "end_date": "2026-01-01"}, "end_date"),
                         ({"start_date": "2025-01-01", "end_date": "2026-01-02"}, "end_date"),
                         ({"start_date": "1 May"}, "start_date")):  # fmt: skip
        refused = await reconcile(client, alice, alice.account_number, **dates)
        assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), dates
        assert refused.json()["errors"][0]["field"] == field
    a_leap_year = await reconcile(client, alice, alice.account_number, start_date="2024-01-01",
                                  end_date="2024-12-31")  # fmt: skip
    assert a_leap_year.status_code == 200  # 366 days
    admin = await make_admin(client, db)
    assert (await reconcile(client, admin, alice.account_number)).json()["balanced"] is True
