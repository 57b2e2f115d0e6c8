"""The ledger as a plain-Python reference model: the executable form of docs/api.md, "Behaviour decisions".

No Redis, no HTTP, no ids of its own: the service under test names cards,
transactions and operations, and the model is told those names. Each request
method answers an :class:`Answer` (status, error code, the id a success must
carry) and applies the change only when the request succeeds, so a refusal
leaves no trace here either. ``tests/test_stateful.py`` drives the service and
this model side by side and compares every answer and every balance.

Amounts are :class:`~decimal.Decimal` in major units on the way in (as the Hub
sends them) and integer minor units inside. Not modelled: validity windows,
blocked cards and hold expiry (they need a clock; other tests cover them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

# ISO 4217 minor-unit exponents of the currencies the tests use.
EXPONENTS = {"BRL": 2, "USD": 2, "EUR": 2, "JPY": 0, "CLP": 0, "KWD": 3, "BHD": 3}


@dataclass(frozen=True)
class Answer:
    status: int
    code: str = ""  # error code of a 409 / 422 ("insufficient_balance", ...)
    field: str = ""  # the field a 409 names
    id: str = ""  # the transaction id or operation oid a 200 carries
    minor: int = 0  # the value a settlement / cancellation 200 carries

    @property
    def ok(self) -> bool:
        return self.status == 200


def refused(code: str) -> Answer:
    return Answer(422, code)


def conflict(name: str) -> Answer:
    return Answer(409, "request_id_conflict", name)


@dataclass
class Operation:
    """A settlement or a cancellation: {oid, value} plus the requestId that made it."""

    oid: str
    minor: int
    request_id: str


@dataclass
class Transaction:
    id: str
    operation: str  # "Debit" | "Credit"
    minor: int
    request_id: str
    held: int = 0  # Debit: still held
    settled: int = 0
    released: int = 0  # Debit: hold given back by cancellations
    refunded: int = 0  # Debit: settled money given back by cancellations
    cancelled: int = 0  # Credit: taken back out of the card
    settlements: list[Operation] = field(default_factory=list)
    cancellations: list[Operation] = field(default_factory=list)

    @property
    def open_debit(self) -> bool:
        """Counts against multipleRedemptions until it is cancelled in full."""
        return self.operation == "Debit" and self.released + self.refunded < self.minor

    def find(self, records: list[Operation], request_id: str) -> Operation | None:
        return next((r for r in records if r.request_id == request_id), None)


@dataclass
class Card:
    id: str
    currency: str
    owner: str
    restricted: bool
    multiple_redemptions: bool
    multiple_credits: bool
    token: str
    code: str
    relation_name: str
    available: int = 0
    held: int = 0
    transactions: dict[str, Transaction] = field(default_factory=dict)  # by id, oldest first

    @property
    def exponent(self) -> int:
        return EXPONENTS[self.currency]

    def by_request(self, request_id: str) -> Transaction | None:
        return next((t for t in self.transactions.values() if t.request_id == request_id), None)

    def major(self, minor: int) -> Decimal:
        return Decimal(minor).scaleb(-self.exponent)


def identity(value: str | None) -> str:
    """Profile ids compare as given; e-mail addresses case-insensitively."""
    value = (value or "").strip()
    return value.lower() if "@" in value else value


def normalise_code(code: str) -> str:
    return "".join(code.split()).replace("-", "").upper()


def decimal_places(value: Decimal) -> int:
    return max(0, -value.normalize().as_tuple().exponent)


def to_minor(value: Decimal, exponent: int) -> int | None:
    """Minor units, or None when the value is more precise than the currency."""
    return None if decimal_places(value) > exponent else int(value.scaleb(exponent))


class Ledger:
    def __init__(self, max_amount: Decimal, max_balance: Decimal):
        self.max_amount = max_amount  # per operation, major units, any currency
        self.max_balance = max_balance  # available + held of one card, major units
        self.cards: dict[str, Card] = {}

    def valid_payload(self, value: Decimal) -> bool:
        """What the schema checks before anything else: a positive finite number within the ceiling.
        (Decimals the card's currency does not have are the ledger's refusal, naming the currency.)"""
        return value.is_finite() and value > 0 and value <= self.max_amount

    # -- cards ----------------------------------------------------------------

    def create_card(self, card: Card) -> Card:
        """POST /giftcards: a new card with balance 0 (the service names it and its code and token)."""
        assert card.id and card.id not in self.cards, f"card id {card.id!r} is not new"
        assert card.available == card.held == 0 and not card.transactions
        card.owner = identity(card.owner)
        self.cards[card.id] = card
        return card

    def search(self, client_ids: list[str | None], code: str | None = None, relation_name: str | None = None):
        """Ids of the cards a search answers, in no particular order.

        Only usable cards (here: a positive balance) are listed; a restricted card only to its owner.
        """
        who = {identity(i) for i in client_ids} - {""}
        if code and code.strip():
            found = [c for c in self.cards.values() if normalise_code(c.code) == normalise_code(code)]
            found = [c for c in found if not c.restricted or c.owner in who]
        else:
            found = [c for c in self.cards.values() if c.owner in who]
            if relation_name:
                found = [c for c in found if c.relation_name == relation_name]
        return {c.id for c in found if c.available > 0}

    # -- transactions ---------------------------------------------------------

    def transact(
        self,
        card_id: str,
        operation: str,
        value: Decimal,
        request_id: str,
        *,
        new_id: str,
        token: str | None = None,
        identities: list[str | None] = (),
    ) -> Answer:
        """POST /giftcards/{card}/transactions. ``new_id`` names the transaction if one is created."""
        if not self.valid_payload(value):
            return Answer(400)
        card = self.cards.get(card_id)
        if card is None:
            return Answer(404)
        minor = to_minor(value, card.exponent)
        earlier = card.by_request(request_id)
        if earlier:  # a repeat: the original answer, or a conflict naming the field
            if earlier.operation != operation:
                return conflict("operation")
            if earlier.minor != minor:
                return conflict("value")
            return Answer(200, id=earlier.id)
        if minor is None:
            return Answer(400)
        if token and token != card.token:
            return refused("token_mismatch")
        if operation == "Debit":
            # Spending needs the card's token, and the owner named when the card is restricted.
            if not token:
                return refused("token_required")
            if card.restricted and card.owner not in {identity(i) for i in identities} - {""}:
                return refused("owner_mismatch")
        if operation == "Debit":
            if not card.multiple_redemptions and any(t.open_debit for t in card.transactions.values()):
                return refused("redemption_used")
            if minor > card.available:
                return refused("insufficient_balance")
            card.available -= minor
            card.held += minor
            tx = Transaction(new_id, operation, minor, request_id, held=minor)
        else:
            if not card.multiple_credits and any(t.operation == "Credit" for t in card.transactions.values()):
                return refused("credit_used")
            if card.available + card.held + minor > to_minor(self.max_balance, card.exponent):
                return refused("balance_limit")
            card.available += minor
            tx = Transaction(new_id, operation, minor, request_id)
        assert new_id and new_id not in card.transactions, f"transaction id {new_id!r} is not new"
        card.transactions[new_id] = tx
        return Answer(200, id=new_id)

    def settle(self, card_id: str, tx_id: str, value: Decimal, request_id: str, *, new_oid: str) -> Answer:
        """POST .../settlements: capture part of what a Debit holds; for a Credit, mark (part of) it final."""
        return self._operate(card_id, tx_id, value, request_id, new_oid, "settlements")

    def cancel(self, card_id: str, tx_id: str, value: Decimal, request_id: str, *, new_oid: str) -> Answer:
        """POST .../cancellations: release the hold first, then refund; for a Credit, take it back if available."""
        return self._operate(card_id, tx_id, value, request_id, new_oid, "cancellations")

    def _operate(self, card_id, tx_id, value, request_id, new_oid, kind) -> Answer:
        if not self.valid_payload(value):
            return Answer(400)
        card = self.cards.get(card_id)
        tx = card.transactions.get(tx_id) if card else None
        if tx is None:
            return Answer(404)
        minor = to_minor(value, card.exponent)
        records = getattr(tx, kind)
        earlier = tx.find(records, request_id)
        if earlier:
            return Answer(200, id=earlier.oid, minor=earlier.minor) if earlier.minor == minor else conflict("value")
        if minor is None:
            return Answer(400)
        apply = self._apply_settlement if kind == "settlements" else self._apply_cancellation
        refusal = apply(card, tx, minor)  # a refusal string, or None once the change is applied
        if refusal:
            return refused(refusal)
        assert new_oid, "an operation needs an oid"
        records.append(Operation(new_oid, minor, request_id))
        return Answer(200, id=new_oid, minor=minor)

    @staticmethod
    def _apply_settlement(card: Card, tx: Transaction, minor: int) -> str | None:
        if tx.operation == "Debit":
            if minor > tx.held:
                return "exceeds_settleable"
            tx.held -= minor
            card.held -= minor
        elif minor > tx.minor - tx.settled - tx.cancelled:
            return "exceeds_settleable"
        tx.settled += minor
        return None

    @staticmethod
    def _apply_cancellation(card: Card, tx: Transaction, minor: int) -> str | None:
        if tx.operation == "Debit":
            if minor > tx.minor - tx.released - tx.refunded:
                return "exceeds_cancellable"
            release = min(minor, tx.held)  # what is still held goes back first...
            tx.held -= release
            tx.released += release
            card.held -= release
            tx.refunded += minor - release  # ...then settled money is refunded
            card.available += minor
            return None
        if minor > tx.minor - tx.cancelled:
            return "exceeds_cancellable"
        if minor > card.available:  # a Credit is taken back only while the card still has it
            return "insufficient_balance"
        tx.cancelled += minor
        card.available -= minor
        return None
