"""The edge: request bodies parsed and validated, amounts turned into integer minor units exactly."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from pydantic.alias_generators import to_camel

from payments.http.errors import (
    AMOUNT_TOO_LARGE,
    MALFORMED_JSON,
    VALIDATION_ERROR,
    ApiError,
)

# Minor digits per ISO 4217 currency we hold; the `currency` table of sql/0001 says the same.
CURRENCY_EXPONENTS = {"USD": 2, "EUR": 2, "GBP": 2, "ZAR": 2, "JPY": 0}
PLAIN_DECIMAL = re.compile(r"^[0-9]+(?:\.([0-9]+))?$")


class JsonNumber:
    """A JSON number, kept as its source text so that it is never rounded through a float."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """JSON with numbers kept exact; NaN and Infinity are not JSON (400 malformed_json)."""
    try:
        return json.loads(
            body, parse_float=JsonNumber, parse_int=JsonNumber, parse_constant=_refuse_constant
        )
    except (ValueError, RecursionError):
        raise ApiError(MALFORMED_JSON, "the request body is not valid JSON") from None


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


def check_amount(value: object, currency: str | None, *, limit: str, field: str = "amount") -> str:
    """The amount as a plain decimal string, checked exactly (never through a float): digits with
    an optional fraction, above zero, at most the currency's decimals and at most `limit`. When the
    currency is not known yet (it defaults to the recipient's), the database checks the decimals."""
    text = value.text if isinstance(value, JsonNumber) else value
    if not isinstance(text, str):
        raise field_error(field, "must be a decimal string or number")
    match = PLAIN_DECIMAL.match(text)
    if match is None:
        raise field_error(field, "must be a plain decimal like 50.00")
    fraction = match.group(1) or ""
    exponent = CURRENCY_EXPONENTS[currency] if currency else max(CURRENCY_EXPONENTS.values())
    if len(fraction) > exponent:
        raise field_error(field, f"{currency or 'the currency'} takes at most {exponent} decimals")
    amount = Decimal(text)
    if amount <= 0:
        raise field_error(field, "must be greater than zero")
    if amount > Decimal(limit):
        raise ApiError(
            AMOUNT_TOO_LARGE, f"{field} is larger than the maximum of {limit} per transfer"
        )
    return text


def to_minor_units(text: str, currency: str) -> int:
    """'50.00' -> 5000 for USD; the text is a checked plain decimal with few enough decimals."""
    exponent = CURRENCY_EXPONENTS[currency]
    whole, _, fraction = text.partition(".")
    assert len(fraction) <= exponent
    return int(whole + fraction.ljust(exponent, "0"))


def to_decimal_text(amount_minor: int, currency: str) -> str:
    """5000 -> '50.00' for USD; 5000 -> '5000' for JPY."""
    exponent = CURRENCY_EXPONENTS[currency]
    if exponent == 0:
        return str(amount_minor)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**exponent)
    return f"{sign}{whole}.{fraction:0{exponent}d}"


Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Any non-empty string: one we did not issue is an unknown account (422 unknown_account).
AccountNumber = Annotated[str, StringConstraints(min_length=1)]
Email = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254,
                           pattern=r"^[^@\s]+@[^@\s]+\.[^@\s]+$"),
]  # fmt: skip


class RequestModel(BaseModel):
    """Bodies: strict types, no unknown fields, snake_case or camelCase names."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, alias_generator=to_camel,
        validate_by_name=True, validate_by_alias=True,
    )  # fmt: skip


M = TypeVar("M", bound=RequestModel)


class RegisterIn(RequestModel):
    email: Email
    password: Annotated[str, StringConstraints(min_length=8, max_length=128)]
    full_name: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)
    ]


class LoginIn(RequestModel):
    email: Annotated[str, StringConstraints(min_length=1, max_length=254)]
    password: Annotated[str, StringConstraints(min_length=1, max_length=128)]


class RefreshIn(RequestModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)]


class LogoutIn(RequestModel):
    refresh_token: Annotated[str, StringConstraints(min_length=1, max_length=512)] | None = None


class AccountIn(RequestModel):
    currency: Currency


class TransferIn(RequestModel):
    to_account_number: AccountNumber
    amount: Any  # a decimal string or a JsonNumber: check_amount() parses it, exactly
    currency: Currency | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    from_account_number: AccountNumber | None = None


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


def check_currency(currency: str, field: str = "currency") -> str:
    if currency not in CURRENCY_EXPONENTS:
        raise field_error(field, f"must be one of {', '.join(sorted(CURRENCY_EXPONENTS))}")
    return currency
