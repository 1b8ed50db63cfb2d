"""Amounts are parsed exactly, and everything that is not a plain decimal is refused."""

from __future__ import annotations

import pytest

from payments.http.body import canonical_json, parse_json, validate_body
from payments.http.errors import ApiError
from payments.money.amounts import check_amount, to_decimal_text, to_minor_units
from payments.money.transfers import TransferIn

LIMIT = "1000000.00"


@pytest.mark.parametrize(
    ("text", "currency", "expected"),
    [("5", "USD", "5"), ("5.5", "USD", "5.5"), ("50.00", "USD", "50.00"), ("0.01", "USD", "0.01"),
     ("1000000.00", "USD", "1000000.00"), ("7", "JPY", "7"), ("007.10", "EUR", "007.10"),
     ("5.25", None, "5.25")],
)  # fmt: skip
def test_plain_decimals_are_accepted(text: str, currency: str | None, expected: str) -> None:
    assert check_amount(text, currency, limit=LIMIT) == expected


@pytest.mark.parametrize(
    ("text", "currency"),
    [("+5", "USD"), (".5", "USD"), ("5.", "USD"), ("1,000", "USD"), ("1e2", "USD"), ("NaN", "USD"),
     ("Infinity", "USD"), ("-5", "USD"), ("0", "USD"), ("0.00", "USD"), ("50.000", "USD"),
     ("5.5", "JPY"), (" 5", "USD"), ("5 ", "USD"), ("", "USD"), ("٥", "USD"), ("0x10", "USD"),
     ("5.123", None)],
)  # fmt: skip
def test_anything_else_is_a_validation_error(text: str, currency: str | None) -> None:
    with pytest.raises(ApiError) as raised:
        check_amount(text, currency, limit=LIMIT)
    assert raised.value.problem.code == "validation_error"
    assert raised.value.extensions["errors"][0]["field"] == "amount"


def test_json_numbers_keep_their_source_text() -> None:
    body = parse_json(b'{"amount": 50.10, "big": 12345678901234567890.01}')
    assert check_amount(body["amount"], "USD", limit=LIMIT) == "50.10"
    # A number and the string of the same digits are the same amount, and fingerprint alike.
    assert canonical_json(body) == '{"amount":"50.10","big":"12345678901234567890.01"}'
    assert canonical_json(body) == canonical_json(
        parse_json(b'{"big":"12345678901234567890.01","amount":"50.10"}')
    )


def test_exponent_numbers_and_non_strings_are_refused() -> None:
    for raw in (b'{"amount": 1e2}', b'{"amount": 1E2}', b'{"amount": -5}'):
        with pytest.raises(ApiError) as raised:
            check_amount(parse_json(raw)["amount"], "USD", limit=LIMIT)
        assert raised.value.problem.code == "validation_error"
    for value in (True, None, [], {}):
        with pytest.raises(ApiError):
            check_amount(value, "USD", limit=LIMIT)


def test_over_the_maximum_is_amount_too_large() -> None:
    with pytest.raises(ApiError) as raised:
        check_amount("1000000.01", "USD", limit=LIMIT)
    assert raised.value.problem.code == "amount_too_large"
    with pytest.raises(ApiError) as raised:
        check_amount("9" * 400, "USD", limit=LIMIT)
    assert raised.value.problem.code == "amount_too_large"


@pytest.mark.parametrize(
    "raw", [b"NaN", b'{"amount": NaN}', b'{"a": Infinity}', b"{", b"\xff", b"[1,]"]
)
def test_what_is_not_json_is_malformed_json(raw: bytes) -> None:
    with pytest.raises(ApiError) as raised:
        parse_json(raw)
    assert raised.value.problem.code == "malformed_json"
    assert raised.value.problem.status == 400


def test_minor_units_round_trip() -> None:
    assert to_minor_units("50.5", "USD") == 5050
    assert to_minor_units("1000", "JPY") == 1000
    assert to_decimal_text(5050, "USD") == "50.50"
    assert to_decimal_text(5, "USD") == "0.05"
    assert to_decimal_text(1000, "JPY") == "1000"
    assert to_decimal_text(-250, "EUR") == "-2.50"


def test_bodies_take_camel_case_and_refuse_unknown_fields() -> None:
    command = validate_body(
        TransferIn, {"toAccountNumber": "AC1", "amount": "5", "fromAccountNumber": "AC2"}
    )
    assert (command.to_account_number, command.from_account_number) == ("AC1", "AC2")
    with pytest.raises(ApiError) as raised:
        validate_body(TransferIn, {"to_account_number": "AC1", "amount": "5", "color": "red"})
    assert raised.value.extensions["errors"][0]["field"] == "color"
    with pytest.raises(ApiError) as raised:
        validate_body(TransferIn, {"to_account_number": 5, "amount": "5"})
    assert raised.value.problem.code == "validation_error"
    with pytest.raises(ApiError) as raised:
        validate_body(TransferIn, ["not", "an", "object"])
    assert raised.value.problem.code == "validation_error"
