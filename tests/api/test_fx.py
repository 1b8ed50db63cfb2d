"""FX: quotes at a locked rate, single use, expiry by the database's clock, 503 rather than a
stale rate, and transfers through the clearing accounts that leave each currency's books at zero."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from payments.http.errors import CATALOG
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.users import User, make_admin, new_user, send
from tests.books import assert_books_balance, balance_minor

QUOTES = "/api/v1/fx/quotes"


async def open_account(client: httpx.AsyncClient, user: User, currency: str) -> str:
    opened = await client.post("/api/v1/accounts", json={"currency": currency}, headers=user.auth)
    assert opened.status_code == 201, opened.text
    number: str = opened.json()["account_number"]
    return number


async def ask_quote(
    client: httpx.AsyncClient, user: User, from_currency: str, to_currency: str, amount: Any
) -> httpx.Response:
    body = {"from_currency": from_currency, "to_currency": to_currency, "from_amount": amount}
    return await client.post(QUOTES, json=body, headers=user.auth)


async def quote_id(
    client: httpx.AsyncClient, user: User, from_currency: str, to_currency: str, amount: str
) -> int:
    quoted = await ask_quote(client, user, from_currency, to_currency, amount)
    assert quoted.status_code == 201, quoted.text
    value: int = quoted.json()["id"]
    return value


def clearing(currency: str, quote: int) -> str:
    """The clearing account of the currency that an FX transfer with this quote goes through: one
    of eight, by the quote's id (sql/0012)."""
    return f"CLEAR{currency}{quote % 8 or ''}"


_versions = itertools.count(1)


def write_rates(path: Path, *, as_of: datetime | None = None, **rates: str) -> None:
    """The rates file rewritten, with a modification time of its own: two writes within one
    tick of the file system's clock would otherwise look like one."""
    document: dict[str, Any] = {"base": "USD", "rates": rates}
    if as_of is not None:
        document["as_of"] = as_of.isoformat()
    path.write_text(json.dumps(document), encoding="utf-8")
    version = next(_versions)
    os.utime(path, ns=(version, version))


async def test_a_quote_locks_the_rate_and_a_transfer_uses_it_once(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    bob_eur = await open_account(client, bob, "EUR")
    quoted = await ask_quote(client, alice, "USD", "EUR", "100.00")
    assert quoted.status_code == 201, quoted.text
    quote = quoted.json()
    expected = {"from_currency": "USD", "to_currency": "EUR", "rate": "0.92",
                "from_amount": "100.00", "to_amount": "92.00", "status": "ACTIVE"}  # fmt: skip
    assert {k: quote[k] for k in expected} == expected
    assert 58 <= quote["seconds_remaining"] <= 60
    assert (await client.get(f"{QUOTES}/{quote['id']}", headers=alice.auth)).json() == quote

    sent = await send(client, alice, bob_eur, None, fx_quote_id=quote["id"])
    assert sent.status_code == 201, sent.text
    transaction = sent.json()
    expected = {"from_account_number": alice.account_number, "to_account_number": bob_eur,
                "amount": "100.00", "currency": "USD", "kind": "fx", "fx_rate": "0.92",
                "fx_quote_id": quote["id"], "counter_amount": "92.00",
                "counter_currency": "EUR"}  # fmt: skip
    assert {k: transaction[k] for k in expected} == expected
    assert await balance_minor(db, alice.account_number) == 900_00
    assert await balance_minor(db, bob_eur) == 92_00
    assert await balance_minor(db, clearing("USD", quote["id"])) == 100_00
    assert await balance_minor(db, clearing("EUR", quote["id"])) == -92_00
    entries = await db.fetchval(
        "SELECT count(*) FROM ledger_entry e JOIN transfer t ON t.id = e.transfer_id"
        " WHERE t.kind = 'fx'"
    )
    assert entries == 4

    # The recipient reads the same transaction; the quote is USED; the same key replays.
    seen = await client.get(f"/api/v1/transactions/{transaction['id']}", headers=bob.auth)
    assert seen.json() == transaction
    used = await client.get(f"{QUOTES}/{quote['id']}", headers=alice.auth)
    assert (used.json()["status"], used.json()["transaction_id"]) == ("USED", transaction["id"])
    again = await send(client, alice, bob_eur, None, fx_quote_id=quote["id"])
    assert (again.status_code, again.json()["code"]) == (409, "quote_used")
    assert again.headers["content-type"] == "application/problem+json"
    assert await balance_minor(db, alice.account_number) == 900_00


async def test_twenty_concurrent_transfers_with_one_quote_move_money_once(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    bob_gbp = await open_account(client, bob, "GBP")
    quote = await quote_id(client, alice, "USD", "GBP", "10.00")
    answers = await asyncio.gather(
        *(send(client, alice, bob_gbp, "10.00", fx_quote_id=quote) for _ in range(20))
    )
    statuses = sorted(answer.status_code for answer in answers)
    assert statuses == [201] + [409] * 19
    assert {a.json()["code"] for a in answers if a.status_code == 409} == {"quote_used"}
    assert await balance_minor(db, alice.account_number) == 990_00
    assert await balance_minor(db, bob_gbp) == 7_90
    assert await db.fetchval("SELECT count(*) FROM transfer WHERE kind = 'fx'") == 2


async def test_a_quote_is_refused_to_other_users_and_for_other_accounts(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    bob_eur = await open_account(client, bob, "EUR")
    quote = await quote_id(client, alice, "USD", "EUR", "50.00")
    # Another user's quote does not exist for them, to read or to use.
    assert (await client.get(f"{QUOTES}/{quote}", headers=bob.auth)).status_code == 404
    assert (await client.get(f"{QUOTES}/x1", headers=bob.auth)).status_code == 404
    theirs = await send(client, bob, alice.account_number, None, fx_quote_id=quote)
    assert (theirs.status_code, theirs.json()["code"]) == (404, "not_found")
    # The recipient's account is in USD, the quote pays EUR.
    wrong = await send(client, alice, bob.account_number, None, fx_quote_id=quote)
    assert (wrong.status_code, wrong.json()["code"]) == (422, "currency_mismatch")
    # An amount other than the quote's from_amount; a currency other than its from_currency.
    other = await send(client, alice, bob_eur, "49.99", fx_quote_id=quote)
    assert (other.status_code, other.json()["code"]) == (422, "validation_error")
    named = await send(client, alice, bob_eur, "50.00", currency="EUR", fx_quote_id=quote)
    assert (named.status_code, named.json()["code"]) == (422, "currency_mismatch")
    bad_id = await send(client, alice, bob_eur, None, fx_quote_id="one")
    assert (bad_id.status_code, bad_id.json()["code"]) == (422, "validation_error")
    # Nothing moved, and the quote still works.
    assert await balance_minor(db, alice.account_number) == 1000_00
    ok = await send(client, alice, bob_eur, 50, fx_quote_id=quote)
    assert ok.status_code == 201, ok.text
    assert await balance_minor(db, bob_eur) == 46_00


async def test_an_unaffordable_fx_transfer_leaves_the_quote_active(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    bob_zar = await open_account(client, bob, "ZAR")
    quote = await quote_id(client, alice, "USD", "ZAR", "1000.01")
    refused = await send(client, alice, bob_zar, None, fx_quote_id=quote)
    assert (refused.status_code, refused.json()["code"]) == (422, "insufficient_funds")
    read = await client.get(f"{QUOTES}/{quote}", headers=alice.auth)
    assert read.json()["status"] == "ACTIVE"
    assert await balance_minor(db, bob_zar) == 0


async def test_quotes_refuse_bad_input_and_currencies_without_a_rate(
    client: httpx.AsyncClient, alice: User
) -> None:
    for body in (
        {"from_currency": "USD", "to_currency": "XYZ", "from_amount": "1.00"},
        {"from_currency": "usd", "to_currency": "EUR", "from_amount": "1.00"},
        {"from_currency": "USD", "to_currency": "USD", "from_amount": "1.00"},
        {"from_currency": "USD", "to_currency": "EUR", "from_amount": "1.001"},
        {"from_currency": "JPY", "to_currency": "EUR", "from_amount": "1.5"},
        {"from_currency": "USD", "to_currency": "EUR", "from_amount": "0"},
        {"from_currency": "USD", "to_currency": "EUR"},
    ):
        refused = await client.post(QUOTES, json=body, headers=alice.auth)
        assert (refused.status_code, refused.json()["code"]) == (422, "validation_error"), body
    assert (await ask_quote(client, alice, "USD", "EUR", "1000000.01")).status_code == 422
    jpy = await ask_quote(client, alice, "USD", "JPY", 1)
    assert (jpy.status_code, jpy.json()["to_amount"], jpy.json()["rate"]) == (201, "151", "151.37")


async def test_a_quote_expires_by_the_database_clock(settings: Settings, db: asyncpg.Pool) -> None:
    async with serving(settings.model_copy(update={"fx_quote_ttl_s": 1})) as client:
        alice, bob = await new_user(client, "alice"), await new_user(client, "bob")
        bob_eur = await open_account(client, bob, "EUR")
        quote = await quote_id(client, alice, "USD", "EUR", "10.00")
        await asyncio.sleep(1.1)
        read = await client.get(f"{QUOTES}/{quote}", headers=alice.auth)
        assert (read.json()["status"], read.json()["seconds_remaining"]) == ("EXPIRED", 0)
        late = await send(client, alice, bob_eur, None, fx_quote_id=quote)
        assert (late.status_code, late.json()["code"]) == (410, "quote_expired")
        assert await balance_minor(db, alice.account_number) == 1000_00


async def test_no_quote_from_a_stale_missing_or_unreadable_rates_file(
    settings: Settings, tmp_path: Path
) -> None:
    path = tmp_path / "rates.json"
    tuned = settings.model_copy(update={"fx_rates_file": path, "fx_max_rate_age_s": 3600})
    async with serving(tuned) as client:
        alice = await new_user(client, "alice")

        async def quoted() -> httpx.Response:
            return await ask_quote(client, alice, "USD", "EUR", "10.00")

        missing = await quoted()
        assert (missing.status_code, missing.json()["code"]) == (503, "unavailable")
        assert missing.headers["content-type"] == "application/problem+json"
        assert "Retry-After" in missing.headers
        write_rates(path, as_of=datetime.now(UTC) - timedelta(hours=2), EUR="0.90")
        assert (await quoted()).status_code == 503  # stale
        write_rates(path, as_of=datetime.now(UTC) - timedelta(minutes=1), EUR="0.90")
        fresh = await quoted()
        assert (fresh.status_code, fresh.json()["to_amount"]) == (201, "9.00")
        path.write_text("{not json", encoding="utf-8")
        os.utime(path, ns=(10**6, 10**6))
        assert (await quoted()).status_code == 503  # unreadable
        write_rates(path, as_of=datetime.now(UTC), EUR="0.90")
        gbp = await ask_quote(client, alice, "USD", "GBP", "10.00")  # not in this file
        assert (gbp.status_code, gbp.json()["code"]) == (422, "validation_error")


async def test_after_many_fx_transfers_every_currency_sums_to_zero(
    client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    """Transfers both ways between four currencies, at once: each currency's entries sum to zero,
    every balance is the sum of its entries, and the clearing positions are what moved."""
    currencies = ["USD", "EUR", "GBP", "JPY"]
    users = [await new_user(client, f"fx{n}") for n in range(4)]
    accounts = {}
    for user in users:
        accounts[user.user_id, "USD"] = user.account_number
        for currency in currencies[1:]:
            accounts[user.user_id, currency] = await open_account(client, user, currency)
    rng = random.Random(13)
    plans = []
    for _ in range(24):
        source, target = rng.sample(users, 2)
        to_currency = rng.choice(currencies[1:])
        plans.append((source, target, to_currency, rng.choice(["1.00", "12.34", "99.99"])))

    async def transfer(source: User, target: User, to_currency: str, amount: str) -> str:
        quote = await quote_id(client, source, "USD", to_currency, amount)
        sent = await send(client, source, accounts[target.user_id, to_currency], None,
                          fx_quote_id=quote, key=uuid.uuid4().hex)  # fmt: skip
        assert sent.status_code == 201, sent.text
        back = await quote_id(client, target, to_currency, "USD", sent.json()["counter_amount"])
        returned = await send(client, target, source.account_number, None, fx_quote_id=back)
        assert returned.status_code == 201, returned.text
        return str(returned.json()["counter_amount"])

    await asyncio.gather(*(transfer(*plan) for plan in plans))
    await assert_books_balance(db)
    positions = await db.fetch(
        "SELECT a.currency, a.balance_minor, (SELECT sum(CASE e.direction WHEN 'credit'"
        " THEN e.amount_minor ELSE -e.amount_minor END) FROM ledger_entry e"
        " WHERE e.account_id = a.id) AS entries,"
        " (SELECT count(*) FROM ledger_entry e WHERE e.account_id = a.id) AS entry_count"
        " FROM account a WHERE a.kind = 'clearing'"
    )
    for row in positions:
        assert row["balance_minor"] == (row["entries"] or 0), row
    admin = await make_admin(client, db)
    listed = await client.get("/api/v1/admin/fx/positions", headers=admin.auth)
    assert listed.status_code == 200
    by_currency = {row["currency"]: row for row in listed.json()["data"]}
    usd = sum(row["balance_minor"] for row in positions if row["currency"] == "USD")
    assert by_currency["USD"]["account_numbers"] == ["CLEARUSD"] + [
        f"CLEARUSD{n}" for n in range(1, 8)
    ]
    assert by_currency["USD"]["position"] == f"{usd / 100:.2f}"
    # 48 transfers in or out of USD, with 48 quotes: spread over the clearing accounts.
    assert sum(1 for row in positions if row["currency"] == "USD" and row["entry_count"]) > 1
    assert by_currency["USD"]["transfers"] == 48
    forbidden = await client.get("/api/v1/admin/fx/positions", headers=users[0].auth)
    assert forbidden.status_code == 403


async def test_quote_problems_rendered_by_sql_agree_with_the_catalog(db: asyncpg.Pool) -> None:
    for code in ("quote_used", "quote_expired"):
        status, body = await db.fetchrow("SELECT status, body FROM fx_problem_v1($1, 'd')", code)
        problem = CATALOG[code]
        assert status == problem.status
        assert json.loads(body) == {"type": f"/problems/{code}", "title": problem.title,
                                    "status": problem.status, "code": code, "detail": "d"}  # fmt: skip


async def test_fx_entries_extend_the_chain_of_each_of_their_four_accounts(
    client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """fx_transfer_v2 writes the four entries of both legs at once: each must still land on its
    own account's chain, the clearing ones on the two accounts its quote picks, and the answer it
    renders must be the transaction as GET shows it."""
    bob_eur = await open_account(client, bob, "EUR")
    quotes = []
    for _ in range(9):  # nine quotes in a row: eight pairs of clearing accounts, one twice
        quotes.append(await quote_id(client, alice, "USD", "EUR", "10.00"))
        sent = await send(client, alice, bob_eur, None, fx_quote_id=quotes[-1], description="rent")
        assert sent.status_code == 201, sent.text
        seen = await client.get(f"/api/v1/transactions/{sent.json()['id']}", headers=alice.auth)
        assert seen.json() == sent.json()
    quotes.append(await quote_id(client, bob, "EUR", "USD", "5.00"))
    returned = await send(client, bob, alice.account_number, None, fx_quote_id=quotes[-1])
    assert returned.status_code == 201, returned.text

    rows = await db.fetch(
        "SELECT a.account_number, c.valid, (SELECT count(*) FROM ledger_entry e"
        "  JOIN transfer t ON t.id = e.transfer_id WHERE e.account_id = a.id AND t.kind = 'fx')"
        "  AS fx_entries"
        " FROM account a, ledger_chain_v1(a.id) c"
        " WHERE a.account_number = ANY($1) OR a.kind = 'clearing'",
        [alice.account_number, bob_eur],
    )
    expected = {alice.account_number: 10, bob_eur: 10}
    for quote in quotes:
        for currency in ("USD", "EUR"):
            expected[clearing(currency, quote)] = expected.get(clearing(currency, quote), 0) + 1
    found = {row["account_number"]: row["fx_entries"] for row in rows if row["fx_entries"]}
    assert found == expected
    assert all(row["valid"] for row in rows)
