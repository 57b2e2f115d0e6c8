"""POST /giftcards/_search: by code (normalised, one usable card or []) and by client, with REST-Range."""

from __future__ import annotations

import time
from decimal import Decimal

from .hub import body
from .ledger_edit import edit_card
from .snapshot import assert_rejected

SHOPPER = {"id": "shopper-1", "email": "shopper@example.com", "document": "1"}
STRANGER = {"id": "stranger-9", "email": "stranger@example.com", "document": "9"}


def search(hub, code=None, client=None, headers=None, **cart):
    """Hub.search, with any client (even {}) and extra headers."""
    request = {
        "client": SHOPPER if client is None else client,
        "cart": {"redemptionCode": code, "relationName": None, "grandTotal": 1000, **cart},
    }
    return hub.post("/giftcards/_search", request, headers=headers or {})


def results(response) -> list[dict]:
    assert response.status_code == 200, response.get_data(as_text=True)
    return body(response)


def ids(response) -> list[str]:
    return [r["id"] for r in results(response)]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def test_search_by_code_answers_the_card(hub):
    card = hub.funded_card(Decimal("12.50"), currencyCode="BRL", relationName="gift", caption="Birthday")
    response = search(hub, card["redemptionCode"])
    assert response.headers["REST-Content-Range"] == "resources 0-0/1"
    assert results(response) == [
        {
            "id": card["id"],
            "provider": "test-provider",
            "balance": Decimal("12.5"),
            "_self": {"href": f"/giftcards/{card['id']}"},
            "caption": "Birthday",
            "relationName": "gift",
            "emissionDate": card["emissionDate"],
            "expiringDate": card["expiringDate"],
        }
    ]


TYPED = [
    lambda c: c,
    lambda c: c.lower(),
    lambda c: c.replace("-", ""),
    lambda c: c.replace("-", " "),
    lambda c: f"  {c.replace('-', ' - ').lower()}  ",
    lambda c: c.replace("-", "").lower(),
    lambda c: "-".join(c.replace("-", "")),
    lambda c: c.replace("-", "\t"),
]


def test_code_is_normalised(hub):
    card = hub.funded_card(3)
    other = hub.funded_card(4)
    for typed in TYPED:
        assert ids(search(hub, typed(card["redemptionCode"]))) == [card["id"]], typed(card["redemptionCode"])
        assert ids(search(hub, typed(other["redemptionCode"]))) == [other["id"]]


MANGLED = [
    lambda c: "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZZ",
    lambda c: c[:-1],  # one symbol short
    lambda c: c + "A",
    lambda c: "*" * 16 + c[-4:],  # the masked form a GET shows
    lambda c: c.replace("-", "_"),
]


def test_wrong_code_gives_an_empty_list(hub):
    card = hub.funded_card(3)
    for mangle in MANGLED:
        response = search(hub, mangle(card["redemptionCode"]))
        assert results(response) == [], mangle(card["redemptionCode"])
        assert response.headers["REST-Content-Range"] == "resources 0-0/0"


def test_code_search_ignores_the_clients_other_cards(hub):
    owned = hub.funded_card(5, profileId="shopper-1")
    card = hub.funded_card(7, profileId="someone-else")
    assert ids(search(hub, card["redemptionCode"])) == [card["id"]]
    assert ids(search(hub, owned["redemptionCode"], relationName="other")) == [owned["id"]]


def test_zero_balance_card_is_not_offered(hub):
    card = hub.create_card()
    assert results(search(hub, card["redemptionCode"])) == []
    hub.credit(card["id"], Decimal("0.01"))
    assert ids(search(hub, card["redemptionCode"])) == [card["id"]]


def test_fully_held_card_is_not_offered(hub):
    card = hub.funded_card(10)
    tx = hub.debit(card["id"], 10)
    assert results(search(hub, card["redemptionCode"])) == []
    assert hub.cancel(card["id"], tx, 4).status_code == 200
    [found] = results(search(hub, card["redemptionCode"]))
    assert found["balance"] == 4


def test_balance_is_what_is_available(hub):
    card = hub.funded_card(Decimal("100"), currencyCode="BRL")
    hub.debit(card["id"], Decimal("33.33"))
    [found] = results(search(hub, card["redemptionCode"]))
    assert found["balance"] == Decimal("66.67")


def test_expired_card_is_not_offered(hub, store):
    card = hub.funded_card(10)
    edit_card(store, card["id"], expiring_ms=now_ms() - 1000)
    assert results(search(hub, card["redemptionCode"])) == []
    assert results(search(hub, client={"id": "shopper-1", "email": "shopper@example.com"})) == []


def test_not_yet_valid_card_is_not_offered(hub, store):
    card = hub.funded_card(10)
    edit_card(store, card["id"], emission_ms=now_ms() + 3_600_000)
    assert results(search(hub, card["redemptionCode"])) == []
    assert results(search(hub, client=SHOPPER)) == []
    edit_card(store, card["id"], emission_ms=now_ms() - 1000)
    assert ids(search(hub, card["redemptionCode"])) == [card["id"]]


def test_blocked_card_is_not_offered(hub, store):
    card = hub.funded_card(10, profileId="shopper-1")
    for status in ("blocked", "inactive"):
        edit_card(store, card["id"], status=status)
        assert results(search(hub, card["redemptionCode"])) == []
        assert results(search(hub, client=SHOPPER)) == []
        edit_card(store, card["id"], status="active")
        assert ids(search(hub, card["redemptionCode"])) == [card["id"]]


OWNERS = [
    ("shopper-1", {"id": "shopper-1", "email": None}),
    ("shopper@example.com", {"id": None, "email": "shopper@example.com"}),
    ("Shopper@Example.com", {"id": "x", "email": "SHOPPER@EXAMPLE.COM"}),
    ("shopper@example.com", {"id": "  Shopper@example.com ", "email": None}),
    ("shopper-1", {"id": "shopper-1", "email": "someone@example.com"}),
]


def test_restricted_card_is_found_by_its_owner(hub):
    for owner, who in OWNERS:
        card = hub.funded_card(10, profileId=owner, restrictedToOwner=True)
        assert ids(search(hub, card["redemptionCode"], client=who)) == [card["id"]], (owner, who)


def test_restricted_card_is_hidden_from_others(hub):
    card = hub.funded_card(10, profileId="shopper-1", restrictedToOwner=True)
    others = [
        STRANGER,
        {"id": "Shopper-1", "email": None},  # ids are compared exactly
        {"id": None, "email": None},
        {"id": "", "email": "  "},
        {},
    ]
    for who in others:
        assert results(search(hub, card["redemptionCode"], client=who)) == [], who


def test_unrestricted_card_is_found_by_anyone(hub):
    card = hub.funded_card(10, profileId="shopper-1")
    assert ids(search(hub, card["redemptionCode"], client=STRANGER)) == [card["id"]]
    assert ids(search(hub, card["redemptionCode"], client={})) == [card["id"]]


def test_search_by_client_lists_their_usable_cards(hub):
    by_id = hub.funded_card(1, profileId="shopper-1")
    by_email = hub.funded_card(2, profileId="SHOPPER@example.com", restrictedToOwner=True)
    hub.create_card(profileId="shopper-1")  # no balance
    hub.funded_card(3, profileId="stranger-9")
    hub.funded_card(4, profileId="shopper@example.org")
    response = search(hub, client=SHOPPER)
    assert sorted(ids(response)) == sorted([by_id["id"], by_email["id"]])
    assert response.headers["REST-Content-Range"] == "resources 0-1/2"
    assert {r["id"]: r["balance"] for r in results(response)} == {by_id["id"]: 1, by_email["id"]: 2}
    assert ids(search(hub, client={"id": "shopper-1"})) == [by_id["id"]]
    assert ids(search(hub, client={"email": "Shopper@Example.com"})) == [by_email["id"]]
    assert results(search(hub, client={"id": "nobody", "email": "nobody@example.com"})) == []
    assert results(search(hub, client={})) == []


def test_search_by_client_lists_cards_oldest_first(hub):
    cards = []
    for i in range(3):
        cards.append(hub.funded_card(i + 1, profileId="shopper-1")["id"])
        time.sleep(0.003)  # distinct creation milliseconds
    assert ids(search(hub, client=SHOPPER)) == cards


def test_search_by_client_filters_by_relation_name(hub):
    gift = hub.funded_card(1, profileId="shopper-1", relationName="gift")
    loyalty = hub.funded_card(2, profileId="shopper-1", relationName="loyalty")
    assert ids(search(hub, client=SHOPPER, relationName="loyalty")) == [loyalty["id"]]
    assert ids(search(hub, client=SHOPPER, relationName="gift")) == [gift["id"]]
    assert results(search(hub, client=SHOPPER, relationName="cashback")) == []
    assert sorted(ids(search(hub, client=SHOPPER, relationName=None))) == sorted([gift["id"], loyalty["id"]])
    assert sorted(ids(search(hub, client=SHOPPER, relationName=""))) == sorted([gift["id"], loyalty["id"]])


def test_blank_code_means_search_by_client(hub):
    card = hub.funded_card(1, profileId="shopper-1")
    for blank in ("", "   ", None):
        assert ids(search(hub, blank, client=SHOPPER)) == [card["id"]]


RANGES = [
    ("resources=0-0", 0, 1, "resources 0-0/5"),
    ("resources=1-3", 1, 4, "resources 1-3/5"),
    ("resources=3-9", 3, 5, "resources 3-4/5"),
    ("resources=0-9", 0, 5, "resources 0-4/5"),
    ("resources = 2 - 2", 2, 3, "resources 2-2/5"),
    ("items=1-1", 1, 2, "resources 1-1/5"),
    ("resources=7-9", 7, 7, "resources 7-7/5"),
    ("bogus", 0, 5, "resources 0-4/5"),
    ("resources=a-b", 0, 5, "resources 0-4/5"),
    ("resources=-1-3", 0, 5, "resources 0-4/5"),
    ("", 0, 5, "resources 0-4/5"),
]


def test_rest_range_is_honoured(hub):
    cards = []
    for i in range(5):
        cards.append(hub.funded_card(i + 1, profileId="shopper-1")["id"])
        time.sleep(0.003)  # distinct creation milliseconds: a stable order
    for header, first, last, answer in RANGES:
        response = search(hub, client=SHOPPER, headers={"REST-Range": header})
        assert ids(response) == cards[first:last], header
        assert response.headers["REST-Content-Range"] == answer


def test_default_range_is_fifty(hub):
    for i in range(52):
        hub.funded_card(1, profileId="shopper-1", caption=f"card {i}")
    response = search(hub, client=SHOPPER)
    assert len(results(response)) == 50
    assert response.headers["REST-Content-Range"] == "resources 0-49/52"
    assert len(results(search(hub, client=SHOPPER, headers={"REST-Range": "resources=50-99"}))) == 2


def test_search_answers_json_for_any_json_media_type(hub):
    card = hub.funded_card(1)
    for media in ("application/json", "application/vnd.vtex.giftcards.v1+json", "text/plain"):
        response = hub.client.post(
            "/giftcards/_search",
            data=f'{{"client": {{}}, "cart": {{"redemptionCode": "{card["redemptionCode"]}"}}}}',
            headers={**hub.headers, "Content-Type": media},
        )
        assert response.mimetype == "application/json"
        assert ids(response) == [card["id"]]


def test_hub_extras_are_ignored(hub):
    card = hub.funded_card(1)
    response = hub.post(
        "/giftcards/_search?ts=123",
        {
            "client": {**SHOPPER, "corporateDocument": "x"},
            "cart": {
                "redemptionCode": card["redemptionCode"],
                "grandTotal": 100,
                "items": [{"productId": "1", "price": 100, "quantity": 1, "seller": "1"}],
                "paymentRelatedSellerInfo": {},
            },
        },
        headers={"x-vtex-operation-id": "op", "traceparent": "00-x"},
    )
    assert ids(response) == [card["id"]]


def test_invalid_search_is_400(hub, store):
    hub.funded_card(1)
    for request in (
        {"cart": {"redemptionCode": "ABCD"}},
        {"client": SHOPPER},
        {"client": "me", "cart": {}},
        {"client": SHOPPER, "cart": {"redemptionCode": 1234}},
        {"client": SHOPPER, "cart": {"redemptionCode": "A" * 129}},
        None,
    ):
        assert_rejected(store.redis, lambda r=request: hub.post("/giftcards/_search", r), 400, "invalid_request")
