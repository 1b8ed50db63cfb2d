"""Where rates come from (one small interface, RateProvider) and the quote's arithmetic, in
Decimal throughout: the rate to 8 decimals and the target amount, both rounded half-even."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Context, Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Protocol

import structlog

from payments.http.body import field_error
from payments.http.errors import UNAVAILABLE, ApiError
from payments.money.amounts import CURRENCY_EXPONENTS

log = structlog.get_logger(__name__)
RATE_DECIMALS = 8  # a quoted rate has at most this many decimals
RATE_QUANTUM = Decimal(1).scaleb(-RATE_DECIMALS)
# Exact enough for any ratio of two rates and any amount the service holds, whatever the
# thread's default context says.
ARITHMETIC = Context(prec=40, rounding=ROUND_HALF_EVEN)
RATES_RETRY_AFTER_S = "5"


class RatesUnavailable(Exception):
    """The provider cannot give a rate it would stand by (down, unreadable, stale)."""


@dataclass(frozen=True, slots=True)
class RateTable:
    """Units of each currency for one unit of the base; the base itself is 1."""

    base: str
    rates: dict[str, Decimal]
    as_of: datetime | None  # the source's own time; None for static rates

    def per_unit(self, currency: str) -> Decimal | None:
        return Decimal(1) if currency == self.base else self.rates.get(currency)


class RateProvider(Protocol):
    """A source of rates. current() raises RatesUnavailable rather than return a stale table."""

    def current(self) -> RateTable: ...


class FileRateProvider:
    """Reads a JSON rates file ({"base", "as_of"?, "rates"}), again whenever it changes (its
    inode, modification time or size); a table whose as_of is older than max_age_s is refused."""

    def __init__(self, path: Path, max_age_s: int) -> None:
        self.path = path
        self.max_age = timedelta(seconds=max_age_s)
        self.version: tuple[int, int, int] | None = None
        self.table: RateTable | None = None

    def current(self) -> RateTable:
        try:
            stat = os.stat(self.path)
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)  # a rename changes st_ino
            if version != self.version or self.table is None:
                self.table = parse_rates(self.path.read_bytes())
                self.version = version
        except (OSError, ValueError) as error:
            self.table = self.version = None
            log.warning("fx_rates_unreadable", error=type(error).__name__)
            raise RatesUnavailable("the rates file cannot be read") from None
        as_of = self.table.as_of
        if as_of is not None and datetime.now(as_of.tzinfo) - as_of > self.max_age:
            raise RatesUnavailable("the rates are too old")
        return self.table


def parse_rates(raw: bytes) -> RateTable:
    """The file's table; ValueError for anything that is not one (a rate that is not a positive
    decimal, a currency code that is not one, an as_of without its offset)."""
    document: Any = json.loads(raw, parse_float=Decimal, parse_int=Decimal)
    if not isinstance(document, dict) or not isinstance(document.get("rates"), dict):
        raise ValueError("not a rates document")
    base = document.get("base")
    if not isinstance(base, str) or len(base) != 3 or not base.isupper():
        raise ValueError("base is not a currency code")
    rates = {}
    for currency, value in document["rates"].items():
        try:
            rate = Decimal(value) if isinstance(value, str | Decimal) else None
        except InvalidOperation:
            rate = None
        if rate is None or not rate.is_finite() or rate <= 0:
            raise ValueError(f"the rate of {currency} is not a positive decimal")
        rates[currency] = rate
    as_of = document.get("as_of")
    if as_of is None:
        return RateTable(base, rates, None)
    if not isinstance(as_of, str):
        raise ValueError("as_of is not a time")
    parsed = datetime.fromisoformat(as_of.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError("as_of has no offset")
    return RateTable(base, rates, parsed)


@dataclass(frozen=True, slots=True)
class Quoted:
    """What a quote stores: the rate as its text, both amounts in minor units."""

    rate: Decimal
    from_minor: int
    to_minor: int
    as_of: datetime | None

    @property
    def rate_text(self) -> str:
        return format(self.rate.normalize(ARITHMETIC), "f")


def quote(
    provider: RateProvider, *, from_currency: str, to_currency: str, from_minor: int
) -> Quoted:
    """The rate from_currency -> to_currency (rates[to] / rates[from], to 8 decimals, half-even),
    and from_minor converted at that rate, half-even to to_currency's minor units. 503 when the
    provider has no rate it stands by, 422 for a currency it does not quote or an amount too
    small to convert to one minor unit."""
    try:
        table = provider.current()
    except RatesUnavailable as error:
        raise ApiError(
            UNAVAILABLE, str(error), headers={"Retry-After": RATES_RETRY_AFTER_S}
        ) from None
    for field, currency in (("from_currency", from_currency), ("to_currency", to_currency)):
        if table.per_unit(currency) is None:
            raise field_error(field, f"no rate is quoted for {currency}")
    source_rate, target_rate = table.per_unit(from_currency), table.per_unit(to_currency)
    assert source_rate is not None
    assert target_rate is not None
    rate = ARITHMETIC.divide(target_rate, source_rate).quantize(
        RATE_QUANTUM, rounding=ROUND_HALF_EVEN, context=ARITHMETIC
    )
    if rate <= 0:
        raise field_error("to_currency", "the rate rounds to zero")
    to_minor = convert(from_minor, rate, from_currency=from_currency, to_currency=to_currency)
    if to_minor <= 0:
        raise field_error("from_amount", f"too small to buy one minor unit of {to_currency}")
    return Quoted(rate, from_minor, to_minor, table.as_of)


def convert(from_minor: int, rate: Decimal, *, from_currency: str, to_currency: str) -> int:
    """from_minor of from_currency at rate, in minor units of to_currency, rounded half-even."""
    amount = Decimal(from_minor).scaleb(-CURRENCY_EXPONENTS[from_currency], ARITHMETIC)
    converted = ARITHMETIC.multiply(amount, rate)
    exponent = CURRENCY_EXPONENTS[to_currency]
    rounded = converted.quantize(
        Decimal(1).scaleb(-exponent), rounding=ROUND_HALF_EVEN, context=ARITHMETIC
    )
    return int(rounded.scaleb(exponent, ARITHMETIC))
