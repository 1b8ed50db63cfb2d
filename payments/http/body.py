"""Request bodies: read once (413 past the limit), of JSON's media type (415), parsed exactly
(numbers kept as their text, a repeated key refused), and validated into pydantic models (422)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel
from starlette.types import Message, Receive, Scope

from payments.http.errors import (
    MALFORMED_JSON,
    PAYLOAD_TOO_LARGE,
    UNSUPPORTED_MEDIA_TYPE,
    VALIDATION_ERROR,
    ApiError,
)

JSON_MEDIA_TYPE = "application/json"


@dataclass(frozen=True, slots=True)
class RequestBody:
    """A POST's body as read: its bytes and the parsed JSON (None when the body was empty)."""

    raw: bytes
    payload: Any


class JsonNumber:
    """A JSON number, kept as its source text so that it is never rounded through a float."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


async def read_request_body(scope: Scope, receive: Receive, *, bytes_max: int) -> RequestBody:
    """The whole body, checked: 413 past bytes_max, 415 for a body that is not JSON by its
    Content-Type, 400 malformed_json, 422 for a string JSON may carry but text may not."""
    raw = await read_body(receive, bytes_max)
    if not raw.strip():
        return RequestBody(raw, None)
    check_media_type(scope)
    payload = parse_json(raw)
    # Only an escape (\u0000, \ud800) or a surrogate's UTF-8 bytes (0xED 0xA0-0xBF) can bring a
    # NUL or a lone surrogate into a string: most bodies need no walk.
    if b"\\u" in raw or b"\xed" in raw:
        check_text(payload, "")
    return RequestBody(raw, payload)


async def read_body(receive: Receive, bytes_max: int) -> bytes:
    """The whole body, or 413 as soon as it grows past bytes_max."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > bytes_max:
            raise ApiError(PAYLOAD_TOO_LARGE, f"the body is larger than {bytes_max} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that gives the body again, once, then waits on the client as before."""
    sent = False

    async def receive_again() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return receive_again


def check_media_type(scope: Scope) -> None:
    """A body must say it is JSON: `application/json`, with parameters (charset) or without."""
    for name, value in scope["headers"]:
        if name == b"content-type":
            media_type = value.decode("latin-1").partition(";")[0].strip().lower()
            if media_type == JSON_MEDIA_TYPE:
                return
            break
    raise ApiError(UNSUPPORTED_MEDIA_TYPE, f"send the body as {JSON_MEDIA_TYPE}",
                   headers={"Accept-Post": JSON_MEDIA_TYPE})  # fmt: skip


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object that names a key twice is refused: two parsers may keep different values."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("an object repeats a key")
    return obj


def parse_json(body: bytes) -> Any:
    """JSON with numbers kept exact; NaN, Infinity and a repeated key are not accepted (400)."""
    try:
        return json.loads(
            body, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_refuse_constant,
            object_pairs_hook=_unique_keys,
        )  # fmt: skip
    except (ValueError, RecursionError):
        raise ApiError(MALFORMED_JSON, "the request body is not valid JSON") from None


def check_text(value: Any, where: str) -> None:
    """422 for a string (a value or a key) holding U+0000 or an unpaired surrogate: valid JSON,
    but no text column, log line or UTF-8 encoder will take it."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_text(key, where)
            check_text(item, f"{where}.{key}" if where else key)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_text(item, f"{where}.{index}" if where else str(index))
    elif isinstance(value, str) and not is_text(value):
        raise field_error(where, "must not contain U+0000 or an unpaired surrogate")


def is_text(value: str) -> bool:
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def canonical_json(value: Any) -> str:
    """Sorted keys, no whitespace; numbers as their source text. Used for request fingerprints."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
        default=lambda number: number.text,
    )  # fmt: skip


def field_error(field: str, message: str) -> ApiError:
    return ApiError(
        VALIDATION_ERROR, f"{field}: {message}", errors=[{"field": field, "message": message}]
    )


class RequestModel(BaseModel):
    """Bodies: strict types, no unknown fields, snake_case or camelCase names."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, alias_generator=to_camel,
        validate_by_name=True, validate_by_alias=True,
    )  # fmt: skip


M = TypeVar("M", bound=RequestModel)


def validate_body(model: type[M], body: Any) -> M:
    """A validated model, or 422 validation_error naming each field at fault."""
    if not isinstance(body, dict):
        raise ApiError(VALIDATION_ERROR, "the body must be a JSON object",
                       errors=[{"field": "", "message": "must be a JSON object"}])  # fmt: skip
    try:
        return model.model_validate(body)
    except ValidationError as error:
        errors = [
            {"field": ".".join(str(part) for part in e["loc"]), "message": e["msg"]}
            for e in error.errors(include_url=False, include_input=False)
        ]
        raise ApiError(VALIDATION_ERROR, "; ".join(f"{e['field']}: {e['message']}" for e in errors),
                       errors=errors) from None  # fmt: skip
