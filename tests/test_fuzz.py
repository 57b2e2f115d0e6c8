"""Schemathesis against VTEX's own protocol spec, on both backends, with a bounded budget.

Every one of the spec's 11 operations is fuzzed (the spec's examples, schemathesis's
coverage cases and generated data, positive and negative) with real ids seeded first, so
requests reach the ledger and not only the 404 path. What must hold:

* with valid credentials: never a 5xx; a documented response (200) conforms to the spec's
  schema; always `application/json`; an error is JSON {code, message}; auth is enforced
  (schemathesis's `ignored_auth` probes each operation without and with wrong credentials);
* without credentials: always 401 with an empty body; with wrong ones: always 403 with an
  empty body; never a 2xx, whatever the rest of the request is.

Checks left out, on purpose: `status_code_conformance` (the spec documents only 200, the
protocol adds 400/404/409/422), `positive_data_acceptance` (the spec's types admit bodies
the protocol refuses, such as operation "foo" or a value of 1e300) and
`negative_data_rejection` / `missing_required_header` (the protocol tells us to be tolerant:
the Hub may send null or leave out fields and headers the spec marks required).

scripts/fuzz.sh runs the same checks through the schemathesis CLI, longer, against a live
server.
"""

from __future__ import annotations

import atexit
import json
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import schemathesis
import simplejson
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from giftcard_provider import jsonio

from .conftest import APP_KEY, APP_TOKEN
from .hub import Hub

SPEC_PATH = Path(__file__).resolve().parent.parent / "reference" / "giftcard-provider-protocol.openapi.json"
AUTH_HEADERS = ("X-PROVIDER-API-AppKey", "X-PROVIDER-API-AppToken")
# 401/403 only without valid credentials; 406/415 never (any JSON media type is accepted).
ALLOWED = {200, 400, 401, 403, 404, 405, 409, 422}
CHECKS = (
    "not_a_server_error",
    "response_schema_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "ignored_auth",
    "unsupported_method",
)
BUDGET = settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


def spec() -> dict:
    return json.loads(SPEC_PATH.read_text())


def config(*, authenticated: bool, **options) -> schemathesis.Config:
    checks = {"enabled": False, **{name: {"enabled": True} for name in CHECKS}}
    data = {"base-url": "http://localhost", "checks": checks, "generation": {"mode": "all"}, **options}
    if authenticated:
        data["auth"] = {"openapi": {"appKey": {"api_key": APP_KEY}, "appToken": {"api_key": APP_TOKEN}}}
    return schemathesis.Config.from_dict(data)


@dataclass(frozen=True)
class Seed:
    """A funded card with a Credit, a partly settled Debit and a Debit still fully held."""

    card_id: str
    code: str
    token: str
    tx_ids: tuple[str, ...]


def plant(hub: Hub) -> Seed:
    card = hub.create_card(currencyCode="USD")
    credit = hub.credit(card["id"], Decimal("500"))
    debit = hub.debit(card["id"], Decimal("40"))
    assert hub.settle(card["id"], debit, Decimal("15")).status_code == 200
    held = hub.debit(card["id"], Decimal("25.5"))
    return Seed(card["id"], card["redemptionCode"], card["redemptionToken"], (debit, held, credit))


@pytest.fixture
def seed(hub) -> Seed:
    return plant(hub)


# The hooks run while schemathesis builds cases (some at collection time, before any fixture),
# so they draw placeholders; resolve() swaps them for the seeded test's real ids and secrets.
# (URL-safe: path parameters arrive here already percent-encoded.)
CARD, TXS = "seed-card", ("seed-tx0", "seed-tx1", "seed-tx2")
TOKEN, CODE, LOOSE_CODE = "seed-token", "seed-code", "seed-loose-code"


def flatmap_path_parameters(context, path_parameters):
    """Three times in four, name the seeded card and one of its transactions; else keep the odd generated ids."""
    if not path_parameters:
        return st.just(path_parameters)

    def pick(choice):
        which, tx = choice
        if which == 3:
            return path_parameters
        real = {"giftCardId": CARD, "transactionId": tx, "tId": tx}
        return {name: real.get(name, value) for name, value in path_parameters.items()}

    return st.tuples(st.integers(0, 3), st.sampled_from(TXS)).map(pick)


def flatmap_body(context, body):
    """Half the time, bring a body closer to what the Hub sends so that it reaches the ledger."""
    path = context.operation.path
    if not isinstance(body, dict):
        return st.just(body)
    amount = st.one_of(st.integers(1, 60), st.integers(1, 6000).map(lambda cents: cents / 100))
    if path.endswith("/transactions"):
        edits = st.fixed_dictionaries(
            {
                "operation": st.sampled_from(["Debit", "Credit"]),
                "value": amount,
                "redemptionToken": st.sampled_from([TOKEN, None, "not-the-token"]),
            }
        )
    elif path.endswith(("/settlements", "/cancellations")):
        edits = st.fixed_dictionaries({"value": amount})
    elif path.endswith("/_search") and isinstance(body.get("cart"), dict):
        codes = st.sampled_from([CODE, LOOSE_CODE, "", None])
        edits = codes.map(lambda code: {"cart": {**body["cart"], "redemptionCode": code}})
    elif path == "/giftcards":
        body = {k: v for k, v in body.items() if k not in ("emissionDate", "expiringDate")}
        edits = st.fixed_dictionaries({"currencyCode": st.sampled_from(["USD", "BRL", "JPY", "KWD"])})
    else:
        return st.just(body)
    return st.one_of(edits.map(lambda edit: {**body, **edit}), st.just(body))


def resolve(case, seed: Seed) -> None:
    """Put the seeded card's ids, token and code where the hooks left placeholders."""
    real = {
        CARD: seed.card_id,
        TOKEN: seed.token,
        CODE: seed.code,
        LOOSE_CODE: seed.code.lower().replace("-", ""),
        **dict(zip(TXS, seed.tx_ids, strict=True)),
    }
    if case.path_parameters:
        case.path_parameters = {k: real.get(v, v) if isinstance(v, str) else v for k, v in case.path_parameters.items()}
    if isinstance(case.body, dict):
        payload = dict(case.body)
        if isinstance(payload.get("redemptionToken"), str) and payload["redemptionToken"] in real:
            payload["redemptionToken"] = real[payload["redemptionToken"]]
        cart = payload.get("cart")
        if isinstance(cart, dict) and isinstance(cart.get("redemptionCode"), str) and cart["redemptionCode"] in real:
            payload["cart"] = {**cart, "redemptionCode": real[cart["redemptionCode"]]}
        case.body = payload


def load(*, authenticated: bool, **options):
    schema = schemathesis.openapi.from_dict(spec(), config=config(authenticated=authenticated, **options))
    schema.hook(flatmap_path_parameters)
    schema.hook(flatmap_body)
    return schema


SCHEMA = load(authenticated=True)
LEDGER_SCHEMA = load(authenticated=True, phases={"coverage": {"enabled": False}})
UNAUTHENTICATED = load(authenticated=False, phases={"coverage": {"enabled": False}})


def use_app(case, app) -> None:
    """Send the case, and schemathesis's own probes (ignored_auth), to this test's app."""
    case.operation.app = case.operation.schema.app = app


def assert_refused(response) -> None:
    """Credentials missing (or empty) as sent: 401; both present but not a valid pair: 403; empty body either way."""
    sent = {k.lower(): v for k, v in response.request.headers.items()}
    expected = 403 if all(sent.get(name.lower()) for name in AUTH_HEADERS) else 401
    assert response.status_code == expected, (response.status_code, response.text[:500])
    assert response.content == b"", response.text[:500]


def assert_error_shape(response) -> None:
    """Every answer is < 500; 401/403 are empty; any other error is JSON {code, message}."""
    status = response.status_code
    assert status in ALLOWED, (status, response.text[:500])
    if status in (401, 403):
        assert response.content == b"", response.text[:500]
    elif status >= 400:
        assert response.headers.get("content-type", [""])[0].startswith("application/json"), response.headers
        error = jsonio.loads(response.content)
        assert isinstance(error.get("code"), str) and error["code"], error
        assert isinstance(error.get("message"), str) and error["message"], error


@pytest.fixture
def statuses():
    """The statuses one operation's fuzz run saw: it must have reached a success at least once,
    or the seeding no longer works and the fuzz only exercises 404s."""
    seen = []
    yield seen
    assert any(200 <= status < 300 for status in seen), f"no 2xx among {sorted(set(seen))}"


def call_with_valid_credentials(case, app, seed, statuses) -> None:
    resolve(case, seed)
    use_app(case, app)
    response = case.call_and_validate()
    statuses.append(response.status_code)
    assert_error_shape(response)


# The spec's examples, schemathesis's coverage cases (every field missing, null, of the wrong
# type, at its boundaries; unexpected methods) and generated cases, on fakeredis.
@SCHEMA.parametrize()
@BUDGET
@pytest.mark.parametrize("backend", ["fakeredis"], indirect=True)
def test_valid_credentials(case, app, seed, statuses):
    call_with_valid_credentials(case, app, seed, statuses)


# The same generated cases on a real redis-server, where the ledger's Lua really runs (the
# coverage cases stop at validation, before Redis, so they are left to the run above).
@LEDGER_SCHEMA.parametrize()
@BUDGET
@pytest.mark.parametrize("backend", ["redis"], indirect=True)
def test_valid_credentials_real_redis(case, app, seed, statuses):
    call_with_valid_credentials(case, app, seed, statuses)


def _strip_auth(case) -> None:
    names = {h.lower() for h in AUTH_HEADERS}
    case.headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in names}


# Credentials are checked before anything touches Redis, so one backend and fewer cases do.
@UNAUTHENTICATED.parametrize()
@settings(BUDGET, max_examples=10)
@pytest.mark.parametrize("backend", ["fakeredis"], indirect=True)
def test_without_valid_credentials(case, app, seed):
    """No credentials: 401; wrong ones (generated, or a valid half with a wrong half): 403; both empty-bodied."""
    resolve(case, seed)
    use_app(case, app)
    generated = {k.lower(): v for k, v in (case.headers or {}).items()}
    key = generated.get(AUTH_HEADERS[0].lower()) or "wrong-key"
    token = generated.get(AUTH_HEADERS[1].lower()) or "wrong-token"
    _strip_auth(case)
    wrong = [(key, token), (APP_KEY, token + "x"), (key + "x", APP_TOKEN), ("old-key", APP_TOKEN), (APP_KEY, "")]
    for headers in [{}, *(dict(zip(AUTH_HEADERS, pair, strict=True)) for pair in wrong)]:
        assert_refused(case.call(headers=headers))


# -- the long run: scripts/fuzz.sh drives the schemathesis CLI against a live server ---------------------------


class LiveClient:
    """Just enough of Flask's test client, over HTTP, for tests/hub.Hub to seed a live server."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def post(self, path: str, json=None, headers=None):
        data = None if json is None else simplejson.dumps(json, use_decimal=True)
        headers = {"Content-Type": "application/json", **(headers or {})}
        return LiveResponse(self.session.post(self.base_url + path, data=data, headers=headers, timeout=15))

    def get(self, path: str, headers=None):
        return LiveResponse(self.session.get(self.base_url + path, headers=headers, timeout=15))


class LiveResponse:
    def __init__(self, response: requests.Response):
        self.response, self.status_code = response, response.status_code

    @property
    def json(self):
        return jsonio.loads(self.response.content)

    def get_data(self, as_text: bool = False):
        return self.response.text if as_text else self.response.content


def register_cli_hooks(base_url: str, key: str, token: str) -> Seed:
    """Seed the live server and register, for the schemathesis CLI, the hooks and checks the tests above use.

    Loaded by scripts/fuzz.sh through SCHEMATHESIS_HOOKS. Checks: `error_shape` (any 4xx is JSON
    {code, message}, 401/403 empty, nothing but the protocol's statuses) and `credentials_refused`
    (for the run without valid credentials).
    """
    seed = plant(Hub(LiveClient(base_url), dict(zip(AUTH_HEADERS, (key, token), strict=True))))
    schemathesis.hook(flatmap_path_parameters)
    schemathesis.hook(flatmap_body)

    seen = Counter()

    @schemathesis.hook
    def before_call(context, case, kwargs):
        resolve(case, seed)

    @schemathesis.hook
    def after_call(context, case, response):
        seen[case.operation.label, response.status_code] += 1

    @atexit.register
    def summary():  # whether the run reached the ledger (2xx) or mostly met validation and 404s
        print("fuzz: responses by operation and status")
        for label in sorted({label for label, _ in seen}):
            counts = ", ".join(f"{status}: {n}" for (op, status), n in sorted(seen.items()) if op == label)
            print(f"  {label}  {counts}")

    @schemathesis.check
    def error_shape(ctx, response, case):
        assert_error_shape(response)

    @schemathesis.check
    def credentials_refused(ctx, response, case):
        assert_refused(response)

    return seed
