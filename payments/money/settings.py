"""Money's settings: a new user's opening balance, the default currency, the largest transfer."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import model_validator

from payments.money.amounts import CURRENCY_EXPONENTS, PLAIN_DECIMAL
from payments.platform.settings import Env, Section


class MoneySettings(Section):
    # A new user's first account opens with this, paid by the funding account: 1000.00 in
    # development and test, 0 in production (money enters there only through deposits).
    opening_balance: Annotated[str | None, Env("OPENING_BALANCE")] = None
    default_currency: Annotated[str, Env("DEFAULT_CURRENCY")] = "USD"
    max_transfer_amount: Annotated[str, Env("MAX_TRANSFER_AMOUNT")] = "1000000.00"
    ledger_check_interval_s: int = 300  # how often each process checks that the books balance

    @model_validator(mode="after")
    def check_money(self) -> MoneySettings:
        """The currency is one we hold; the amounts are plain decimals it can hold."""
        if self.default_currency not in CURRENCY_EXPONENTS:
            raise ValueError("default_currency: not a currency this service holds")
        exponent = CURRENCY_EXPONENTS[self.default_currency]
        for name, text, minimum in (
            ("opening_balance", self.opening_balance or "0", Decimal(0)),
            ("max_transfer_amount", self.max_transfer_amount, Decimal("0.01")),
        ):
            match = PLAIN_DECIMAL.match(text)
            if match is None or len(match.group(1) or "") > exponent or Decimal(text) < minimum:
                raise ValueError(f"{name}: not a plain decimal amount in {self.default_currency}")
        return self
