"""Relative hrefs, built in one place from the configured prefix."""

from __future__ import annotations


class Links:
    def __init__(self, prefix: str = ""):
        self.prefix = prefix.rstrip("/")

    def card(self, card_id: str) -> str:
        return f"{self.prefix}/giftcards/{card_id}"

    def transactions(self, card_id: str) -> str:
        return f"{self.card(card_id)}/transactions"

    def transaction(self, card_id: str, tx_id: str) -> str:
        return f"{self.transactions(card_id)}/{tx_id}"

    def transaction_each(self, card_id: str, tx_ids: list[str]) -> list[str]:
        """transaction() of each id, for a page of up to 1,000 (the prefix built once)."""
        base = self.transactions(card_id)
        return [f"{base}/{tx_id}" for tx_id in tx_ids]

    def settlements(self, card_id: str, tx_id: str) -> str:
        return f"{self.transaction(card_id, tx_id)}/settlements"

    def cancellations(self, card_id: str, tx_id: str) -> str:
        return f"{self.transaction(card_id, tx_id)}/cancellations"

    def authorization(self, card_id: str, tx_id: str) -> str:
        return f"{self.transaction(card_id, tx_id)}/authorization"
