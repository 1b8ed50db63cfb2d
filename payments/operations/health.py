"""Liveness and readiness."""

from __future__ import annotations

import asyncio

from starlette.requests import Request
from starlette.responses import Response

from payments.http.errors import UNAVAILABLE, ApiError, problem_response
from payments.http.responses import json_response
from payments.services import services

READY_TIMEOUT_S = 1.0  # a dependency slower than this to answer a ping is not ready


async def health(request: Request) -> Response:
    return json_response(200, {"status": "ok"})


async def ready(request: Request) -> Response:
    """200 when PostgreSQL and Redis both answer, else 503 naming the one that does not."""
    found = services(request)

    async def check(name: str, probe: asyncio.Future[object] | object) -> tuple[str, str]:
        try:
            await asyncio.wait_for(probe, READY_TIMEOUT_S)  # type: ignore[arg-type]
            return name, "ok"
        except Exception:
            return name, "unavailable"

    components = dict(await asyncio.gather(
        check("postgres", found.pool.fetchval("SELECT 1")),
        check("redis", found.redis.ping()),
    ))  # fmt: skip
    if any(state != "ok" for state in components.values()):
        down = ", ".join(name for name, state in components.items() if state != "ok")
        return problem_response(
            ApiError(
                UNAVAILABLE,
                f"not ready: {down} unavailable",
                headers={"Retry-After": "1"},
                components=components,
            )
        )
    return json_response(200, {"status": "ok", "components": components})
