"""The quote's arithmetic and the rates file, without I/O but a temporary file: the rate to 8
decimals and the target amount to its minor units, both rounded half-even."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from payments.fx.rates import (
    FileRateProvider,
    RatesUnavailable,
    RateTable,
    convert,
    parse_rates,
    quote,
)
from payments.fx.settings import DEVELOPMENT_RATES_FILE
from payments.http.errors import ApiError
from payments.money.amounts import CURRENCY_EXPONENTS


class FixedRates:
    def __init__(self, **rates: str) -> None:
        self.table = RateTable("USD", {code: Decimal(rate) for code, rate in rates.items()}, None)

    def current(self) -> RateTable:
        return self.table


@pytest.mark.parametrize(
    ("from_minor", "to_minor"),
    [(1, 2), (3, 4), (5, 8), (7, 10), (2, 3), (4, 6)],  # 0.01 USD x 150 = 1.5 JPY -> 2, 4.5 -> 4
)
def test_the_target_amount_is_rounded_half_even(from_minor: int, to_minor: int) -> None:
    quoted = quote(FixedRates(JPY="150"), from_currency="USD", to_currency="JPY",
                   from_minor=from_minor)  # fmt: skip
    assert quoted.to_minor == to_minor


def test_half_a_cent_rounds_to_the_even_cent() -> None:
    rates = FixedRates(EUR="0.125")
    assert quote(rates, from_currency="USD", to_currency="EUR", from_minor=20).to_minor == 2
    assert quote(rates, from_currency="USD", to_currency="EUR", from_minor=60).to_minor == 8
    assert quote(rates, from_currency="USD", to_currency="EUR", from_minor=28).to_minor == 4


def test_the_rate_is_rounded_half_even_to_eight_decimals() -> None:
    down = quote(FixedRates(EUR="0.123456785"), from_currency="USD", to_currency="EUR",
                 from_minor=100_00)  # fmt: skip
    up = quote(FixedRates(EUR="0.123456775"), from_currency="USD", to_currency="EUR",
               from_minor=100_00)  # fmt: skip
    assert (down.rate_text, up.rate_text) == ("0.12345678", "0.12345678")
    third = quote(FixedRates(GBP="3"), from_currency="GBP", to_currency="USD", from_minor=100)
    assert third.rate_text == "0.33333333"
    assert third.to_minor == 33  # 1.00 GBP at the stored rate, never at the exact third


def test_a_cross_rate_is_the_ratio_of_the_two_rates_to_the_base() -> None:
    quoted = quote(FixedRates(EUR="0.92", ZAR="18.2"), from_currency="EUR", to_currency="ZAR",
                   from_minor=100_00)  # fmt: skip
    assert quoted.rate_text == "19.7826087"  # 18.2 / 0.92 = 19.78260869565...
    assert quoted.to_minor == 1978_26
    assert convert(1, Decimal("0.5"), from_currency="JPY", to_currency="USD") == 50


def test_a_currency_without_a_rate_is_a_validation_error() -> None:
    with pytest.raises(ApiError) as refused:
        quote(FixedRates(EUR="0.92"), from_currency="USD", to_currency="GBP", from_minor=100)
    assert refused.value.problem.code == "validation_error"
    assert refused.value.extensions["errors"][0]["field"] == "to_currency"


def test_an_amount_too_small_to_convert_is_refused() -> None:
    with pytest.raises(ApiError) as refused:  # 1 JPY at 1/300 is 0.0033 USD: no cent at all
        quote(FixedRates(JPY="300"), from_currency="JPY", to_currency="USD", from_minor=1)
    assert refused.value.problem.code == "validation_error"


def write(path: Path, document: object) -> None:
    path.write_text(json.dumps(document), encoding="utf-8")


def test_the_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "rates.json"
    write(path, {"base": "USD", "rates": {"EUR": "0.92"}})
    provider = FileRateProvider(path, max_age_s=3600)
    assert provider.current().rates == {"EUR": Decimal("0.92")}
    write(path, {"base": "USD", "rates": {"EUR": "0.9300"}})
    os.utime(path, ns=(1, 1))  # another modification time, whatever the clock's resolution
    assert provider.current().rates == {"EUR": Decimal("0.9300")}


def test_stale_missing_and_unreadable_files_give_no_rate(tmp_path: Path) -> None:
    path = tmp_path / "rates.json"
    provider = FileRateProvider(path, max_age_s=3600)
    with pytest.raises(RatesUnavailable):  # missing
        provider.current()
    old = (datetime.now(UTC) - timedelta(hours=2)).isoformat()
    write(path, {"base": "USD", "as_of": old, "rates": {"EUR": "0.92"}})
    with pytest.raises(RatesUnavailable):  # stale
        provider.current()
    fresh = (datetime.now(UTC) - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    write(path, {"base": "USD", "as_of": fresh, "rates": {"EUR": "0.92"}})
    os.utime(path, ns=(2, 2))
    assert provider.current().as_of is not None
    path.write_text('{"base": "USD", "rates": {"EUR": ', encoding="utf-8")  # unreadable
    os.utime(path, ns=(3, 3))
    with pytest.raises(RatesUnavailable):
        provider.current()


@pytest.mark.parametrize(
    "document",
    [[], {"base": "usd", "rates": {}}, {"base": "USD", "rates": {"EUR": "-1"}},
     {"base": "USD", "rates": {"EUR": "NaN"}}, {"base": "USD", "rates": {"EUR": True}},
     {"base": "USD", "as_of": "2026-01-01T00:00:00", "rates": {}}],
)  # fmt: skip
def test_a_file_that_is_not_a_rates_table_is_refused(document: object) -> None:
    with pytest.raises(ValueError):
        parse_rates(json.dumps(document).encode())


def test_a_rate_may_be_a_json_number_read_exactly() -> None:
    table = parse_rates(b'{"base": "USD", "rates": {"EUR": 0.92, "JPY": 151}}')
    assert table.rates == {"EUR": Decimal("0.92"), "JPY": Decimal("151")}


def test_the_development_file_quotes_every_currency_the_service_holds() -> None:
    table = FileRateProvider(DEVELOPMENT_RATES_FILE, max_age_s=3600).current()
    assert table.as_of is None
    assert {code for code in CURRENCY_EXPONENTS if table.per_unit(code) is not None} == set(
        CURRENCY_EXPONENTS
    )
