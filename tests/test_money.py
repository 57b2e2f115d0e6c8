"""Money: exact decimals, per-currency precision, refused amounts (400 under errors.json.value), exact rendering."""

from __future__ import annotations

from decimal import Decimal

import pytest

from giftcard_provider import create_app

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub, body, request_id
from .ledger_edit import card_hash, raw_transaction, stored_transaction
from .snapshot import assert_rejected

ENDPOINTS = ["transactions", "settlements", "cancellations"]


def ok(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    return body(response)


def raw_post(hub, path: str, text: str):
    return hub.client.post(path, data=text, headers={**hub.headers, "Content-Type": "application/json"})


@pytest.fixture
def paths(hub):
    """For a BRL card with 100 loaded and 50 held: the three money endpoints' paths."""
    card = hub.funded_card(Decimal("100"), currencyCode="BRL")
    tx = hub.debit(card["id"], 50)
    base = f"/giftcards/{card['id']}/transactions"
    return {
        "card": card["id"],
        "transactions": base,
        "settlements": f"{base}/{tx}/settlements",
        "cancellations": f"{base}/{tx}/cancellations",
    }


def money_body(endpoint: str, value) -> dict:
    request = {"value": value, "requestId": request_id("money")}
    return {"operation": "Credit", **request} if endpoint == "transactions" else request


REFUSED = [
    0,
    Decimal("0.0"),
    Decimal("0.00"),
    -1,
    Decimal("-0.5"),
    "10",
    "10.5",
    "",
    True,
    False,
    None,
    [],
    {},
    [10],
    {"amount": 10},
    Decimal("1000000.01"),  # above MAX_TRANSACTION_AMOUNT
    1000001,
    10**30,
    Decimal("1E+7"),
    Decimal("1E+400"),
    Decimal("1.00001"),  # finer than any currency
    Decimal("1E-30"),
]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_refused_values(hub, store, paths, endpoint):
    for value in REFUSED:
        error = assert_rejected(store.redis, lambda v=value: hub.post(paths[endpoint], money_body(endpoint, v)), 400)
        assert error["code"] in ("invalid_request", "invalid_amount"), value
        assert list(error["errors"]["json"]) == ["value"], value
        assert all(isinstance(m, str) and m for m in error["errors"]["json"]["value"])


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_non_numbers_are_malformed(hub, store, paths, endpoint):
    for literal in ("NaN", "Infinity", "-Infinity", "1e", "01", "1.", ".5", "0x10", "1_000"):
        text = f'{{"operation": "Credit", "value": {literal}, "requestId": "r-1"}}'
        assert_rejected(store.redis, lambda t=text: raw_post(hub, paths[endpoint], t), 400, "invalid_request")


def test_exponent_notation_is_exact(hub):
    card = hub.create_card(currencyCode="BRL")
    path = f"/giftcards/{card['id']}/transactions"
    ok(raw_post(hub, path, '{"operation": "Credit", "value": 1.5e2, "requestId": "e-1"}'))
    ok(raw_post(hub, path, '{"operation": "Credit", "value": 125E-2, "requestId": "e-2"}'))
    assert hub.balance(card["id"]) == Decimal("151.25")


def test_the_ceiling_itself_is_allowed(hub, paths):
    card = hub.create_card(currencyCode="BRL")
    hub.credit(card["id"], Decimal("1000000"))
    assert hub.balance(card["id"]) == 1000000


def test_ceiling_is_configurable(backend):
    app = create_app(make_settings(max_transaction_amount=Decimal("50")), redis_client=backend)
    hub = Hub(app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})
    store = app.extensions["giftcard_provider"]["store"]
    card = hub.funded_card(Decimal("50"), currencyCode="BRL")
    error = assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Credit", Decimal("50.01")), 400)
    assert error["code"] == "invalid_amount"
    assert error["errors"] == {"json": {"value": ["Must not exceed 50."]}}


# -- precision per currency (ISO 4217 exponent) ----------------------------------------


PRECISION = [
    ("JPY", [1, 1500, Decimal("2.0"), Decimal("3.000")], [Decimal("1.5"), Decimal("0.1")]),
    ("CLP", [7], [Decimal("7.5")]),
    ("BRL", [Decimal("1.23"), Decimal("1.5"), Decimal("1.230"), 2], [Decimal("1.234"), Decimal("0.001")]),
    ("USD", [Decimal("0.01")], [Decimal("0.005")]),
    ("KWD", [Decimal("1.234"), Decimal("0.001"), Decimal("1.5")], [Decimal("1.2345")]),
    ("BHD", [Decimal("0.005")], [Decimal("0.0005")]),
]


def test_precision_follows_the_currency(hub, store):
    for currency, accepted, refused in PRECISION:
        card = hub.create_card(currencyCode=currency)
        for value in refused:
            error = assert_rejected(store.redis, lambda v=value, c=card: hub.transaction(c["id"], "Credit", v), 400)
            assert error["code"] == "invalid_amount", (currency, value)
            assert list(error["errors"]["json"]) == ["value"]
        for value in accepted:
            hub.credit(card["id"], value)
        assert hub.balance(card["id"]) == sum(accepted), currency


@pytest.mark.parametrize(
    ("currency", "literal", "message"),
    [
        ("USD", "0.30000000000000004", "USD amounts have at most 2 decimals"),  # a binary float's leftovers
        ("USD", "1.005", "USD amounts have at most 2 decimals"),
        ("KWD", "1.2345", "KWD amounts have at most 3 decimals"),
        ("JPY", "1.5", "JPY amounts have no decimals"),
    ],
)
def test_over_precision_names_the_currency_and_its_decimals(hub, store, currency, literal, message):
    card = hub.funded_card(100, currencyCode=currency)
    tx = hub.debit(card["id"], 10)
    paths = [
        (f"/giftcards/{card['id']}/transactions", '{"operation": "Debit", "value": %s, "requestId": "p-1"}'),
        (f"/giftcards/{card['id']}/transactions/{tx}/settlements", '{"value": %s, "requestId": "p-2"}'),
        (f"/giftcards/{card['id']}/transactions/{tx}/cancellations", '{"value": %s, "requestId": "p-3"}'),
    ]
    for path, template in paths:
        error = assert_rejected(store.redis, lambda p=path, t=template: raw_post(hub, p, t % literal), 400)
        assert (error["code"], error["message"]) == ("invalid_amount", message)
        assert error["errors"] == {"json": {"value": [message + "."]}}


def test_precision_of_debits_settlements_and_cancellations(hub, store):
    card = hub.funded_card(100, currencyCode="JPY")
    error = assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Debit", Decimal("0.5")), 400)
    assert error["code"] == "invalid_amount"
    tx = hub.debit(card["id"], 50)
    for endpoint in ("settlements", "cancellations"):
        path = f"/giftcards/{card['id']}/transactions/{tx}/{endpoint}"
        error = assert_rejected(store.redis, lambda p=path, e=endpoint: hub.post(p, money_body(e, Decimal("1.5"))), 400)
        assert error["code"] == "invalid_amount"
        assert list(error["errors"]["json"]) == ["value"]
        assert ok(hub.post(path, money_body(endpoint, 2)))["value"] == 2
    assert hub.balance(card["id"]) == 52  # 50 held, 2 settled, 2 released


# -- exact arithmetic and rendering ---------------------------------------------------------------


def test_tenths_add_up_exactly(hub):
    card = hub.create_card(currencyCode="BRL")
    for _ in range(10):
        hub.credit(card["id"], Decimal("0.1"))
    response = hub.get(f"/giftcards/{card['id']}")
    assert body(response)["balance"] == 1
    assert '"balance":1,' in response.get_data(as_text=True)
    hub.debit(card["id"], Decimal("0.7"))
    assert hub.balance(card["id"]) == Decimal("0.3")


RENDERED = [
    ("BRL", Decimal("12.50"), '"balance":12.5,'),
    ("BRL", Decimal("0.07"), '"balance":0.07,'),
    ("BRL", Decimal("999999.99"), '"balance":999999.99,'),
    ("BRL", Decimal("1000000"), '"balance":1000000,'),
    ("JPY", 1500, '"balance":1500,'),
    ("KWD", Decimal("1.234"), '"balance":1.234,'),
    ("KWD", Decimal("0.001"), '"balance":0.001,'),
    ("USD", Decimal("123456.78"), '"balance":123456.78,'),
]


def test_balances_render_as_exact_json_numbers(hub):
    for currency, value, text in RENDERED:
        card = hub.funded_card(value, currencyCode=currency)
        response = hub.get(f"/giftcards/{card['id']}")
        assert text in response.get_data(as_text=True)
        assert body(response)["balance"] == value


def test_operation_values_render_exactly(hub):
    card = hub.funded_card(Decimal("10"), currencyCode="KWD")
    tx = hub.debit(card["id"], Decimal("3.333"))
    base = f"/giftcards/{card['id']}/transactions/{tx}"
    assert '"value":3.333' in hub.get(base).get_data(as_text=True)
    assert '"value":1.111' in hub.settle(card["id"], tx, Decimal("1.111")).get_data(as_text=True)
    assert '"value":0.002' in hub.cancel(card["id"], tx, Decimal("0.002")).get_data(as_text=True)
    assert hub.balance(card["id"]) == Decimal("6.669")


def test_redis_stores_integer_minor_units(hub, store):
    card = hub.funded_card(Decimal("12.34"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("0.5"))
    fields = card_hash(store, card["id"])
    assert (fields["av"], fields["hd"]) == ("1184", "50")
    assert raw_transaction(store, card["id"], tx).split("|")[:2] == ["D", "50"]
    assert stored_transaction(store, card["id"], tx).value == 50
