"""JSON in and out without binary floats.

Numbers with a fraction or exponent parse to Decimal; NaN/Infinity literals,
duplicate keys and absurd nesting are refused as malformed JSON (400), and
Decimals are written back as JSON numbers (simplejson does that natively).
"""

from __future__ import annotations

import json
from decimal import Decimal

import simplejson
from flask.json.provider import JSONProvider


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a valid amount or JSON number")


def _refuse_duplicates(pairs: list[tuple]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def loads(data: str | bytes):
    try:
        return json.loads(
            data,
            parse_float=Decimal,
            parse_constant=_refuse_constant,
            object_pairs_hook=_refuse_duplicates,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


class DecimalJSONProvider(JSONProvider):
    def dumps(self, obj, **kwargs) -> str:
        kwargs.setdefault("separators", (",", ":"))
        return simplejson.dumps(obj, use_decimal=True, **kwargs)

    def loads(self, s, **kwargs):
        return loads(s)
