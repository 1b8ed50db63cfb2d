"""create_app(settings) -> Starlette: the routes, the middleware stack in order, the lifespan."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from redis.asyncio import Redis, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount

from payments.admin import audit_routes, deposits, lookups, stats
from payments.admin.audit import AuditLog
from payments.fx import routes as fx
from payments.http.admission import AdmissionMiddleware, Admitter
from payments.http.auth import AuthMiddleware
from payments.http.errors import METHOD_NOT_ALLOWED, NOT_FOUND, ApiError, problem_response
from payments.http.idempotency import IdempotencyMiddleware
from payments.http.problem import ProblemMiddleware
from payments.http.rate_limit import RateLimitMiddleware
from payments.http.request_context import RequestContextMiddleware
from payments.http.response_cache import ResponseCacheMiddleware
from payments.http.rules import (
    ADMIN_MONEY,
    ADMIN_READ,
    BULK_MONEY,
    KEY_MANAGEMENT,
    MONEY,
    PUBLIC,
    READ,
    SIGN_IN,
    WRITE,
    RouteTable,
    RuledRoute,
    Rules,
)
from payments.identity import api_keys
from payments.identity import routes as auth
from payments.identity.passwords import Passwords
from payments.identity.tokens import AccessTokens
from payments.money import accounts, ledger, transfers
from payments.operations import docs, health
from payments.payments import routes as payments
from payments.payroll import routes as payroll
from payments.platform import metrics
from payments.platform.db import Q, create_pool
from payments.platform.housekeeping import (
    check_ledger_forever,
    sample_payment_queue_forever,
    sample_pool_forever,
    sweep_forever,
)
from payments.platform.log import configure_logging, flush_logs_forever
from payments.platform.redis_link import AnyRedis, connect_link
from payments.services import Services
from payments.settings import Settings
from payments.webhooks import routes as webhooks

API = "/api/v1"
POOL_SAMPLE_INTERVAL_S = 5.0  # how fresh payments_db_pool_connections is
GC_FIRST_GENERATION_THRESHOLD = 50_000  # Python's default is 2,000 allocations


def routes() -> list[RuledRoute]:
    """Every route, with each method's endpoint and the rules the HTTP layers apply to it."""
    return [
        RuledRoute(f"{API}/health", GET=(health.health, PUBLIC)),
        RuledRoute(f"{API}/ready", GET=(health.ready, PUBLIC)),
        RuledRoute(f"{API}/auth/register", POST=(auth.register, SIGN_IN)),
        RuledRoute(f"{API}/auth/login", POST=(auth.login, Rules(public=True, tiers=("auth", "login")))),
        RuledRoute(f"{API}/auth/refresh", POST=(auth.refresh, SIGN_IN)),
        RuledRoute(f"{API}/auth/logout", POST=(auth.logout, Rules(tiers=("auth",), idempotency="accepted", api_key=False))),
        RuledRoute(
            f"{API}/api-keys",
            GET=(api_keys.list_api_keys, KEY_MANAGEMENT),
            POST=(api_keys.create_api_key, KEY_MANAGEMENT),
        ),
        RuledRoute(f"{API}/api-keys/{{id}}", DELETE=(api_keys.revoke_api_key, KEY_MANAGEMENT)),
        RuledRoute(
            f"{API}/accounts",
            GET=(accounts.list_accounts, Rules(cached_view="accounts")),
            POST=(accounts.open_account, WRITE),
        ),
        RuledRoute(f"{API}/accounts/{{account_number}}", GET=(accounts.get_account, READ)),
        RuledRoute(f"{API}/accounts/{{account_number}}/reconcile", POST=(ledger.reconcile_account, WRITE)),
        RuledRoute(f"{API}/ledger/transactions/{{id}}", GET=(ledger.transaction_entries, READ)),
        RuledRoute(f"{API}/ledger/transactions/{{id}}/verify", GET=(ledger.verify_transaction, READ)),
        RuledRoute(f"{API}/ledger/accounts/{{account_number}}/entries", GET=(ledger.account_entries, READ)),
        RuledRoute(f"{API}/ledger/accounts/{{account_number}}/chain", GET=(ledger.account_chain, READ)),
        RuledRoute(
            f"{API}/transactions",
            GET=(transfers.list_transfers, Rules(cached_view="transactions")),
            POST=(transfers.create_transfer, MONEY),
        ),
        RuledRoute(f"{API}/transactions/{{id}}", GET=(transfers.get_transfer, READ)),
        RuledRoute(f"{API}/transactions/{{id}}/reverse", POST=(transfers.reverse_transfer, MONEY)),
        RuledRoute(
            f"{API}/payments",
            GET=(payments.list_payments, READ),
            POST=(payments.create_payment, MONEY),
        ),
        RuledRoute(f"{API}/payments/{{id}}", GET=(payments.get_payment, READ)),
        RuledRoute(f"{API}/admin/deposits", POST=(deposits.create_deposit, ADMIN_MONEY)),
        RuledRoute(f"{API}/admin/accounts/{{account_number}}", GET=(lookups.get_account, ADMIN_READ)),
        RuledRoute(f"{API}/admin/transactions/{{id}}", GET=(lookups.get_transaction, ADMIN_READ)),
        RuledRoute(f"{API}/admin/ledger/transactions/{{id}}", GET=(ledger.transaction_entries, ADMIN_READ)),
        RuledRoute(f"{API}/admin/ledger/transactions/{{id}}/verify", GET=(ledger.verify_transaction, ADMIN_READ)),
        RuledRoute(f"{API}/admin/ledger/accounts/{{account_number}}/entries", GET=(ledger.account_entries, ADMIN_READ)),
        RuledRoute(f"{API}/admin/ledger/accounts/{{account_number}}/chain", GET=(ledger.account_chain, ADMIN_READ)),
        RuledRoute(f"{API}/admin/audit-logs", GET=(audit_routes.list_audit_events, ADMIN_READ)),
        RuledRoute(f"{API}/admin/audit-logs/verify", GET=(audit_routes.verify_audit_log, ADMIN_READ)),
        RuledRoute(f"{API}/queue/stats", GET=(stats.queue_stats, ADMIN_READ)),
        RuledRoute(f"{API}/cache/stats", GET=(stats.cache_stats, ADMIN_READ)),
        RuledRoute(f"{API}/fx/quotes", POST=(fx.create_quote, WRITE)),
        RuledRoute(f"{API}/fx/quotes/{{id}}", GET=(fx.get_quote, READ)),
        RuledRoute(f"{API}/admin/fx/positions", GET=(fx.list_positions, ADMIN_READ)),
        RuledRoute(f"{API}/payroll/jobs", POST=(payroll.create_job, BULK_MONEY)),
        RuledRoute(f"{API}/payroll/jobs/{{id}}", GET=(payroll.get_job, READ)),
        RuledRoute(f"{API}/payroll/jobs/{{id}}/items", GET=(payroll.list_items, READ)),
        RuledRoute(
            f"{API}/webhooks/endpoints",
            GET=(webhooks.list_endpoints, READ),
            POST=(webhooks.create_endpoint, KEY_MANAGEMENT),  # the secret is in the answer
        ),
        RuledRoute(f"{API}/webhooks/endpoints/{{id}}", DELETE=(webhooks.delete_endpoint, KEY_MANAGEMENT)),
        RuledRoute(f"{API}/webhooks/endpoints/{{id}}/deliveries", GET=(webhooks.list_deliveries, READ)),
        RuledRoute(f"{API}/webhooks/events/{{id}}/redeliver", POST=(webhooks.redeliver_event, READ)),
        RuledRoute("/metrics", GET=(metrics.metrics_endpoint, PUBLIC)),
        RuledRoute("/openapi.yaml", GET=(docs.openapi_document, PUBLIC)),
        RuledRoute("/docs", GET=(docs.docs_page, PUBLIC)),
    ]  # fmt: skip


async def handle_api_error(request: Request, error: Exception) -> Response:
    """Errors raised by handlers become ordinary responses, which the layers outside may store."""
    assert isinstance(error, ApiError)
    return problem_response(error)


async def handle_http_error(request: Request, error: Exception) -> Response:
    """Starlette's own 404 and 405, as problem+json like every other error."""
    assert isinstance(error, HTTPException)
    if error.status_code == 405:
        return problem_response(ApiError(METHOD_NOT_ALLOWED, headers=dict(error.headers or {})))
    return problem_response(ApiError(NOT_FOUND, "no such route"))


def connect_redis(settings: Settings) -> AnyRedis:
    """A client that fails fast: a Redis that hangs is a Redis that is down (one quick retry
    replaces a connection that died with a restarted server). For a cluster, redis-py's cluster
    client, which routes by slot and follows MOVED and ASK."""
    assert settings.redis_url is not None
    if settings.redis_cluster:
        return RedisCluster.from_url(
            settings.redis_url,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
            retry=Retry(NoBackoff(), 1),
            decode_responses=False,
        )
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )


# Each layer reads what the layers before it left in the request state: this is their order.
LAYER_ORDER = (
    RequestContextMiddleware, ProblemMiddleware, AuthMiddleware, AdmissionMiddleware,
    RateLimitMiddleware, IdempotencyMiddleware, ResponseCacheMiddleware,
)  # fmt: skip


def check_layer_order(layers: list[Any]) -> None:
    """Refuse to start with a layer missing or out of order: a layer that reads another's result
    from the request state would otherwise find nothing, and Redis writes would go unsent."""
    if tuple(layers) != LAYER_ORDER:
        names = ", ".join(layer.__name__ for layer in LAYER_ORDER)
        raise RuntimeError(f"the middleware must be, outermost first: {names}")


def create_app(settings: Settings) -> Starlette:
    found = Services(
        settings=settings, tokens=AccessTokens(settings), passwords=Passwords(settings)
    )
    found.audit = AuditLog(settings)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.database_url is not None
        found.pool = await create_pool(settings, settings.database_url)
        found.cursor_key = await found.pool.fetchval(Q.cursor_key)
        found.redis = connect_redis(settings)
        assert settings.redis_url is not None
        found.redis_link = connect_link(settings)
        found.admitter = Admitter(found.redis_link)
        found.audit.start(found.pool)
        housekeeping = [
            asyncio.create_task(sweep_forever(found.pool, settings.idempotency_sweep_interval_s)),
            asyncio.create_task(check_ledger_forever(found.pool, settings.ledger_check_interval_s)),
            asyncio.create_task(sample_pool_forever(found.pool, POOL_SAMPLE_INTERVAL_S)),
            asyncio.create_task(
                sample_payment_queue_forever(
                    found.pool, POOL_SAMPLE_INTERVAL_S, found.payment_queue
                )
            ),
            asyncio.create_task(flush_logs_forever()),
        ]
        # What start-up made lives as long as the process: the collector need not walk it again.
        # Requests allocate fast, and a larger first generation means fewer collections of it.
        gc.freeze()
        gc.set_threshold(GC_FIRST_GENERATION_THRESHOLD, 20, 20)
        try:
            yield
        finally:
            for task in housekeeping:
                task.cancel()
            await found.audit.close()  # what is queued is written before the pool goes
            metrics.process_stopped()
            found.redis_link.close()
            await found.redis.aclose()
            await found.pool.close()
            found.passwords.close()

    table = routes()
    if settings.metrics_port is not None:  # the metrics have a listener of their own
        table = [route for route in table if route.path != "/metrics"]
    middleware = [
        Middleware(
            RequestContextMiddleware, routes=RouteTable(table), services=found
        ),  # state, id, log, admin audit
        Middleware(ProblemMiddleware),  # renders ApiError raised by any layer below
        Middleware(AuthMiddleware, services=found),  # the principal, from the access token
        Middleware(AdmissionMiddleware, services=found),  # the body; the one Redis round trip
        Middleware(RateLimitMiddleware, services=found),  # 429, refusals, budget headers
        Middleware(IdempotencyMiddleware, services=found),  # replays, 409s, stored answers
        Middleware(ResponseCacheMiddleware, services=found),  # cached reads, invalidation
    ]
    check_layer_order([layer.cls for layer in middleware])
    app = Starlette(
        routes=[*table, Mount(docs.ASSETS_PREFIX, app=docs.docs_assets())],
        middleware=middleware,
        exception_handlers={ApiError: handle_api_error, HTTPException: handle_http_error},
        lifespan=lifespan,
    )
    app.state.services = found
    return app


def app_from_environ() -> Starlette:
    """The factory each uvicorn worker process calls."""
    settings = Settings.from_environ(os.environ)
    configure_logging(settings.log_level, settings.log_format)
    return create_app(settings)
