"""The audit log: each event the contract lists is written once, with its actor, client address
and request id, and never a secret; the hash chain holds under concurrent writers and finds a
row changed or deleted behind the service's back; the database itself refuses UPDATE, DELETE
and TRUNCATE from the application's own connections; a 429 storm writes one row a minute."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import UTC
from typing import Any

import asyncpg
import httpx
import pytest
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from payments.app import create_app
from payments.platform.db import Q
from payments.settings import Settings
from tests.api.conftest import serving
from tests.api.test_rate_limits import tight
from tests.api.users import PASSWORD, User, make_admin, new_user, send


async def audit_rows(app: Starlette, db: asyncpg.Pool, action: str) -> list[asyncpg.Record]:
    await app.state.services.audit.flush()  # what the buffered writer holds, written now
    return await db.fetch(
        "SELECT actor_id, target, ip, request_id, details::text AS details FROM audit_log"
        " WHERE action = $1 ORDER BY id", action,
    )  # fmt: skip


async def verify(client: httpx.AsyncClient, admin: User) -> dict[str, Any]:
    response = await client.get("/api/v1/admin/audit-logs/verify", headers=admin.auth)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


def rid(name: str) -> dict[str, str]:
    return {"X-Request-ID": name}


async def test_each_event_is_recorded_once_with_actor_address_and_request_id(
    app: Starlette, client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    # Logins and failed logins: the account tried is named, never the email typed.
    ok = await client.post("/api/v1/auth/login", json={"email": alice.email, "password": PASSWORD},
                           headers=rid("login-ok"))  # fmt: skip
    assert ok.status_code == 200
    wrong = await client.post("/api/v1/auth/login", json={"email": bob.email, "password": "nope"},
                              headers=rid("login-wrong"))  # fmt: skip
    unknown = await client.post("/api/v1/auth/login", headers=rid("login-unknown"),
                                json={"email": "ghost@example.com", "password": "nope"})  # fmt: skip
    assert (wrong.status_code, unknown.status_code) == (401, 401)
    logins = [r for r in await audit_rows(app, db, "auth.login") if r["request_id"] == "login-ok"]
    assert [(r["actor_id"], r["ip"]) for r in logins] == [(alice.user_id, "127.0.0.1")]
    failed = await audit_rows(app, db, "auth.login_failed")
    assert [(r["actor_id"], r["target"], r["ip"], r["request_id"], json.loads(r["details"]))
            for r in failed] == [
        (None, str(bob.user_id), "127.0.0.1", "login-wrong", {"reason": "wrong_password"}),
        (None, None, "127.0.0.1", "login-unknown", {"reason": "unknown_email"}),
    ]  # fmt: skip

    # Refresh-token reuse, written in the transaction that revokes the session.
    refresh = {"refresh_token": ok.json()["refresh_token"]}
    assert (await client.post("/api/v1/auth/refresh", json=refresh)).status_code == 200
    reused = await client.post("/api/v1/auth/refresh", json=refresh, headers=rid("reuse"))
    assert reused.status_code == 401
    reuses = await audit_rows(app, db, "auth.refresh_reused")
    assert [(r["actor_id"], r["ip"], r["request_id"]) for r in reuses] == [
        (alice.user_id, "127.0.0.1", "reuse")
    ]

    # API keys created and revoked (in their own transactions), a reversal, a logout.
    created = await client.post("/api/v1/api-keys", json={"name": "shop"},
                                headers={**bob.auth, **rid("key-made")})  # fmt: skip
    assert created.status_code == 201
    key_id = created.json()["id"]
    revoked = await client.delete(f"/api/v1/api-keys/{key_id}",
                                  headers={**bob.auth, **rid("key-gone")})  # fmt: skip
    assert revoked.status_code == 204
    assert (await client.delete(f"/api/v1/api-keys/{key_id}", headers=bob.auth)).status_code == 204
    sent = await send(client, alice, bob.account_number, "7.00")
    reverse_headers = {**bob.auth, **rid("reversal"), "Idempotency-Key": "rev-1"}
    for _ in range(2):  # the replay is not audited again
        reversal = await client.post(f"/api/v1/transactions/{sent.json()['id']}/reverse",
                                     json={}, headers=reverse_headers)  # fmt: skip
        assert reversal.status_code == 201
    logout = await client.post("/api/v1/auth/logout", json={},
                               headers={**alice.auth, **rid("bye")})  # fmt: skip
    assert logout.status_code == 204
    expected = {
        "api_key.created": (bob.user_id, str(key_id), "key-made"),
        "api_key.revoked": (bob.user_id, str(key_id), "key-gone"),
        "transaction.reversed": (bob.user_id, str(sent.json()["id"]), "reversal"),
        "auth.logout": (alice.user_id, str(alice.user_id), "bye"),
    }
    for action, (actor_id, target, request_id) in expected.items():
        rows = await audit_rows(app, db, action)
        assert [(r["actor_id"], r["target"], r["ip"], r["request_id"]) for r in rows] == [
            (actor_id, target, "127.0.0.1", request_id)
        ], action
    reversed_details = json.loads((await audit_rows(app, db, "transaction.reversed"))[0]["details"])
    assert reversed_details == {"reversal_id": reversal.json()["id"], "amount": "7.00",
                                "currency": "USD", "by_admin": False}  # fmt: skip


async def test_every_admin_request_is_recorded_with_its_method_path_and_status(
    app: Starlette, client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    path = f"/api/v1/admin/accounts/{alice.account_number}"
    assert (await client.get(path, headers={**admin.auth, **rid("adm-1")})).status_code == 200
    assert (await client.get(path, headers={**alice.auth, **rid("adm-2")})).status_code == 403
    rows = await audit_rows(app, db, "admin.request")
    assert [(r["actor_id"], r["target"], r["ip"], r["request_id"], json.loads(r["details"]))
            for r in rows] == [
        (admin.user_id, "/api/v1/admin/accounts/{account_number}", "127.0.0.1", "adm-1",
         {"method": "GET", "path": path, "status": 200}),
        (alice.user_id, "/api/v1/admin/accounts/{account_number}", "127.0.0.1", "adm-2",
         {"method": "GET", "path": path, "status": 403}),
    ]  # fmt: skip


async def test_the_log_is_listed_newest_first_filtered_and_in_keyset_pages(
    app: Starlette, client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    admin = await make_admin(client, db)
    for _ in range(3):
        await client.post("/api/v1/auth/login", json={"email": alice.email, "password": "no"})
    await app.state.services.audit.flush()
    seen = []
    cursor = None
    while True:
        query = "action=auth.login_failed&limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = (await client.get(f"/api/v1/admin/audit-logs?{query}", headers=admin.auth)).json()
        seen += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [event["action"] for event in seen] == ["auth.login_failed"] * 3
    assert [event["id"] for event in seen] == sorted((e["id"] for e in seen), reverse=True)
    assert set(seen[0]) == {"id", "at", "actor_id", "action", "target", "ip", "request_id",
                            "details", "hash", "prev_hash"}  # fmt: skip
    assert seen[0]["details"] == {"reason": "wrong_password"}
    mine = await client.get(f"/api/v1/admin/audit-logs?actor_id={bob.user_id}", headers=admin.auth)
    assert {event["actor_id"] for event in mine.json()["data"]} == {bob.user_id}
    assert {event["action"] for event in mine.json()["data"]} == {"auth.login"}


async def test_no_row_holds_a_password_token_or_key(
    app: Starlette, client: httpx.AsyncClient, alice: User, bob: User, db: asyncpg.Pool
) -> None:
    """Every secret the test used, searched for in the text of every row."""
    secret_password = "hunter2-not-in-the-log"
    await client.post(
        "/api/v1/auth/login", json={"email": alice.email, "password": secret_password}
    )
    await client.post("/api/v1/auth/login", json={"email": secret_password, "password": PASSWORD})
    refreshed = await client.post(
        "/api/v1/auth/refresh", json={"refresh_token": alice.refresh_token}
    )
    await client.post("/api/v1/auth/refresh", json={"refresh_token": alice.refresh_token})
    key = (await client.post("/api/v1/api-keys", json={"name": "k"}, headers=bob.auth)).json()
    await client.get("/api/v1/accounts", headers={"Authorization": f"Bearer {key['key']}"})
    await client.delete(f"/api/v1/api-keys/{key['id']}", headers=bob.auth)
    await client.post("/api/v1/auth/logout", json={"refresh_token": bob.refresh_token},
                      headers=bob.auth)  # fmt: skip
    await app.state.services.audit.flush()
    text = "\n".join(repr(dict(row)) for row in await db.fetch("SELECT * FROM audit_log"))
    assert text.count("auth.") >= 5
    secrets = [secret_password, PASSWORD, alice.token, alice.refresh_token, bob.token,
               bob.refresh_token, refreshed.json()["refresh_token"], key["key"]]  # fmt: skip
    for secret in secrets:
        assert secret not in text
    assert key["key"][len(key["prefix"]) :] not in text  # not even the part after the prefix


async def test_the_chain_verifies_and_each_hash_can_be_recomputed_by_hand(
    app: Starlette, client: httpx.AsyncClient, alice: User, db: asyncpg.Pool
) -> None:
    """The recipe of sql/0007_audit_log.sql and the README, in Python, on every row."""
    admin = await make_admin(client, db)
    await app.state.services.pool.fetchval(
        Q.audit_event,
        alice.user_id,
        "test.escapes",
        'q"\\\n\t\x01/é',
        None,
        None,
        '{"b": [1, 2.50, "x\\ny"], "a": {"z": null}, "é": "\\u00e9"}',
    )  # quotes, backslash, control characters, nested and non-ASCII details
    await client.get("/api/v1/admin/accounts/%C3%A9t%C3%A9", headers=admin.auth)  # non-ASCII
    await app.state.services.audit.flush()
    rows = await db.fetch("SELECT *, details::text AS d FROM audit_log ORDER BY id")
    assert len(rows) >= 5
    previous = bytes(32)
    for row in rows:
        at = row["at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        fields = [row["prev_hash"].hex(), row["id"], at, row["actor_id"], row["action"],
                  row["target"], row["ip"], row["request_id"], row["d"]]  # fmt: skip
        text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
        assert hashlib.sha256(text.encode()).digest() == row["hash"], text
        assert row["prev_hash"] == previous
        previous = row["hash"]
    assert await verify(client, admin) == {"valid": True, "entries": len(rows)}


async def repair(db: asyncpg.Pool, statement: str, *arguments: Any) -> None:
    """An edit behind the service's back, through the operators' escape."""
    async with db.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL payments.history_repair = 'on'")
        await conn.execute(statement, *arguments)


async def seven_rows(app: Starlette, db: asyncpg.Pool) -> list[int]:
    async with app.state.services.pool.acquire() as conn:
        for n in range(7):
            await conn.fetchval(
                Q.audit_event, None, "test.event", str(n), "10.0.0.9", f"r{n}", "{}"
            )
    return [row["id"] for row in await db.fetch("SELECT id FROM audit_log ORDER BY id")]


@pytest.mark.parametrize(
    "edit",
    ["UPDATE audit_log SET target = 'other' WHERE id = $1",
     "UPDATE audit_log SET actor_id = NULL, ip = '10.9.9.9' WHERE id = $1",
     "UPDATE audit_log SET details = '{\"amount\": \"1.00\"}' WHERE id = $1",
     "UPDATE audit_log SET at = at + interval '1 microsecond' WHERE id = $1"],
)  # fmt: skip
async def test_a_row_changed_in_the_database_is_reported_at_exactly_its_id(
    app: Starlette, db: asyncpg.Pool, edit: str
) -> None:
    ids = await seven_rows(app, db)
    await repair(db, edit, ids[3])
    check = await db.fetchrow(Q.audit_chain_check)
    assert (check["valid"], check["tampered_at"]) == (False, ids[3])


async def test_a_row_rehashed_after_its_change_breaks_the_next_rows_link(
    app: Starlette, db: asyncpg.Pool
) -> None:
    ids = await seven_rows(app, db)
    await repair(db, "UPDATE audit_log SET target = 'x', hash = audit_hash_v1(prev_hash, id, at,"
                     " actor_id, action, 'x', ip, request_id, details) WHERE id = $1", ids[2])  # fmt: skip
    check = await db.fetchrow(Q.audit_chain_check)
    assert (check["valid"], check["tampered_at"]) == (False, ids[3])


async def test_deleted_rows_are_found_in_the_middle_at_the_start_and_at_the_end(
    app: Starlette, client: httpx.AsyncClient, db: asyncpg.Pool
) -> None:
    ids = await seven_rows(app, db)
    await repair(db, "DELETE FROM audit_log WHERE id = $1", ids[4])
    assert dict(await db.fetchrow(Q.audit_chain_check)) == {
        "valid": False, "entries": 6, "tampered_at": ids[5]
    }  # fmt: skip
    await repair(db, "DELETE FROM audit_log WHERE id = $1", ids[0])
    assert (await db.fetchrow(Q.audit_chain_check))["tampered_at"] == ids[1]
    await repair(db, "DELETE FROM audit_log WHERE id <> $1", ids[6])  # only the last is left
    assert (await db.fetchrow(Q.audit_chain_check))["tampered_at"] == ids[6]

    await repair(db, "TRUNCATE audit_log")  # an emptying repair starts a fresh chain
    ids = await seven_rows(app, db)
    assert dict(await db.fetchrow(Q.audit_chain_check)) == {
        "valid": True, "entries": 7, "tampered_at": None
    }  # fmt: skip
    await repair(db, "DELETE FROM audit_log WHERE id = $1", ids[6])  # the newest row
    assert (await db.fetchrow(Q.audit_chain_check))["tampered_at"] == ids[6]


async def test_the_applications_own_connection_cannot_update_delete_or_truncate(
    app: Starlette, db: asyncpg.Pool
) -> None:
    ids = await seven_rows(app, db)
    pool: asyncpg.Pool = app.state.services.pool
    assert await pool.fetchval("SELECT current_setting('payments.history_repair', true)") in (
        None, "", "off",
    )  # fmt: skip
    for statement in ("UPDATE audit_log SET target = 'x' WHERE id = $1",
                      "DELETE FROM audit_log WHERE id = $1"):  # fmt: skip
        with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
            await pool.execute(statement, ids[1])
    with pytest.raises(asyncpg.RestrictViolationError, match="append-only"):
        await pool.execute("TRUNCATE audit_log")
    assert await db.fetchval("SELECT count(*) FROM audit_log") == 7
    assert (await db.fetchrow(Q.audit_chain_check))["valid"] is True


async def test_concurrent_writers_never_fork_the_chain(
    client: httpx.AsyncClient, alice: User, db: asyncpg.Pool, settings: Settings
) -> None:
    """40 failed logins from 40 addresses, 20 API keys made at once (each in its own
    transaction), and 40 direct audit_v1 calls on separate connections, all together."""
    admin = await make_admin(client, db)
    roomy = create_app(settings.model_copy(update={"password_hash_queue_max": 64}))
    body = {"email": alice.email, "password": "wrong"}
    async with LifespanManager(roomy):
        found = roomy.state.services
        transport = httpx.ASGITransport(app=roomy)
        http = httpx.AsyncClient(transport=transport, base_url="http://testserver")

        async def fail_login(n: int) -> int:
            transport = httpx.ASGITransport(app=roomy, client=(f"10.1.0.{n}", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as one:
                return (await one.post("/api/v1/auth/login", json=body)).status_code

        async def make_key(n: int) -> int:
            made = await http.post("/api/v1/api-keys", json={"name": f"k{n}"}, headers=alice.auth)
            return made.status_code

        async def direct(n: int) -> int:
            await found.pool.fetchval(Q.audit_event, None, "test.direct", str(n), None, None, "{}")
            return 0

        async def flush_often() -> int:
            for _ in range(10):
                await found.audit.flush()
                await asyncio.sleep(0.01)
            return 0

        results = await asyncio.gather(
            *(fail_login(n) for n in range(40)), *(make_key(n) for n in range(20)),
            *(direct(n) for n in range(40)), flush_often(),
        )  # fmt: skip
        assert results[:40] == [401] * 40
        assert results[40:60] == [201] * 20
        await found.audit.flush()
        total = await db.fetchval("SELECT count(*) FROM audit_log")
        assert await verify(http, admin) == {"valid": True, "entries": total}
        await http.aclose()
    failed = await db.fetch("SELECT ip FROM audit_log WHERE action = 'auth.login_failed'")
    assert sorted(r["ip"] for r in failed) == sorted(f"10.1.0.{n}" for n in range(40))
    assert (
        await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'api_key.created'") == 20
    )
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'test.direct'") == 40
    assert (await db.fetchrow(Q.audit_chain_check))["valid"] is True


async def test_a_429_storm_writes_one_row_per_principal_and_tier(
    client: httpx.AsyncClient, db: asyncpg.Pool, settings: Settings
) -> None:
    user = await new_user(client)
    body = {"email": "storm@example.com", "password": "x"}
    async with serving(tight(settings, auth=(2, 60), **{"global": (3, 60)}), "10.2.0.1") as http:
        logins = [(await http.post("/api/v1/auth/login", json=body)).status_code for _ in range(25)]
        reads = [(await http.get("/api/v1/accounts", headers=user.auth)).status_code
                 for _ in range(25)]  # fmt: skip
    assert logins.count(429) == 23  # the address's auth tier (a refused request is charged none)
    assert reads.count(429) == 22  # the user's global tier
    rows = await db.fetch(
        "SELECT actor_id, ip, details ->> 'tier' AS tier, count(*) AS n FROM audit_log"
        " WHERE action = 'rate_limit.refused' GROUP BY 1, 2, 3 ORDER BY 1 NULLS FIRST, 3"
    )
    assert [tuple(row) for row in rows] == [
        (None, "10.2.0.1", "auth", 1), (user.user_id, "10.2.0.1", "global", 1),
    ]  # fmt: skip


async def test_a_login_makes_no_audit_round_trip_and_a_batch_is_one_statement(
    app: Starlette, client: httpx.AsyncClient, alice: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statements a login sends to PostgreSQL from its own task: none of them audits. The
    buffered writer then writes the login's row, with a failed login's, in one statement."""
    audit = app.state.services.audit
    await audit.flush()
    sent: list[tuple[bool, str]] = []  # (from the writer's task, statement)
    execute = asyncpg.connection.Connection._execute

    async def recording(self: Any, query: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((asyncio.current_task() is audit.task, query))
        return await execute(self, query, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(asyncpg.connection.Connection, "_execute", recording)
        ok = await client.post(
            "/api/v1/auth/login", json={"email": alice.email, "password": PASSWORD}
        )
        bad = await client.post("/api/v1/auth/login", json={"email": alice.email, "password": "no"})
        assert (ok.status_code, bad.status_code) == (200, 401)
        on_request_path = [query for writer, query in sent if not writer]
        await audit.flush()
    assert on_request_path  # the login's own statements were seen
    assert not [query for query in on_request_path if "audit" in query]
    # One statement for both rows, or two if the writer's interval fell between the logins.
    assert 1 <= sum(query == Q.insert_audit_events for _, query in sent) <= 2
