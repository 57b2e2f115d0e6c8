"""Hostile input, on both backends: every such request is refused with a 4xx and changes nothing.

Refusals answer JSON {code, message} (401 and 403 stay empty-bodied), never a 5xx, and
leave every Redis key exactly as it was (tests/snapshot.py compares the whole database).
Each body case is sent to all five endpoints that read a body, built from a body that is
accepted as it is (test_templates_are_valid), so only the hostile part can be the reason.

Decisions this file pins down:
* Content-Type never decides: a JSON body is read as JSON whatever the header says
  (text/plain, form types, none at all); a body that is not JSON is a 400.
* The body must be UTF-8 (RFC 8259; a leading BOM is tolerated): UTF-16/32, invalid or
  overlong bytes and lone surrogates (raw or as \\ud800 escapes) are malformed JSON.
* Numbers: NaN/Infinity literals, literals of more than 100 characters and exponents
  beyond +-1000 are malformed JSON everywhere; amounts beyond the ceiling, zero, negative
  or finer than the currency are a 400 on the money endpoints.
* Strings we do accept are stored and read back faithfully, "|" and NUL included.
* A body that cannot be read (malformed chunked encoding, or cut short) is a 400
  invalid_request, logged without a traceback, in the test client and under gunicorn.
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData

from giftcard_provider.money import Amount

from .conftest import APP_KEY, APP_TOKEN
from .hub import body
from .redis_server import free_port
from .snapshot import assert_rejected, unchanged

ROOT = Path(__file__).resolve().parent.parent

SEARCH = (
    b'{"client":{"id":"shopper-1","email":"shopper@example.com","document":"1"},'
    b'"cart":{"redemptionCode":null,"relationName":null,"grandTotal":%s}}'
)
CREATE = b'{"relationName":"gift","caption":"Gift card","profileId":"shopper@example.com","note":%s}'
DEBIT = b'{"operation":"Debit","value":%s,"requestId":"hostile-debit","redemptionToken":"TOKEN","orderInfo":null}'
SETTLE = b'{"value":%s,"requestId":"hostile-settlement"}'
CANCEL = b'{"value":%s,"requestId":"hostile-cancellation"}'


@pytest.fixture
def ledger(hub):
    """A card holding 100 USD with a Debit of 10 still held."""
    card = hub.funded_card(Decimal("100"), currencyCode="USD")
    tx = hub.debit(card["id"], Decimal("10"))
    return card["id"], tx


@pytest.fixture
def endpoints(hub, ledger) -> dict[str, tuple[str, bytes]]:
    """Every endpoint that reads a body: (path, body template with %s where a number goes)."""
    card, tx = ledger
    return {
        "search": ("/giftcards/_search", SEARCH),
        "create": ("/giftcards", CREATE),
        "transactions": (f"/giftcards/{card}/transactions", DEBIT.replace(b"TOKEN", hub.token(card).encode())),
        "settlements": (f"/giftcards/{card}/transactions/{tx}/settlements", SETTLE),
        "cancellations": (f"/giftcards/{card}/transactions/{tx}/cancellations", CANCEL),
    }


def post(hub, path: str, data: bytes, content_type: str | None = "application/json", **kwargs):
    headers = {**hub.headers, **({"Content-Type": content_type} if content_type else {})}
    return hub.client.post(path, data=data, headers={**headers, **kwargs.pop("headers", {})}, **kwargs)


def with_extra(data: bytes, raw_value: bytes) -> bytes:
    """The body with one more member, "extra": raw_value, spliced in before its last "}"."""
    return data[:-1] + b',"extra":' + raw_value + b"}"


def test_templates_are_valid(hub, endpoints):
    """The bodies the hostile cases start from are accepted as they are (so a refusal below is the case's doing)."""
    for name, (path, template) in endpoints.items():
        response = post(hub, path, with_extra(template % b"1", b'"fine"'))
        assert response.status_code == 200, (name, response.get_data(as_text=True))


# -- malformed or unacceptable bodies, sent to every endpoint ---------------------------------------------------

WHOLE_BODIES = {
    "array": b"[]",
    "string": b'"value"',
    "null": b"null",
    "number": b"1",
    "true": b"true",
    "empty": b"",
    "whitespace": b" \r\n\t ",
    "60k [": b"[" * 60_000,
    "10k nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "truncated": b'{"value": 1, "requestId": "r',
    "trailing garbage": b'{"value": 1, "requestId": "r"} x',
    "two documents": b'{"value": 1, "requestId": "r"}{"value": 1, "requestId": "r"}',
    "single quotes": b"{'value': 1, 'requestId': 'r'}",
    "comment": b'{"value": 1, "requestId": "r"} // note',
    "form encoded": b"value=1&requestId=r",
}


@pytest.mark.parametrize("raw", WHOLE_BODIES.values(), ids=WHOLE_BODIES.keys())
def test_malformed_or_non_object_body(hub, store, endpoints, raw):
    for path, _ in endpoints.values():
        assert_rejected(store.redis, lambda path=path: post(hub, path, raw), 400)


# Spliced into an otherwise valid body as the value of an extra member.
BAD_MEMBERS = {
    "invalid UTF-8": b'"\xff\xfe"',
    "overlong UTF-8": b'"\xc0\xaf"',
    "UTF-8 encoded surrogate": b'"\xed\xa0\x80"',
    "escaped lone high surrogate": b'"\\ud800"',
    "escaped lone low surrogate": b'"x\\udfffy"',
    "lone surrogate in a key": b'{"\\ud83d": 1}',
    "lone surrogate in an array": b'["ok", ["\\udbff"]]',
    "NaN": b"NaN",
    "Infinity": b"Infinity",
    "-Infinity": b"-Infinity",
    "1e999999999": b"1e999999999",
    "1e-999999999": b"1e-999999999",
    "10**5000 as digits": b"1" + b"0" * 5000,
    "101-digit integer": b"1" * 101,
    "1000 nested arrays": b"[" * 1000 + b"]" * 1000,
}


@pytest.mark.parametrize("raw", BAD_MEMBERS.values(), ids=BAD_MEMBERS.keys())
def test_malformed_member(hub, store, endpoints, raw):
    for path, template in endpoints.values():
        data = with_extra(template % b"1", raw)
        assert_rejected(store.redis, lambda path=path, data=data: post(hub, path, data), 400)


def test_other_encodings_than_utf8(hub, store, endpoints):
    for path, template in endpoints.values():
        text = (template % b"1").decode()
        for encoding in ("utf-16", "utf-16-le", "utf-32"):
            data = text.encode(encoding)
            assert_rejected(store.redis, lambda path=path, data=data: post(hub, path, data), 400)


def test_duplicate_keys(hub, store, endpoints):
    duplicated = {
        "search": b'{"cart":{},',
        "create": b'{"caption":"other",',
        "transactions": b'{"value":2,',
        "settlements": b'{"value":2,',
        "cancellations": b'{"value":2,',
    }
    for name, (path, template) in endpoints.items():
        data = duplicated[name] + (template % b"1")[1:]
        assert_rejected(store.redis, lambda path=path, data=data: post(hub, path, data), 400)


MONEY_ENDPOINTS = ("transactions", "settlements", "cancellations")
BAD_AMOUNTS = {
    "1e400": b"1e400",
    "10**99 as digits": b"1" + b"0" * 99,  # 100 characters: parsed, then far above the ceiling
    "above the ceiling": b"1000000.01",
    "1e29": b"1e29",
    "zero": b"0",
    "zero with exponent": b"0e5",
    "negative zero": b"-0.0",
    "negative": b"-1",
    "finer than a cent": b"0.001",
    "1e-30": b"1e-30",
    "28 zeros then a digit": b"10.0000000000000000000000000001",
    "string": b'"1"',
    "boolean": b"true",
    "null": b"null",
    "object": b'{"value": 1}',
}


@pytest.mark.parametrize("raw", BAD_AMOUNTS.values(), ids=BAD_AMOUNTS.keys())
def test_bad_amount(hub, store, endpoints, raw):
    for name in MONEY_ENDPOINTS:
        path, template = endpoints[name]
        assert_rejected(store.redis, lambda path=path, template=template: post(hub, path, template % raw), 400)


@pytest.mark.parametrize("text", ["1e-999999999", "1e999999999", "1E+30", "sNaN", "-0", "0E-7", "1e-101"])
def test_amounts_are_parsed_exactly_or_refused(text):
    """Below the JSON parser's own bounds: no decimal context may round, underflow to 0 or overflow."""
    with pytest.raises(ValueError):
        Amount.from_decimal(Decimal(text))


def test_fine_amounts_are_kept_exact_for_the_ledger_to_refuse():
    """Finer than any currency, but kept exact: the ledger refuses it naming the card's currency."""
    assert Amount.from_decimal(Decimal("10.0000000000000000000000000001")) == Amount(10**29 + 1, 28)
    assert Amount.from_decimal(Decimal("0.30000000000000004")) == Amount(30000000000000004, 17)


def test_amounts_keep_every_digit():
    assert Amount.from_decimal(Decimal("123456789012345678901234567.5")) == Amount(1234567890123456789012345675, 1)
    assert Amount.from_decimal(Decimal("12.5000")) == Amount(125, 1)
    assert Amount.from_decimal(Decimal("1E+3")) == Amount(1000, 0)


# -- Content-Type ------------------------------------------------------------------------------------------------

CONTENT_TYPES = [
    "application/json",
    "application/vnd.vtex.giftcards.v1+json",
    "application/vnd.vtex.giftcardproviders.v1+json",
    "application/json; charset=utf-8",
    "text/plain",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "application/xml",
    "nonsense",
    None,
]


@pytest.mark.parametrize("content_type", CONTENT_TYPES)
def test_any_content_type_with_a_json_body_is_read_as_json(hub, ledger, content_type):
    card, _ = ledger
    before = hub.balance(card)
    data = b'{"operation":"Credit","value":2.5,"requestId":"ct-credit"}'
    response = post(hub, f"/giftcards/{card}/transactions", data, content_type)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert hub.balance(card) == before + Decimal("2.5")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_a_body_that_is_not_json_is_a_400_whatever_the_content_type(hub, store, endpoints, content_type):
    for path, _ in endpoints.values():
        call = lambda path=path: post(hub, path, b"value=1&requestId=r", content_type)  # noqa: E731
        assert_rejected(store.redis, call, 400)


# -- size ----------------------------------------------------------------------------------------------------------


def padded(data: bytes, size: int) -> bytes:
    """The JSON document followed by spaces up to `size` bytes (still the same valid JSON)."""
    assert len(data) <= size
    return data + b" " * (size - len(data))


def test_oversized_body_is_a_413(hub, store, endpoints, settings):
    limit = settings.max_content_length
    for path, template in endpoints.values():
        for data in (
            padded(template % b"1", limit + 1),
            b"[" * 100_000,
            with_extra(template % b"1", b'"' + b"a" * limit + b'"'),
        ):
            error = assert_rejected(store.redis, lambda path=path, data=data: post(hub, path, data), 413)
            assert error["code"] == "request_entity_too_large"


def test_oversized_streamed_body_is_a_413(hub, store, endpoints, settings):
    """A chunked body has no Content-Length: werkzeug would stop reading it at the limit without a word."""
    limit = settings.max_content_length

    def streamed(path, data):
        return post(
            hub,
            path,
            None,
            input_stream=io.BytesIO(data),
            headers={"Transfer-Encoding": "chunked"},
            environ_overrides={"wsgi.input_terminated": True},  # what gunicorn sets for chunked requests
        )

    for path, template in endpoints.values():
        data = padded(template % b"1", limit + 1)
        assert_rejected(store.redis, lambda path=path, data=data: streamed(path, data), 413)
    path, template = endpoints["settlements"]
    assert streamed(path, padded(template % b"1", limit)).status_code == 200  # exactly the limit is fine


class _BrokenChunks(io.RawIOBase):
    """wsgi.input as gunicorn hands it over for a chunked body whose framing is bad: read() raises."""

    def __init__(self, error: Exception):
        self.error = error

    def readable(self):
        return True

    def readinto(self, buffer):
        raise self.error


@pytest.mark.parametrize(
    "error", [InvalidChunkSize(b"zz"), ChunkMissingTerminator(b"XX"), NoMoreData(b""), ConnectionResetError()]
)
def test_an_unreadable_streamed_body_is_a_400(hub, store, endpoints, caplog, error):
    for path, _ in endpoints.values():
        response = assert_rejected(
            store.redis,
            lambda path=path: post(
                hub,
                path,
                None,
                headers={"Transfer-Encoding": "chunked"},
                environ_overrides={"wsgi.input_terminated": True, "wsgi.input": _BrokenChunks(error)},
            ),
            400,
        )
        assert response["code"] == "invalid_request" and "could not be read" in response["errors"]["json"][0]
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


def _raw_post(port: int, path: str, chunked_body: bytes) -> tuple[int, dict]:
    """POST a hand-framed chunked body over a raw socket; the status and JSON body of the answer."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nX-PROVIDER-API-AppKey: {APP_KEY}\r\n"
        f"X-PROVIDER-API-AppToken: {APP_TOKEN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head.encode() + chunked_body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


@pytest.mark.slow
def test_a_malformed_chunked_body_is_a_400_under_gunicorn(redis_server, tmp_path):
    port = free_port()
    env = {**os.environ, "APP_ENV": "development", "REDIS_URL": redis_server.url, "PYTHONPATH": str(ROOT)}
    env.update(PROVIDER_API_APP_KEY=APP_KEY, PROVIDER_API_APP_TOKEN=APP_TOKEN, WEB_CONCURRENCY="1")
    env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "metrics")
    log_file = tmp_path / "gunicorn.log"
    with log_file.open("wb") as out:
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-b", f"127.0.0.1:{port}", "wsgi:app"]
        server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, log_file.read_text()
                time.sleep(0.1)
        card = b'{"relationName":"gift","caption":"Gift card","profileId":"shopper@example.com"}'
        status, created = _raw_post(port, "/giftcards", b"%x\r\n%s\r\n0\r\n\r\n" % (len(card), card))
        assert status == 200 and created["id"]  # well-framed chunks are read
        for framing in (
            b"zz\r\n" + card + b"\r\n0\r\n\r\n",  # a chunk size that is not hex
            b"%x\r\n%sXX0\r\n\r\n" % (len(card), card),  # a chunk without its CRLF terminator
        ):
            status, error = _raw_post(port, "/giftcards", framing)
            assert (status, error["code"]) == (400, "invalid_request")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(20)
    text = log_file.read_text()
    assert "Traceback" not in text and '"level":"ERROR"' not in text, text
    assert text.count("request body unreadable") == 2


def test_a_body_of_exactly_the_limit_is_read(hub, endpoints, settings):
    path, template = endpoints["settlements"]
    response = post(hub, path, padded(template % b"1", settings.max_content_length))
    assert response.status_code == 200, response.get_data(as_text=True)


def test_credentials_come_before_size(hub, store, endpoints, settings):
    """Missing credentials stay a 401 and wrong ones a 403, empty-bodied, however big the body."""
    data = b"[" * (settings.max_content_length + 1)
    for path, _ in endpoints.values():
        for headers, status in (({}, 401), ({"X-PROVIDER-API-AppKey": "x", "X-PROVIDER-API-AppToken": "y"}, 403)):
            with unchanged(store.redis):
                response = hub.client.post(path, data=data, headers={"Content-Type": "application/json", **headers})
            assert response.status_code == status
            assert response.get_data() == b""


# -- path ids -------------------------------------------------------------------------------------------------------

ODD_IDS = [
    "%00",
    "..",
    "%2E%2E",
    "{",
    "}",
    "%7B%7D",
    ":",
    "gc:{x}:card",
    "%3A",
    "é",
    "%C3%A9",
    "💳",
    "%FF",
    "%ED%A0%80",
    "%0A",
    "%20",
    "*",
    "a" * 10_000,
]


def odd_paths(card: str, tx: str, odd: str) -> list[tuple[str, str]]:
    gets = [
        f"/giftcards/{odd}",
        f"/giftcards/{odd}/transactions",
        f"/giftcards/{odd}/transactions/{tx}",
        f"/giftcards/{card}/transactions/{odd}",
        f"/giftcards/{card}/transactions/{odd}/authorization",
        f"/giftcards/{card}/transactions/{odd}/settlements",
        f"/giftcards/{odd}/transactions/{tx}/cancellations",
    ]
    posts = [
        f"/giftcards/{odd}/transactions",
        f"/giftcards/{card}/transactions/{odd}/settlements",
        f"/giftcards/{odd}/transactions/{tx}/cancellations",
    ]
    return [("GET", p) for p in gets] + [("POST", p) for p in posts]


@pytest.mark.parametrize("odd", ODD_IDS, ids=lambda odd: odd if len(odd) < 20 else f"{len(odd)} chars")
def test_odd_path_ids_are_not_found(hub, store, ledger, odd):
    card, tx = ledger
    payload = b'{"operation":"Credit","value":1,"requestId":"odd-id"}'
    for method, path in odd_paths(card, tx, odd):
        call = (lambda path=path: hub.get(path)) if method == "GET" else (lambda path=path: post(hub, path, payload))
        assert_rejected(store.redis, call, 404)


# -- headers --------------------------------------------------------------------------------------------------------

ODD_RANGES = [
    "resources=99999999999999999999999-99999999999999999999999",
    "resources=0-" + "9" * 5000,
    "resources=9223372036854775807-9223372036854775807",
    "resources=5-2",
    "resources=-1-3",
    "resources=٣-٩",
    "resources=",
    "x" * 8000,
]


@pytest.mark.parametrize("rest_range", ODD_RANGES, ids=lambda r: r[:30])
def test_odd_rest_range_is_read_leniently(hub, store, ledger, rest_range):
    card, _ = ledger
    search = {"client": {"id": "shopper@example.com"}, "cart": {"redemptionCode": None}}
    with unchanged(store.redis):
        for response in (
            hub.get(f"/giftcards/{card}/transactions", headers={"REST-Range": rest_range}),
            hub.post("/giftcards/_search", search, headers={"REST-Range": rest_range}),
        ):
            assert response.status_code == 200, response.get_data(as_text=True)
            assert isinstance(body(response), list)
            content_range = response.headers["REST-Content-Range"]
            assert content_range.startswith("resources ") and "/" in content_range, content_range


@pytest.mark.parametrize(
    ("key", "token", "status"),
    [
        ("", "", 401),
        ("", "test-app-token", 401),
        ("test-app-key", "", 401),
        ("é" * 100, "ü", 403),
        ("k" * 8000, "t" * 8000, 403),
        ("test-app-key ", "test-app-token", 403),
        ("TEST-APP-KEY", "TEST-APP-TOKEN", 403),
        ("test-app-key", "old-token", 403),
    ],
)
def test_odd_credentials(hub, store, endpoints, key, token, status):
    for path, template in endpoints.values():
        headers = {"X-PROVIDER-API-AppKey": key, "X-PROVIDER-API-AppToken": token, "Content-Type": "application/json"}
        with unchanged(store.redis):
            response = hub.client.post(path, data=template % b"1", headers=headers)
        assert response.status_code == status
        assert response.get_data() == b""


# -- odd but valid strings are kept as they are ------------------------------------------------------------------

ODD_REQUEST_IDS = ["a|b|c", "|", "nul\u0000byte", "ünïcødé 💳", "  spaced  ", "x" * 128, '"quoted" \\ back']


@pytest.mark.parametrize("request_id", ODD_REQUEST_IDS, ids=lambda r: r[:20])
def test_odd_request_ids_are_stored_and_read_back(hub, ledger, request_id):
    card, tx = ledger
    for kind, call in (("settlements", hub.settle), ("cancellations", hub.cancel)):
        first = call(card, tx, Decimal("1"), rid=request_id)
        assert first.status_code == 200, first.get_data(as_text=True)
        replay = call(card, tx, Decimal("1"), rid=request_id)
        assert (replay.status_code, body(replay)) == (200, body(first))
        listed = hub.get(f"/giftcards/{card}/transactions/{tx}/{kind}")
        assert listed.status_code == 200, listed.get_data(as_text=True)
        assert [op["oid"] for op in body(listed)] == [body(first)["oid"]]
    credit = hub.transaction(card, "Credit", Decimal("1"), rid=request_id)
    assert credit.status_code == 200, credit.get_data(as_text=True)
    shown = hub.get(f"/giftcards/{card}/transactions/{body(credit)['id']}")
    assert body(shown)["requestId"] == request_id
