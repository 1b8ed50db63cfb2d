"""Renders ApiError raised by any layer below as problem+json; anything unexpected becomes a 500."""

from __future__ import annotations

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.http.errors import INTERNAL_ERROR, ApiError, problem_response
from payments.platform.db import as_unavailable

log = structlog.get_logger(__name__)


class ProblemMiddleware:
    """No stack trace, SQL or secret reaches a client: the traceback goes to the log only."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        except ApiError as error:
            if started:
                raise
            await problem_response(error)(scope, receive, send)
        except Exception as error:
            unavailable = as_unavailable(error)
            if unavailable is None:
                log.exception("request_failed")
            if not started:
                await problem_response(unavailable or ApiError(INTERNAL_ERROR))(
                    scope, receive, send
                )
