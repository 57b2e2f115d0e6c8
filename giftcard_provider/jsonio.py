"""JSON in and out without binary floats.

Numbers with a fraction or exponent parse to Decimal; NaN/Infinity literals,
duplicate keys and absurd nesting are refused as malformed JSON (400), and
Decimals are written back as JSON numbers (simplejson does that natively).

Input that could only hurt later is refused here too, as malformed: bytes that
are not UTF-8 (RFC 8259; a leading BOM is tolerated), lone UTF-16 surrogates
("\\ud800": not Unicode, Redis could not store them) and absurd numbers (more
than 100 characters, or an exponent beyond +-1000, which would make an int()
or 10**n downstream cost minutes).
"""

from __future__ import annotations

import json
import re
from decimal import Decimal

import simplejson
from flask.json.provider import JSONProvider

MAX_NUMBER_CHARS = 100
MAX_EXPONENT = 1000
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a valid amount or JSON number")


def _refuse_duplicates(pairs: list[tuple]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _short(text: str) -> str:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"number of more than {MAX_NUMBER_CHARS} characters")
    return text


def _parse_int(text: str) -> int:
    return int(_short(text))


def _parse_decimal(text: str) -> Decimal:
    number = Decimal(_short(text))
    if not -MAX_EXPONENT <= number.adjusted() <= MAX_EXPONENT:
        raise ValueError(f"number {text} is out of range")
    return number


def _refuse_lone_surrogates(document) -> None:
    pending = [document]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise ValueError("string with a lone UTF-16 surrogate (not Unicode)")
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


# One decoder for every body: json.loads with options builds a new decoder (and scanner) per call. A
# decoder keeps no state between documents, and the json module shares its own default one likewise.
_decoder = json.JSONDecoder(
    parse_float=_parse_decimal,
    parse_int=_parse_int,
    parse_constant=_refuse_constant,
    object_pairs_hook=_refuse_duplicates,
)


def loads(data: str | bytes):
    text = data.decode("utf-8-sig") if isinstance(data, bytes | bytearray) else data
    try:
        document = _decoder.decode(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if "\\u" in text or text is data:  # from valid UTF-8, only a \u escape makes a lone surrogate
        _refuse_lone_surrogates(document)
    return document


class DecimalJSONProvider(JSONProvider):
    # One encoder for every answer: simplejson.dumps with options builds a new one per call.
    _encoder = simplejson.JSONEncoder(separators=(",", ":"), use_decimal=True)

    def dumps(self, obj, **kwargs) -> str:
        if not kwargs:
            return self._encoder.encode(obj)
        kwargs.setdefault("separators", (",", ":"))
        return simplejson.dumps(obj, use_decimal=True, **kwargs)

    def loads(self, s, **kwargs):
        return loads(s)
