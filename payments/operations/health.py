"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from starlette.requests import Request
from starlette.responses import Response

from payments.http.errors import UNAVAILABLE, ApiError, problem_response
from payments.http.responses import json_response
from payments.platform.db import Q
from payments.services import services

READY_TIMEOUT_S = 1.0  # a dependency slower than this to answer a ping is not ready


async def health(request: Request) -> Response:
    return json_response(200, {"status": "ok"})


async def ready(request: Request) -> Response:
    """200 when PostgreSQL and Redis both answer, else 503 naming the one that does not. The
    payments queue and whether a worker is alive (its heartbeat) are reported too, as last sampled (every
    few seconds, so that a call costs no more than its two pings): the API accepts payments
    without a worker (they wait for one), so a missing worker does not make it unready."""
    found = services(request)

    async def check(name: str, probe: Awaitable[object]) -> tuple[str, str]:
        try:
            await asyncio.wait_for(probe, READY_TIMEOUT_S)
            return name, "ok"
        except Exception:
            return name, "unavailable"

    components = dict(await asyncio.gather(
        check("postgres", found.pool.fetchval(Q.ping)),
        check("redis", found.redis.ping()),
    ))  # fmt: skip
    queue = dict(found.payment_queue)
    if queue:
        components["worker"] = "ok" if queue.pop("workers_alive") else "absent"
    down = ", ".join(name for name in ("postgres", "redis") if components[name] != "ok")
    if down:
        return problem_response(
            ApiError(
                UNAVAILABLE,
                f"not ready: {down} unavailable",
                headers={"Retry-After": "1"},
                components=components,
            )
        )
    return json_response(200, {"status": "ok", "components": components, "payments": queue})
