"""Shopper identity fields are capped: a too-long e-mail, id, document or name is a 400 that changes
nothing; a value at the cap is accepted."""

from __future__ import annotations

from decimal import Decimal

import fakeredis
import pytest

from giftcard_provider import create_app
from schemas.common import MAX_EMAIL, MAX_ID, MAX_NAME

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub


@pytest.fixture
def hub():
    app = create_app(make_settings(), redis_client=fakeredis.FakeRedis(decode_responses=True))
    return Hub(app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})


def email(length: int) -> str:
    return "a" * (length - len("@example.com")) + "@example.com"


SEARCH_CAPS = {"id": ("x" * MAX_ID, "x"), "email": (email(MAX_EMAIL), "a"), "document": ("1" * MAX_ID, "1")}


@pytest.mark.parametrize("field", SEARCH_CAPS)
@pytest.mark.parametrize("code", [None, "AAAA-BBBB-CCCC-DDDD-EEEE"], ids=["listing", "by code"])
def test_search_client_fields_are_capped(hub, field, code):
    at_cap, extra = SEARCH_CAPS[field]
    assert hub.search(code, client={field: at_cap}).status_code == 200
    response = hub.search(code, client={field: at_cap + extra})
    assert (response.status_code, response.json["code"]) == (400, "invalid_request")
    assert field in response.json["errors"]["json"]["client"]


PROFILE_CAPS = {
    "email": (email(MAX_EMAIL), "a"),
    "document": ("1" * MAX_ID, "1"),
    "firstName": ("n" * MAX_NAME, "n"),
    "lastName": ("n" * MAX_NAME, "n"),
}


@pytest.mark.parametrize("field", PROFILE_CAPS)
def test_transaction_client_profile_fields_are_capped(hub, field):
    card_id = hub.funded_card(Decimal("10"))["id"]
    at_cap, extra = PROFILE_CAPS[field]

    def debit(value: str, rid: str):
        return hub.transaction(card_id, "Debit", 1, rid, orderInfo={"orderId": "o-1", "clientProfile": {field: value}})

    response = debit(at_cap + extra, "too-long")
    assert (response.status_code, response.json["code"]) == (400, "invalid_request")
    assert field in response.json["errors"]["json"]["orderInfo"]["clientProfile"]
    assert hub.balance(card_id) == 10  # nothing held
    assert debit(at_cap, "at-cap").status_code == 200
    assert hub.balance(card_id) == 9
