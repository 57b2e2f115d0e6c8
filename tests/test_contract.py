"""Contract tests: every 200 the service gives matches VTEX's Gift Card Provider Protocol spec.

The requests sent here are themselves validated against the spec's request
schemas first, so the flows are ones a conforming Hub could really drive.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from . import contract
from .contract import assert_valid_request, assert_valid_response, assert_valid_schema, conforms
from .hub import request_id

VTEX_JSON = {
    "Content-Type": "application/vnd.vtex.giftcards.v1+json",
    "Accept": "application/vnd.vtex.giftcards.v1+json",
}
OWNER = {"id": "shopper-1", "email": "shopper@example.com", "document": "12345678909"}

CARD = "/giftcards/{giftCardId}"
TRANSACTIONS = "/giftcards/{giftCardId}/transactions"
TRANSACTION = "/giftcards/{giftCardId}/transactions/{transactionId}"
SETTLEMENTS = "/giftcards/{giftCardId}/transactions/{tId}/settlements"
CANCELLATIONS = "/giftcards/{giftCardId}/transactions/{transactionId}/cancellations"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def create_request(**fields) -> dict:
    now = datetime.now(UTC)
    return {
        "relationName": "loyalty-program",
        "caption": "Loyalty program",
        "profileId": OWNER["email"],
        "emissionDate": iso(now - timedelta(days=1)),
        "expiringDate": iso(now + timedelta(days=365)),
        "restrictedToOwner": True,
        "multipleRedemptions": True,
        "multipleCredits": True,
        "currencyCode": "BRL",
        **fields,
    }


def order_info() -> dict:
    """An orderInfo as the spec describes it (every required nested field present)."""
    return {
        "orderId": "v500",
        "sequence": 5006128,
        "cart": {
            "items": [
                {
                    "id": "2001023",
                    "productId": "2000492",
                    "refId": "35994",
                    "name": "Vaporizador",
                    "value": Decimal("14.99"),
                    "price": Decimal("14.99"),
                    "quantity": 1,
                    "shippingDiscount": 0,
                    "discount": Decimal("-7.5"),
                    "priceTags": [{"name": "discount@price", "value": 0}],
                }
            ],
            "grandTotal": 1476,
            "discounts": Decimal("-7.5"),
            "shipping": Decimal("7.27"),
            "taxes": 0,
            "itemsTotal": Decimal("14.99"),
        },
        "clientProfile": {
            "email": OWNER["email"],
            "firstName": "Michael",
            "lastName": "Scott",
            "document": OWNER["document"],
            "phone": "+551111111111",
            "birthDate": "0001-01-01T00:00:00",
            "isCorporate": False,
        },
        "shipping": {
            "receiverName": "Michael Scott",
            "postalCode": "22250040",
            "city": "Rio de Janeiro",
            "state": "RJ",
            "country": "BRA",
            "street": "Praia de Botafogo",
            "number": "111",
            "neighborhood": "Botafogo",
            "complement": None,
            "reference": None,
        },
    }


def transaction_request(card: dict, operation: str, value, rid: str | None = None) -> dict:
    return {
        "operation": operation,
        "value": value,
        "description": "GiftCardHub",
        "redemptionToken": card["redemptionToken"],
        "redemptionCode": "***********" + card["redemptionCode"][-4:],
        "requestId": rid or request_id(operation.lower()),
        "orderInfo": order_info(),
    }


def search_request(code: str = "", client: dict | None = None, relation_name: str | None = None) -> dict:
    return {
        "client": client or OWNER,
        "cart": {
            "grandTotal": 1476,
            "relationName": relation_name,
            "redemptionCode": code,
            "discounts": 0,
            "shipping": 0,
            "taxes": 0,
            "items": [
                {
                    "productId": "2000000",
                    "id": "2000002",
                    "refId": "MEV41",
                    "name": "Shoes",
                    "price": 1476,
                    "quantity": 1,
                }
            ],
            "itemsTotal": 1476,
        },
    }


class Contract:
    """Sends spec-valid requests through the Hub double and checks every answer against the spec."""

    def __init__(self, hub):
        self.hub = hub
        self.seen: set[tuple[str, str]] = set()

    def post(self, path: str, template: str, body: dict):
        assert_valid_request("POST", template, body)
        response = self.hub.post(path, body, headers=VTEX_JSON)
        assert response.status_code == 200, response.get_data(as_text=True)
        return conforms(response, self.seen)

    def get(self, path: str):
        response = self.hub.get(path, headers=VTEX_JSON)
        assert response.status_code == 200, response.get_data(as_text=True)
        return conforms(response, self.seen)

    # the protocol's operations, one method each
    def create(self, **fields) -> dict:
        return self.post("/giftcards", "/giftcards", create_request(**fields))

    def search(self, **kwargs) -> list:
        return self.post("/giftcards/_search", "/giftcards/_search", search_request(**kwargs))

    def card(self, card_id: str) -> dict:
        return self.get(f"/giftcards/{card_id}")

    def transact(self, card: dict, operation: str, value, rid: str | None = None) -> dict:
        body = transaction_request(card, operation, value, rid)
        return self.post(f"/giftcards/{card['id']}/transactions", TRANSACTIONS, body)

    def transactions(self, card_id: str) -> list:
        return self.get(f"/giftcards/{card_id}/transactions")

    def transaction(self, card_id: str, tx_id: str) -> dict:
        return self.get(f"/giftcards/{card_id}/transactions/{tx_id}")

    def authorization(self, card_id: str, tx_id: str) -> dict:
        return self.get(f"/giftcards/{card_id}/transactions/{tx_id}/authorization")

    def settle(self, card_id: str, tx_id: str, value, rid: str | None = None) -> dict:
        body = {"value": value, "requestId": rid or request_id("settle")}
        return self.post(f"/giftcards/{card_id}/transactions/{tx_id}/settlements", SETTLEMENTS, body)

    def settlements(self, card_id: str, tx_id: str) -> list:
        return self.get(f"/giftcards/{card_id}/transactions/{tx_id}/settlements")

    def cancel(self, card_id: str, tx_id: str, value, rid: str | None = None) -> dict:
        body = {"value": value, "requestId": rid or request_id("cancel")}
        return self.post(f"/giftcards/{card_id}/transactions/{tx_id}/cancellations", CANCELLATIONS, body)

    def cancellations(self, card_id: str, tx_id: str) -> list:
        return self.get(f"/giftcards/{card_id}/transactions/{tx_id}/cancellations")


@pytest.fixture
def vtex(hub):
    return Contract(hub)


def test_the_spec_defines_the_eleven_operations():
    assert len(contract.operations()) == 11
    assert len(set(contract.operations())) == 11


@pytest.mark.parametrize(("method", "template"), contract.operations())
def test_the_spec_examples_pass_the_validator(method, template):
    """The validator and the spec agree: VTEX's own 200 examples are valid."""
    example = contract.operation(method, template)["responses"]["200"]["content"]["application/json"]["example"]
    assert_valid_response(method, template, 200, example)


def test_a_full_hub_flow_conforms_on_every_operation(vtex):
    created = vtex.create()
    card_id = created["id"]
    assert created["balance"] == 0 and created["currencyCode"] == "BRL"
    assert len(created["redemptionCode"]) >= 6

    card = vtex.card(card_id)
    assert card["balance"] == 0
    assert card["redemptionCode"] == "*" * (len(card["redemptionCode"]) - 4) + created["redemptionCode"][-4:]
    assert card["transactions"]["href"].endswith(f"/giftcards/{card_id}/transactions")
    assert_valid_schema("response1", card)  # the shared card schema (with "transaction") too
    assert vtex.transactions(card_id) == []

    credit = vtex.transact(created, "Credit", Decimal("150.75"))
    assert credit["cardId"] == card_id and credit["id"]
    assert vtex.card(card_id)["balance"] == Decimal("150.75")

    rid = request_id("debit")
    debit = vtex.transact(created, "Debit", Decimal("40.5"), rid)
    assert vtex.transact(created, "Debit", Decimal("40.5"), rid) == debit  # a replay is the same answer
    assert vtex.card(card_id)["balance"] == Decimal("110.25")
    assert [t["id"] for t in vtex.transactions(card_id)] == [credit["id"], debit["id"]]

    record = vtex.transaction(card_id, debit["id"])
    assert (record["operation"], record["value"], record["requestId"]) == ("Debit", Decimal("40.5"), rid)
    assert record["settlement"]["href"].endswith(f"/transactions/{debit['id']}/settlements")
    assert_valid_schema("Settlement", record["settlement"])
    assert_valid_schema("Cancellation", record["cancellation"])
    assert_valid_schema("Authorization", record["authorization"])
    authorization = vtex.authorization(card_id, debit["id"])
    assert (authorization["oid"], authorization["value"]) == (debit["id"], Decimal("40.5"))
    assert authorization["date"] == record["date"]

    assert vtex.settlements(card_id, debit["id"]) == []
    assert vtex.cancellations(card_id, debit["id"]) == []

    settle_rid = request_id("settle")
    settlement = vtex.settle(card_id, debit["id"], Decimal("30"), settle_rid)
    assert settlement["value"] == 30 and settlement["oid"] != debit["id"]
    assert vtex.settle(card_id, debit["id"], Decimal("30"), settle_rid) == settlement
    assert vtex.settlements(card_id, debit["id"]) == [settlement]

    cancel_rid = request_id("cancel")
    cancellation = vtex.cancel(card_id, debit["id"], Decimal("10.5"), cancel_rid)  # releases the rest of the hold
    assert cancellation["value"] == Decimal("10.5")
    assert vtex.cancel(card_id, debit["id"], Decimal("10.5"), cancel_rid) == cancellation
    assert vtex.cancellations(card_id, debit["id"]) == [cancellation]
    assert vtex.card(card_id)["balance"] == Decimal("120.75")

    (found,) = vtex.search(code=created["redemptionCode"])
    assert (found["id"], found["balance"], found["provider"]) == (card_id, Decimal("120.75"), "test-provider")
    assert found["_self"]["href"].endswith(f"/giftcards/{card_id}")
    assert [c["id"] for c in vtex.search(relation_name="loyalty-program")] == [card_id]

    assert vtex.seen == set(contract.operations()), "some operation of the spec was not exercised"


def test_empty_lists_are_arrays_that_conform(vtex):
    created = vtex.create(restrictedToOwner=False)
    card_id = created["id"]
    assert vtex.transactions(card_id) == []
    # A card with zero balance is not offered, by code or by owner.
    assert vtex.search(code=created["redemptionCode"]) == []
    assert vtex.search() == []

    vtex.transact(created, "Credit", Decimal("20"))
    debit = vtex.transact(created, "Debit", Decimal("5"))
    assert vtex.settlements(card_id, debit["id"]) == []
    assert vtex.cancellations(card_id, debit["id"]) == []
    assert vtex.authorization(card_id, debit["id"])["value"] == 5

    unknown_code = "ABCD-EFGH-JKMN-PQRS-TVWX"
    assert unknown_code != created["redemptionCode"]
    assert vtex.search(code=unknown_code) == []
    stranger = {"id": "someone-else", "email": "someone@example.com", "document": "1"}
    assert vtex.search(client=stranger) == []
    assert vtex.search(relation_name="another-program") == []
    assert len(vtex.search(code=created["redemptionCode"], client=stranger)) == 1  # not restricted to its owner


def test_replays_conform_and_change_nothing(vtex):
    created = vtex.create()
    card_id = created["id"]
    rids = {name: request_id(name) for name in ("credit", "debit", "settle", "cancel")}
    first = [
        vtex.transact(created, "Credit", Decimal("100"), rids["credit"]),
        vtex.transact(created, "Debit", Decimal("60.10"), rids["debit"]),
    ]
    tx_id = first[1]["id"]
    first += [
        vtex.settle(card_id, tx_id, Decimal("20.05"), rids["settle"]),
        vtex.cancel(card_id, tx_id, Decimal("50.05"), rids["cancel"]),  # releases 40.05, refunds 10
    ]
    before = (vtex.card(card_id), vtex.transactions(card_id), vtex.settlements(card_id, tx_id))
    before += (vtex.cancellations(card_id, tx_id),)
    again = [
        vtex.transact(created, "Credit", Decimal("100"), rids["credit"]),
        vtex.transact(created, "Debit", Decimal("60.1"), rids["debit"]),  # the same value written differently
        vtex.settle(card_id, tx_id, Decimal("20.05"), rids["settle"]),
        vtex.cancel(card_id, tx_id, Decimal("50.05"), rids["cancel"]),
    ]
    assert again == first
    after = (vtex.card(card_id), vtex.transactions(card_id), vtex.settlements(card_id, tx_id))
    after += (vtex.cancellations(card_id, tx_id),)
    assert after == before
    assert before[0]["balance"] == Decimal("89.95")  # 100 - 20.05 settled + 10 refunded


def test_a_credit_read_back_conforms(vtex):
    created = vtex.create(currencyCode="JPY")
    credit = vtex.transact(created, "Credit", 5000)
    record = vtex.transaction(created["id"], credit["id"])
    assert (record["operation"], record["value"]) == ("Credit", 5000)
    assert vtex.authorization(created["id"], credit["id"])["value"] == 5000
    assert vtex.settle(created["id"], credit["id"], 5000)["value"] == 5000
    assert vtex.cancellations(created["id"], credit["id"]) == []
    assert vtex.card(created["id"])["balance"] == 5000


# The validator itself: it must catch what the spec forbids, or the tests above prove nothing.


def test_the_validator_refuses_wrong_types_and_missing_fields():
    good = {"id": "c1", "provider": "p", "balance": Decimal("5.9"), "_self": {"href": "/giftcards/c1"}}
    assert_valid_response("POST", "/giftcards/_search", 200, [good])
    bad_bodies = [
        {"balance": "5.90"},  # a string is not a number
        {"balance": None},  # not nullable
        {"balance": True},  # a boolean is not a number
        {"_self": {}},  # _self.href is required
        {"id": 1},  # ids are strings
    ]
    for change in bad_bodies:
        with pytest.raises(AssertionError, match="does not match the spec"):
            assert_valid_response("POST", "/giftcards/_search", 200, [{**good, **change}])
    with pytest.raises(AssertionError, match="does not match the spec"):
        assert_valid_response("POST", "/giftcards/_search", 200, {"id": "c1"})  # an object, not an array
    with pytest.raises(AssertionError, match="does not match the spec"):
        assert_valid_response("GET", SETTLEMENTS, 200, [{"oid": "o", "value": 1, "date": None}])
    with pytest.raises(AssertionError, match="required property"):
        assert_valid_response("POST", TRANSACTIONS, 200, {"cardId": "c1", "_self": {"href": "x"}})


def test_the_validator_keeps_draft4_number_semantics_and_refuses_floats():
    body = {"value": Decimal("1.8"), "requestId": "r"}
    assert_valid_request("POST", SETTLEMENTS, body)
    assert_valid_request("POST", SETTLEMENTS, {**body, "value": 2})
    with pytest.raises(TypeError, match="float"):
        assert_valid_request("POST", SETTLEMENTS, {**body, "value": 1.8})
    with pytest.raises(AssertionError, match="does not match the spec"):
        assert_valid_request("POST", SETTLEMENTS, {**body, "value": Decimal("NaN")})
    search = search_request()
    assert_valid_request("POST", "/giftcards/_search", search)
    with pytest.raises(AssertionError, match="is not of type 'integer'"):
        assert_valid_request(
            "POST", "/giftcards/_search", {**search, "cart": {**search["cart"], "taxes": Decimal("0.0")}}
        )
    with pytest.raises(AssertionError, match="None for not nullable"):  # the spec says a string, not null
        assert_valid_request(
            "POST", "/giftcards/_search", {**search, "cart": {**search["cart"], "redemptionCode": None}}
        )


def test_the_validator_refuses_undocumented_statuses_paths_and_media_types():
    with pytest.raises(AssertionError, match="not documented"):
        assert_valid_response("POST", "/giftcards", 201, {})
    with pytest.raises(AssertionError, match="no operation"):
        assert_valid_response("DELETE", CARD, 200, {})
    with pytest.raises(AssertionError, match="media type"):
        assert_valid_response("GET", CARD, 200, {}, media_type="text/html")
    with pytest.raises(AssertionError, match="matches no operation"):
        contract.template_for("GET", "/giftcards/c1/history")
    assert contract.template_for("POST", "/giftcards/_search") == "/giftcards/_search"
    assert contract.template_for("GET", "/giftcards/_search") == CARD
    assert contract.template_for("GET", "/giftcards/c/transactions/t/settlements") == SETTLEMENTS
