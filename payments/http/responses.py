"""What handlers share: the caller, the body, JSON responses, pages, ids from the path."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from payments.http.body import is_text
from payments.http.errors import NOT_FOUND, ApiError
from payments.http.state import state_of
from payments.identity.tokens import Principal


def principal_of(request: Request) -> Principal:
    principal = state_of(request.scope).principal
    if principal is None:
        raise RuntimeError("a public route asked for the caller: AuthMiddleware did not run")
    return principal


def body_of(request: Request) -> Any:
    """The JSON body the admission layer read and parsed (None when it was empty)."""
    body = state_of(request.scope).body
    if body is None:
        raise RuntimeError("no body was read: AdmissionMiddleware reads the body of a POST")
    return body.payload


def json_response(status: int, content: Any) -> Response:
    return Response(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode(),
                    status_code=status, media_type="application/json")  # fmt: skip


def page_response(bodies: list[str], next_cursor: str | None) -> Response:
    """A list of resources rendered by the database, wrapped without parsing them again."""
    content = f'{{"data":[{",".join(bodies)}],"next_cursor":{json.dumps(next_cursor)}}}'
    return Response(content.encode(), media_type="application/json")


def path_text(request: Request, name: str) -> str:
    """A path parameter that can be text; one with a NUL or a lone surrogate is a 404, like any
    other that names nothing (no database or log line would take it)."""
    text: str = request.path_params[name]
    if not is_text(text):
        raise ApiError(NOT_FOUND, "no such resource")
    return text


def path_id(request: Request, name: str = "id") -> int:
    """A numeric id from the path; a malformed one is a 404, like an unknown one."""
    text = request.path_params[name]
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ApiError(NOT_FOUND, "no such resource")
    return int(text)
