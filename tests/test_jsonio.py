"""jsonio.loads keeps one decoder for every body (issue 12): it must decide exactly as json.loads
with the same hooks does, on any text, valid JSON or not."""

from __future__ import annotations

import json

from hypothesis import example, given
from hypothesis import strategies as st

from giftcard_provider import jsonio


def reference(data: str | bytes):
    """What loads did with a new decoder per call."""
    text = data.decode("utf-8-sig") if isinstance(data, bytes | bytearray) else data
    try:
        document = json.loads(
            text,
            parse_float=jsonio._parse_decimal,
            parse_int=jsonio._parse_int,
            parse_constant=jsonio._refuse_constant,
            object_pairs_hook=jsonio._refuse_duplicates,
        )
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
    if "\\u" in text or text is data:
        jsonio._refuse_lone_surrogates(document)
    return document


def outcome(loads, data):
    try:
        document = loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError included
        return "refused"
    return json.dumps(document, default=repr), repr(document)  # repr: Decimal("1.0") is not 1.0


json_text = st.recursive(
    st.none() | st.booleans() | st.integers() | st.decimals(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=12,
).map(lambda v: json.dumps(v, default=str))


@given(st.one_of(json_text, st.text(), st.binary(), json_text.map(lambda t: t.encode())))
@example('\ufeff{"a":1}')  # a BOM in text: refused
@example(b'\xef\xbb\xbf{"a":1}')  # a BOM in bytes: tolerated
@example(b'\xef\xbb\xbf\xef\xbb\xbf{"a":1}')  # two: refused
@example('{"a":1,"a":2}')
@example('{"v":1e99999}')
@example('["\\ud800"]')
@example("[NaN]")
@example("[1.50, 2, -0.0]")
def test_one_decoder_decides_as_a_new_one_per_call(data):
    assert outcome(jsonio.loads, data) == outcome(reference, data)
