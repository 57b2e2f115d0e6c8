"""A test double of VTEX's Gift Card Hub: the calls it makes, with helpers for the common flows."""

from __future__ import annotations

import itertools

from giftcard_provider import jsonio

_request_ids = itertools.count(1)


def request_id(prefix: str = "req") -> str:
    return f"{prefix}-{next(_request_ids)}"


def body(response):
    """A response's JSON with numbers as Decimal, exactly as sent (never via float)."""
    return jsonio.loads(response.get_data())


class Hub:
    def __init__(self, client, headers: dict[str, str]):
        self.client = client
        self.headers = headers
        self.tokens: dict[str, str] = {}  # card id -> redemptionToken, as the Hub learns it

    def token(self, card_id: str) -> str | None:
        """The card's redemptionToken: from its creation, or read with GET card as the real Hub does."""
        if card_id not in self.tokens:
            response = self.get(f"/giftcards/{card_id}")
            if response.status_code != 200:
                return None
            self.tokens[card_id] = response.json["redemptionToken"]
        return self.tokens[card_id]

    # raw calls ---------------------------------------------------------------
    def post(self, path: str, body=None, **kwargs):
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.post(path, json=body, headers=headers, **kwargs)

    def get(self, path: str, **kwargs):
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.get(path, headers=headers, **kwargs)

    # flows -------------------------------------------------------------------
    def create_card(self, **fields) -> dict:
        body = {"relationName": "gift", "caption": "Gift card", "profileId": "shopper@example.com", **fields}
        response = self.post("/giftcards", body)
        assert response.status_code == 200, response.get_data(as_text=True)
        self.tokens[response.json["id"]] = response.json["redemptionToken"]
        return response.json

    def transaction(self, card_id: str, operation: str, value, rid: str | None = None, **extra):
        body = {
            "operation": operation,
            "value": value,
            "requestId": rid or request_id(operation.lower()),
            "description": "test",
            "redemptionCode": None,
            "orderInfo": None,
            **extra,
        }
        if "redemptionToken" not in body:  # the real Hub sends the token it read with GET card
            body["redemptionToken"] = self.token(card_id)
        return self.post(f"/giftcards/{card_id}/transactions", body)

    def credit(self, card_id: str, value, rid: str | None = None) -> str:
        response = self.transaction(card_id, "Credit", value, rid)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json["id"]

    def debit(self, card_id: str, value, rid: str | None = None) -> str:
        response = self.transaction(card_id, "Debit", value, rid)
        assert response.status_code == 200, response.get_data(as_text=True)
        return response.json["id"]

    def funded_card(self, balance, **fields) -> dict:
        card = self.create_card(**fields)
        self.credit(card["id"], balance)
        return card

    def settle(self, card_id: str, tx_id: str, value, rid: str | None = None):
        return self.post(
            f"/giftcards/{card_id}/transactions/{tx_id}/settlements",
            {"value": value, "requestId": rid or request_id("settle")},
        )

    def cancel(self, card_id: str, tx_id: str, value, rid: str | None = None):
        return self.post(
            f"/giftcards/{card_id}/transactions/{tx_id}/cancellations",
            {"value": value, "requestId": rid or request_id("cancel")},
        )

    def balance(self, card_id: str):
        response = self.get(f"/giftcards/{card_id}")
        assert response.status_code == 200, response.get_data(as_text=True)
        return body(response)["balance"]

    def search(self, code: str | None = None, client: dict | None = None, **cart):
        body = {
            "client": client or {"id": "shopper-1", "email": "shopper@example.com", "document": "1"},
            "cart": {"redemptionCode": code, "relationName": None, "grandTotal": 1000, **cart},
        }
        return self.post("/giftcards/_search", body)
