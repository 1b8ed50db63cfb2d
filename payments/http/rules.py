"""Each route's rules, declared once beside the route in app.py; every HTTP layer reads them from
the request state instead of keeping a path list of its own."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Endpoint = Callable[[Request], Awaitable[Response]]
IdempotencyUse = Literal["required", "accepted", "ignored"]
API_PREFIX = "/api/v1/"


@dataclass(frozen=True, slots=True)
class Rules:
    """What the layers do for one method of one route."""

    public: bool = False  # served without an access token
    limited: bool = True  # counted against the global tier (per user, or per client address)
    tiers: tuple[str, ...] = ()  # further tiers: "auth" (per address), "login" (per account),
    # "transfer" (money-moving, per user; charged only when the request may move money)
    idempotency: IdempotencyUse = "ignored"  # an Idempotency-Key: required, accepted or ignored
    cached_view: str | None = None  # the response-cache view this GET reads, if any
    admin: bool = False  # only an admin may call it (403 forbidden for anyone else)
    api_key: bool = True  # an API key may stand in for the access token (401 invalid_token if not)


PUBLIC = Rules(public=True, limited=False)  # health, metrics, docs: no token, no limits
SIGN_IN = Rules(public=True, tiers=("auth",))  # register, refresh: before there is a principal
READ = Rules()  # an authenticated GET, counted against the global tier
WRITE = Rules(idempotency="accepted")  # an authenticated POST that moves no money
MONEY = Rules(tiers=("transfer",), idempotency="required")  # every POST that moves money
ADMIN_MONEY = Rules(tiers=("transfer",), idempotency="required", admin=True)  # deposits
ADMIN_READ = Rules(admin=True)  # an admin's GET: any account, the audit log, the queues
# Managing API keys takes a person's access token: a key cannot make, list or revoke keys. No
# Idempotency-Key either: a stored answer would keep a new key where only its hash may be.
KEY_MANAGEMENT = Rules(api_key=False)


class RuledRoute(Route):
    """A route whose methods each have an endpoint and the rules the layers apply to it. One route
    per path, so that a 405 names every method in Allow."""

    def __init__(self, path: str, **methods: tuple[Endpoint, Rules]) -> None:
        self.rules = {method: rules for method, (_, rules) in methods.items()}
        endpoints = {method: endpoint for method, (endpoint, _) in methods.items()}
        if "GET" in endpoints:
            endpoints["HEAD"] = endpoints["GET"]
            self.rules["HEAD"] = self.rules["GET"]

        async def dispatch(request: Request) -> Response:
            return await endpoints[request.method](request)

        super().__init__(path, dispatch, methods=list(methods))


class RouteTable:
    """Finds a request's route and rules before the router runs (the layers act before it). Fixed
    paths are one dictionary lookup; only the paths with parameters are matched in turn."""

    def __init__(self, routes: list[RuledRoute]) -> None:
        self.fixed = {route.path: route for route in routes if not route.param_convertors}
        self.templated = [route for route in routes if route.param_convertors]

    def find(self, path: str, method: str) -> tuple[str, Rules]:
        """The route template (for logs and metrics) and the rules for this method. An unknown
        path or method under /api/v1 gets the rules of an authenticated read, so that a 404 or
        405 is given only to a caller with a token, and is counted; elsewhere, a public one."""
        route = self.fixed.get(path)
        if route is None:
            route = next((r for r in self.templated if r.path_regex.match(path)), None)
        default = READ if path.startswith(API_PREFIX) else PUBLIC
        if route is None:
            return "unmatched", default
        return route.path, route.rules.get(method, default)
