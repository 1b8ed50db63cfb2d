"""Request id, log context, the one canonical log line per request, and the audit row of every
request to an admin route (method, path, status), once its status is known."""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from payments.admin.audit import origin
from payments.http.rules import API_PREFIX, RouteTable
from payments.http.state import STATE_KEY, RequestState
from payments.platform import metrics
from payments.services import Services

log = structlog.get_logger("payments.request")
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # a client's X-Request-ID, if it is sane


class RequestContextMiddleware:
    """Finds the request's route and rules, starts its request state, binds request_id for every
    log line of the request and writes `request_finished`."""

    def __init__(
        self, app: ASGIApp, *, routes: RouteTable, services: Services | None = None
    ) -> None:
        self.app = app
        self.routes = routes
        self.services = services  # for the audit log; None where no route is an admin's

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        offered = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = offered if REQUEST_ID.match(offered) else uuid.uuid4().hex
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        route, rules = self.routes.find(scope["path"], scope["method"])
        state = scope[STATE_KEY] = RequestState(request_id, route, rules)
        status = 500
        private = scope["path"].startswith(API_PREFIX)

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Request-ID"] = request_id
                if private:  # tokens and balances: no cache on the way may keep them
                    headers["Cache-Control"] = "no-store"
            await send(message)

        metrics.HTTP_IN_FLIGHT.inc()
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            metrics.HTTP_IN_FLIGHT.dec()
            duration_s = time.perf_counter() - started_at
            metrics.HTTP_REQUESTS.labels(scope["method"], route, f"{status // 100}xx").inc()
            metrics.HTTP_DURATION.labels(scope["method"], route).observe(duration_s)
            principal = state.principal
            log.info(
                "request_finished",
                method=scope["method"],
                route=route,
                status=status,
                duration_ms=round(duration_s * 1000, 2),
                principal_id=principal.user_id if principal else None,
                idempotency=state.idempotency_outcome,
                rate_limit_tier=state.rate_limit_tier,
            )
            if rules.admin and principal is not None and self.services is not None:
                self.audit_admin_request(scope, state, status)

    def audit_admin_request(self, scope: Scope, state: RequestState, status: int) -> None:
        """Every request an authenticated caller makes to an admin route, a non-admin's 403 too:
        queued for the buffered writer, so it costs the request no database round trip."""
        assert self.services is not None
        assert state.principal is not None
        self.services.audit.record(
            "admin.request", actor_id=state.principal.user_id, target=state.route,
            details={"method": scope["method"], "path": scope["path"], "status": status},
            **origin(scope),
        )  # fmt: skip
