"""Amounts at the edge: decimal strings (or exact JSON numbers) turned into integer minor units
exactly, and back, by each currency's number of minor digits. Never through a float."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Annotated

from pydantic import StringConstraints

from payments.http.body import JsonNumber, field_error
from payments.http.errors import AMOUNT_TOO_LARGE, ApiError

# Minor digits per ISO 4217 currency we hold; the `currency` table of sql/0001 says the same.
CURRENCY_EXPONENTS = {"USD": 2, "EUR": 2, "GBP": 2, "ZAR": 2, "JPY": 0}
PLAIN_DECIMAL = re.compile(r"^[0-9]+(?:\.([0-9]+))?$")

Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
# Any non-empty string: one we did not issue is an unknown account (422 unknown_account).
AccountNumber = Annotated[str, StringConstraints(min_length=1)]


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


def check_currency(currency: str, field: str = "currency") -> str:
    if currency not in CURRENCY_EXPONENTS:
        raise field_error(field, f"must be one of {', '.join(sorted(CURRENCY_EXPONENTS))}")
    return currency
