"""ApiError, the catalog of problem types, and their RFC 9457 `application/problem+json` rendering."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from starlette.responses import Response

PROBLEM_MEDIA_TYPE = "application/problem+json"


@dataclass(frozen=True, slots=True)
class ProblemType:
    status: int
    code: str
    title: str


MALFORMED_JSON = ProblemType(400, "malformed_json", "Request body is not valid JSON")
IDEMPOTENCY_KEY_MISSING = ProblemType(400, "idempotency_key_missing", "Idempotency-Key required")
IDEMPOTENCY_KEY_INVALID = ProblemType(400, "idempotency_key_invalid", "Idempotency-Key invalid")
INVALID_TOKEN = ProblemType(401, "invalid_token", "Invalid or expired token")
INVALID_CREDENTIALS = ProblemType(401, "invalid_credentials", "Invalid email or password")
FORBIDDEN = ProblemType(403, "forbidden", "Forbidden")
NOT_FOUND = ProblemType(404, "not_found", "Not found")
METHOD_NOT_ALLOWED = ProblemType(405, "method_not_allowed", "Method not allowed")
IDEMPOTENCY_KEY_IN_USE = ProblemType(409, "idempotency_key_in_use", "Request still in progress")
EMAIL_TAKEN = ProblemType(409, "email_taken", "Email already registered")
ACCOUNT_EXISTS = ProblemType(409, "account_exists", "Account already exists")
API_KEY_LIMIT = ProblemType(409, "api_key_limit", "Too many API keys")
WEBHOOK_ENDPOINT_LIMIT = ProblemType(409, "webhook_endpoint_limit", "Too many webhook endpoints")
ALREADY_REVERSED = ProblemType(409, "already_reversed", "Transaction already reversed")
NOT_REVERSIBLE = ProblemType(409, "not_reversible", "Transaction cannot be reversed")
QUOTE_USED = ProblemType(
    409, "quote_used", "Quote already used"
)  # answered by sql/ (fx_problem_v1)
QUOTE_EXPIRED = ProblemType(410, "quote_expired", "Quote expired")
PAYLOAD_TOO_LARGE = ProblemType(413, "payload_too_large", "Request body too large")
UNSUPPORTED_MEDIA_TYPE = ProblemType(415, "unsupported_media_type", "Unsupported media type")
VALIDATION_ERROR = ProblemType(422, "validation_error", "Validation failed")
INSUFFICIENT_FUNDS = ProblemType(422, "insufficient_funds", "Insufficient funds")
SELF_TRANSFER = ProblemType(422, "self_transfer", "Cannot transfer to the same account")
CURRENCY_MISMATCH = ProblemType(422, "currency_mismatch", "Currency mismatch")
UNKNOWN_ACCOUNT = ProblemType(422, "unknown_account", "Unknown account")
AMOUNT_TOO_LARGE = ProblemType(422, "amount_too_large", "Amount too large")
IDEMPOTENCY_KEY_REUSED = ProblemType(
    422, "idempotency_key_reused", "Idempotency-Key reused with a different request"
)
RATE_LIMITED = ProblemType(429, "rate_limited", "Too many requests")
INTERNAL_ERROR = ProblemType(500, "internal_error", "Internal server error")
UNAVAILABLE = ProblemType(503, "unavailable", "Service unavailable")

CATALOG: dict[str, ProblemType] = {
    problem.code: problem
    for problem in globals().copy().values()
    if isinstance(problem, ProblemType)
}


class ApiError(Exception):
    """The one exception raised on purpose: a problem type, a detail, and extension members."""

    def __init__(
        self,
        problem: ProblemType,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        errors: list[dict[str, Any]] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(problem.code)
        self.problem = problem
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions
        if errors is not None:
            self.extensions["errors"] = errors

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"/problems/{self.problem.code}",
            "title": self.problem.title,
            "status": self.problem.status,
            "code": self.problem.code,
        }
        if self.detail is not None:
            body["detail"] = self.detail
        body.update(self.extensions)
        return body


def problem_response(error: ApiError) -> Response:
    """Render an ApiError as RFC 9457 problem+json, with the error's headers."""
    content = json.dumps(error.body(), separators=(",", ":"), ensure_ascii=False).encode()
    return Response(
        content,
        status_code=error.problem.status,
        headers=error.headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )
