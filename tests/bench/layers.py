"""Micro-benchmark: what each middleware layer costs per request, in microseconds.

Drives the ASGI stack in-process (no HTTP, no client) against the embedded Redis and PostgreSQL
(or DATABASE_URL / REDIS_URL), adding one layer at a time over a handler that does nothing.
Run with `make bench-layers`; BENCH_REQUESTS sets the requests per variant. Then the Redis
clients compared, one Redis and a local cluster (redis_clients.py).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from payments.app import connect_redis
from payments.http.admission import AdmissionMiddleware, Admitter
from payments.http.auth import AuthMiddleware
from payments.http.idempotency import IdempotencyMiddleware
from payments.http.problem import ProblemMiddleware
from payments.http.rate_limit import RateLimitMiddleware
from payments.http.request_context import RequestContextMiddleware
from payments.http.response_cache import ResponseCacheMiddleware
from payments.http.rules import MONEY, RouteTable, RuledRoute, Rules
from payments.identity.passwords import Passwords
from payments.identity.tokens import AccessTokens
from payments.platform.db import create_pool
from payments.platform.embedded import servers
from payments.platform.log import configure_logging
from payments.platform.redis_link import RedisLink
from payments.platform.settings import RateLimit
from payments.services import Services
from payments.settings import Settings
from tests.bench import redis_clients

ROOT = Path(__file__).resolve().parents[2]


async def noop(request: Request) -> Response:
    return Response(
        b"{}", status_code=201 if request.method == "POST" else 200, media_type="application/json"
    )


ROUTES = [
    RuledRoute("/api/v1/transactions", GET=(noop, Rules(cached_view="transactions")),
               POST=(noop, MONEY))
]  # fmt: skip
LAYERS = [
    ("request context", lambda s: Middleware(RequestContextMiddleware, routes=RouteTable(ROUTES))),
    ("problem", lambda s: Middleware(ProblemMiddleware)),
    ("auth (JWT verify)", lambda s: Middleware(AuthMiddleware, services=s)),
    ("admission (Redis call)", lambda s: Middleware(AdmissionMiddleware, services=s)),
    ("rate limit", lambda s: Middleware(RateLimitMiddleware, services=s)),
    ("idempotency", lambda s: Middleware(IdempotencyMiddleware, services=s)),
    ("response cache", lambda s: Middleware(ResponseCacheMiddleware, services=s)),
]


def build(services: Services, layer_count: int) -> Starlette:
    middleware = [make(services) for _, make in LAYERS[:layer_count]]
    return Starlette(routes=ROUTES, middleware=middleware)


async def drive(app: Starlette, method: str, token: str, requests: int) -> float:
    """Median of five runs, in microseconds of this process's CPU per request (the Redis and
    PostgreSQL servers' own CPU, and the wait for them, are not counted: the layers' is)."""
    body = b'{"to_account_number": "AC0000000000000000", "amount": "1.00"}'

    async def one() -> None:
        headers = [
            (b"authorization", f"Bearer {token}".encode()),
            (b"content-type", b"application/json"),
        ]
        if method == "POST":
            headers.append((b"idempotency-key", uuid.uuid4().hex.encode()))
        scope: dict[str, Any] = {
            "type": "http", "method": method, "path": "/api/v1/transactions", "raw_path": b"",
            "query_string": b"limit=5" if method == "GET" else b"", "headers": headers,
            "client": ("127.0.0.1", 1), "server": ("testserver", 80), "scheme": "http",
            "http_version": "1.1", "root_path": "", "app": app,
        }  # fmt: skip
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)
            sent = True
            return {
                "type": "http.request",
                "body": body if method == "POST" else b"",
                "more_body": False,
            }

        async def send(message: dict[str, Any]) -> None:
            pass

        await app(scope, receive, send)

    runs = []
    for _ in range(5):
        started = time.process_time()
        for _ in range(requests // 5):
            await one()
        runs.append((time.process_time() - started) / (requests // 5) * 1e6)
    return statistics.median(runs)


async def main() -> None:
    configure_logging("error", "json")
    requests = int(os.environ.get("BENCH_REQUESTS", "2000"))
    with servers(ROOT / ".data" / "bench", database_url=os.environ.get("DATABASE_URL") or None,
                 redis_url=os.environ.get("REDIS_URL") or None) as (database_url, redis_url):  # fmt: skip
        unlimited = RateLimit(name="x", count=10**9, period_s=60)
        settings = Settings(
            env="test", database_url=database_url, redis_url=redis_url.rsplit("/", 1)[0] + "/14",
            jwt_secret=SecretStr("bench-" + "k" * 40), argon2_time_cost=1, argon2_memory_cost_kib=1024,
            rate_limit_global=unlimited.model_copy(update={"name": "global"}),
            rate_limit_transfer=unlimited.model_copy(update={"name": "transfer"}),
        )  # fmt: skip
        services = Services(
            settings=settings, tokens=AccessTokens(settings), passwords=Passwords(settings)
        )
        services.pool = await create_pool(settings, database_url)
        services.redis = connect_redis(settings)
        services.redis_link = RedisLink(str(settings.redis_url), settings.redis_timeout_s)
        services.admitter = Admitter(services.redis_link)
        await services.redis.flushdb()
        token = services.tokens.issue(user_id=1, role="user", family_id=str(uuid.uuid4())).token
        await services.redis.set("payments:{u:1}:denylist-ready", "1", ex=3600)
        print(
            f"per-request CPU of each layer in this process, µs (median of 5 runs of {requests // 5} requests)"
        )
        print(f"{'layers':<26}{'GET':>10}{'+Δ':>9}{'POST+key':>11}{'+Δ':>9}")
        previous = {"GET": 0.0, "POST": 0.0}
        for count in range(len(LAYERS) + 1):
            app = build(services, count)
            name = "handler only" if count == 0 else "+ " + LAYERS[count - 1][0]
            row = f"{name:<26}"
            for method in ("GET", "POST"):
                cost = await drive(app, method, token, requests)
                row += (
                    f"{cost:>10.1f}{cost - previous[method]:>+9.1f}"
                    if method == "GET"
                    else f"{cost:>11.1f}{cost - previous[method]:>+9.1f}"
                )
                previous[method] = cost
            print(row)
        await services.redis.flushdb()
        await services.redis.aclose()
        await services.pool.close()
        services.passwords.close()
        await redis_clients.run(
            str(settings.redis_url), int(os.environ.get("BENCH_CALLS", "20000"))
        )


if __name__ == "__main__":
    asyncio.run(main())
