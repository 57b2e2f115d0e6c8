"""bench/floor_app.py is the provider's hot endpoints without the web stack's features: for a valid
request from the Hub it must do the provider's work and answer what the provider answers, or the
floor/baseline and provider/floor figures in bench/ compare different work."""

from __future__ import annotations

import json

import pytest

from bench.floor_app import create_app as create_floor
from giftcard_provider import create_app
from giftcard_provider.keys import Keys
from giftcard_provider.verify import verify_all

from .conftest import APP_KEY, APP_TOKEN
from .hub import Hub


@pytest.fixture
def pair(real_redis, settings):
    provider = create_app(settings, redis_client=real_redis)
    floor = create_floor(settings, redis_client=real_redis)
    hub = Hub(provider.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})
    yield hub, floor.test_client()
    assert verify_all(real_redis, Keys(settings.key_prefix))[1] == []


def shape(document):
    """The document with every id, date and link replaced by its type: what must agree."""
    if isinstance(document, dict):
        return {k: shape(v) for k, v in document.items()}
    if isinstance(document, list):
        return [shape(v) for v in document]
    return type(document).__name__


def test_the_floor_answers_what_the_provider_answers(pair):
    hub, floor = pair
    card = hub.funded_card(100, restrictedToOwner=True, profileId="shopper@example.com")
    debit = {
        "operation": "Debit",
        "value": 12.5,
        "requestId": "r-1",
        "redemptionToken": hub.token(card["id"]),
        "orderInfo": {"orderId": "o-1", "clientProfile": {"email": "Shopper@Example.com"}},
    }
    path = f"/giftcards/{card['id']}/transactions"
    by_provider = hub.post(path, {**debit, "requestId": "r-p"}).get_json()
    by_floor = floor.post(path, data=json.dumps({**debit, "requestId": "r-f"})).get_json()
    assert shape(by_floor) == shape(by_provider)
    assert by_floor["id"] != by_provider["id"]

    # Both holds are on the card: the floor's Debit went through the same ledger function.
    assert hub.get(f"/giftcards/{card['id']}").get_json()["balance"] == 75
    assert floor.get(f"/giftcards/{card['id']}").get_json() == hub.get(f"/giftcards/{card['id']}").get_json()

    settle = f"/giftcards/{card['id']}/transactions/{by_floor['id']}/settlements"
    by_floor_settle = floor.post(settle, data=json.dumps({"value": 2.5, "requestId": "s-f"})).get_json()
    assert by_floor_settle["value"] == 2.5
    assert hub.get(settle).get_json() == [by_floor_settle]

    other = hub.funded_card(5)
    for code, email, found in (
        (other["redemptionCode"], "someone@example.com", [other["id"]]),
        (card["redemptionCode"], "someone@example.com", []),  # restricted to its owner
        (card["redemptionCode"], "shopper@example.com", [card["id"]]),
    ):
        search = {"client": {"email": email}, "cart": {"redemptionCode": code}}
        headers = {"REST-Range": "resources=0-9"}
        by_floor_search = floor.post("/giftcards/_search", data=json.dumps(search), headers=headers)
        by_provider_search = hub.post("/giftcards/_search", search, headers=headers)
        assert by_floor_search.get_json() == by_provider_search.get_json()
        assert [c["id"] for c in by_floor_search.get_json()] == found
        assert by_floor_search.headers["REST-Content-Range"] == by_provider_search.headers["REST-Content-Range"]
