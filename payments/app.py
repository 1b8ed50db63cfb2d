"""create_app(settings) -> Starlette: the routes, the middleware stack in order, the lifespan."""

from __future__ import annotations

import asyncio
import gc
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from payments import metrics
from payments.admission import Admitter
from payments.db import create_pool
from payments.errors import METHOD_NOT_ALLOWED, NOT_FOUND, ApiError, problem_response
from payments.log import configure_logging, flush_logs_forever
from payments.maintenance import check_ledger_forever, sample_pool_forever, sweep_forever
from payments.middleware.auth import AuthMiddleware
from payments.middleware.idempotency import IdempotencyMiddleware
from payments.middleware.problem import ProblemMiddleware
from payments.middleware.rate_limit import RateLimitMiddleware
from payments.middleware.request_context import RequestContextMiddleware
from payments.middleware.response_cache import ResponseCacheMiddleware
from payments.redis_link import RedisLink
from payments.routes import accounts, auth, docs, health, transfers
from payments.security import AccessTokens, Passwords
from payments.services import Services
from payments.settings import Settings

API = "/api/v1"
POOL_SAMPLE_INTERVAL_S = 5.0  # how fresh payments_db_pool_connections is
GC_FIRST_GENERATION_THRESHOLD = 50_000  # Python's default is 2,000 allocations


def by_method(
    **endpoints: Callable[[Request], Awaitable[Response]],
) -> Callable[[Request], Awaitable[Response]]:
    """One route for a path with several methods, so that a 405 names all of them in Allow."""

    async def dispatch(request: Request) -> Response:
        return await endpoints[request.method if request.method != "HEAD" else "GET"](request)

    return dispatch


def routes() -> list[Route]:
    return [
        Route(f"{API}/health", health.health, methods=["GET"]),
        Route(f"{API}/ready", health.ready, methods=["GET"]),
        Route(f"{API}/auth/register", auth.register, methods=["POST"]),
        Route(f"{API}/auth/login", auth.login, methods=["POST"]),
        Route(f"{API}/auth/refresh", auth.refresh, methods=["POST"]),
        Route(f"{API}/auth/logout", auth.logout, methods=["POST"]),
        Route(
            f"{API}/accounts",
            by_method(GET=accounts.list_accounts, POST=accounts.open_account),
            methods=["GET", "POST"],
        ),
        Route(f"{API}/accounts/{{account_number}}", accounts.get_account, methods=["GET"]),
        Route(
            f"{API}/transactions",
            by_method(GET=transfers.list_transfers, POST=transfers.create_transfer),
            methods=["GET", "POST"],
        ),
        Route(f"{API}/transactions/{{id}}", transfers.get_transfer, methods=["GET"]),
        Route(f"{API}/transactions/{{id}}/reverse", transfers.reverse_transfer, methods=["POST"]),
        Route("/metrics", metrics.metrics_endpoint, methods=["GET"]),
        Route("/openapi.yaml", docs.openapi_document, methods=["GET"]),
        Route("/docs", docs.docs_page, methods=["GET"]),
    ]


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


def connect_redis(settings: Settings) -> Redis:
    """A client that fails fast: a Redis that hangs is a Redis that is down (one quick retry
    replaces a connection that died with a restarted server)."""
    assert settings.redis_url is not None
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
        retry=Retry(NoBackoff(), 1),
        decode_responses=False,
    )


def create_app(settings: Settings) -> Starlette:
    found = Services(
        settings=settings, tokens=AccessTokens(settings), passwords=Passwords(settings)
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        assert settings.database_url is not None
        found.pool = await create_pool(settings, settings.database_url)
        found.redis = connect_redis(settings)
        assert settings.redis_url is not None
        found.redis_link = RedisLink(settings.redis_url, settings.redis_timeout_s)
        found.admitter = Admitter(found.redis_link)
        housekeeping = [
            asyncio.create_task(sweep_forever(found.pool, settings.idempotency_sweep_interval_s)),
            asyncio.create_task(check_ledger_forever(found.pool, settings.ledger_check_interval_s)),
            asyncio.create_task(sample_pool_forever(found.pool, POOL_SAMPLE_INTERVAL_S)),
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
            metrics.process_stopped()
            found.redis_link.close()
            await found.redis.aclose()
            await found.pool.close()
            found.passwords.close()

    middleware = [
        Middleware(RequestContextMiddleware),  # request id, log context, canonical log line
        Middleware(ProblemMiddleware),  # renders ApiError raised by any layer below
        Middleware(AuthMiddleware, services=found),  # sets scope["payments.principal"]
        Middleware(RateLimitMiddleware, services=found),  # the request's one Redis round trip
        Middleware(IdempotencyMiddleware, services=found),  # replays, 409s, stored answers
        Middleware(ResponseCacheMiddleware, services=found),  # cached reads, invalidation
    ]
    served = routes()
    if settings.metrics_port is not None:  # the metrics have a listener of their own
        served = [route for route in served if route.endpoint is not metrics.metrics_endpoint]
    app = Starlette(
        routes=[*served, Mount(docs.ASSETS_PREFIX, app=docs.docs_assets())],
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
