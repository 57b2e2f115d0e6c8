"""Exact money: JSON numbers in major units <-> integer minor units.

Amounts arrive as :class:`decimal.Decimal` (the JSON parser never makes a
float) and are stored as integers of the currency's minor unit (ISO 4217
exponent). Only the card knows its currency, so a request amount travels to
the ledger as a (coefficient, scale) pair and ledger.lua scales it, refusing
values more precise than the currency allows.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from iso4217 import Currency

# ISO 4217's largest exponent (CLF, UYW); anything finer is refused up front.
MAX_SCALE = 4


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
        sign, digits, exponent = value.normalize().as_tuple()
        if sign or not isinstance(exponent, int) or not digits or value == 0:
            raise ValueError("amount must be a positive finite number")
        coefficient = int("".join(map(str, digits)))
        if exponent > 0:
            return cls(coefficient * 10**exponent, 0)
        if -exponent > MAX_SCALE:
            raise ValueError(f"amount has more than {MAX_SCALE} decimal places")
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
