"""The one typed object the HTTP layers hand each other through a request, on the ASGI scope
under one key. A layer that reads what an outer layer should have set, and finds it missing,
fails loudly: the stack is out of order (app.py also checks the order at start-up)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import Scope

from payments.http.errors import ApiError
from payments.http.rules import Rules
from payments.identity.tokens import Principal

if TYPE_CHECKING:
    from payments.http.admission import Admission, AfterBatch
    from payments.http.body import RequestBody
    from payments.http.idempotency import Answer, IdempotencyKey

STATE_KEY = "payments"


@dataclass(slots=True)
class RequestState:
    """Set by RequestContextMiddleware, then filled in by each layer in turn."""

    request_id: str  # the client's X-Request-ID when sane, else one made for it
    route: str  # the route template, for logs and metrics
    rules: Rules
    principal: Principal | None = None  # AuthMiddleware: who is calling
    body: RequestBody | None = None  # AdmissionMiddleware: a POST's body, read once
    refusal: ApiError | None = None  # an answer decided early, sent once the limiter counted it
    idempotency_key: IdempotencyKey | None = None  # AdmissionMiddleware: key and fingerprint
    cache_view: str | None = None  # AdmissionMiddleware: the cached view a GET reads
    admission: Admission | None = None  # AdmissionMiddleware: what Redis answered
    after: AfterBatch | None = None  # AdmissionMiddleware: Redis writes sent before the response
    answer: Answer | None = None  # the handler: what a money function answered
    idempotency_outcome: str | None = None  # for the canonical log line
    rate_limit_tier: str | None = None  # for the canonical log line: the tier that refused

    def admitted(self) -> Admission:
        if self.admission is None:
            raise RuntimeError("AdmissionMiddleware must run before this layer")
        return self.admission

    def after_batch(self) -> AfterBatch:
        if self.after is None:
            raise RuntimeError("AdmissionMiddleware must run before this layer")
        return self.after


def state_of(scope: Scope) -> RequestState:
    state: RequestState | None = scope.get(STATE_KEY)
    if state is None:
        raise RuntimeError("RequestContextMiddleware must run first: no request state")
    return state
