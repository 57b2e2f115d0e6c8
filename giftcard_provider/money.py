"""Exact money: JSON numbers in major units <-> integer minor units.

Amounts arrive as :class:`decimal.Decimal` (the JSON parser never makes a
float) and are stored as integers of the currency's minor unit (ISO 4217
exponent). Only the card knows its currency, so a request amount travels to
the ledger as a (coefficient, scale) pair and ledger.lua scales it, refusing
values more precise than the currency allows, with the currency's name and
exponent in the answer ("USD amounts have at most 2 decimals"). So a binary
float's leftovers (0.30000000000000004) are refused, never rounded.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from iso4217 import Currency

# 10**30 and above is no amount anyone holds (the configured ceilings are far lower); refusing it
# here keeps 1e999999999 from costing a 10**999999999 multiplication.
MAX_INTEGER_DIGITS = 30
# Far finer than any currency (ISO 4217 goes to 4 decimals), but a bound all the same, so that
# 1e-999999999 costs no 10**999999999 either. Anything between is kept exact and refused by the
# ledger, which knows the card's currency and says how many decimals it has.
MAX_SCALE = 100


class UnknownCurrency(ValueError):
    pass


def exponent_of(code: str) -> int:
    """ISO 4217 minor-unit exponent: 2 for USD/BRL, 0 for JPY, 3 for KWD."""
    try:
        exponent = Currency(code.upper()).exponent
    except ValueError:
        raise UnknownCurrency(f"unknown ISO 4217 currency code {code!r}") from None
    if exponent is None:  # gold, SDR, test codes: no minor unit, not money we hold
        raise UnknownCurrency(f"currency {code!r} has no minor unit")
    return exponent


@dataclass(frozen=True)
class Amount:
    """A positive amount as an exact decimal: value == coefficient * 10**-scale."""

    coefficient: int
    scale: int

    @classmethod
    def from_decimal(cls, value: Decimal) -> Amount:
        # Exact and context-free: Decimal.normalize() would round to 28 digits (10.000...001 -> 10),
        # underflow 1e-999999999 to 0 and overflow on 1e999999999.
        if not value.is_finite() or value.is_signed() or value.is_zero():
            raise ValueError("amount must be a positive finite number")
        if value.adjusted() >= MAX_INTEGER_DIGITS:
            raise ValueError("amount is too large")
        _, digits, exponent = value.as_tuple()
        digits = list(digits)
        while exponent < 0 and digits[-1] == 0:  # 12.50 -> 12.5
            digits.pop()
            exponent += 1
        if -exponent > MAX_SCALE:
            raise ValueError(f"amount has more than {MAX_SCALE} decimal places")
        coefficient = int("".join(map(str, digits)))
        if exponent > 0:
            return cls(coefficient * 10**exponent, 0)
        return cls(coefficient, -exponent)

    def ledger_args(self) -> list[str]:
        return [str(self.coefficient), str(self.scale)]

    def to_minor(self, exponent: int) -> int:
        if self.scale > exponent:
            raise ValueError(f"amount has more decimal places than the currency's {exponent}")
        return self.coefficient * 10 ** (exponent - self.scale)


def to_major(minor: int, exponent: int) -> int | Decimal:
    """Render minor units as a JSON-ready number: 1250, 2 -> Decimal('12.5'); 1000, 2 -> 10."""
    value = Decimal(minor).scaleb(-exponent)
    if value == value.to_integral_value():
        return int(value)
    return value.normalize()
