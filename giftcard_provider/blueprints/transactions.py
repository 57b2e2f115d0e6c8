"""Transactions: create (Debit holds, Credit loads), list, read, authorization."""

from __future__ import annotations

from json.encoder import encode_basestring_ascii as json_string

from flask.views import MethodView

from schemas.common import iso_ms
from schemas.transactions import OperationSchema, TransactionRefSchema, TransactionRequestSchema, TransactionSchema

from ..api import Blueprint
from ..identity import identities
from ..money import to_major
from . import answer, content_range, ledger, links, requested_range

blp = Blueprint(
    "transactions",
    __name__,
    url_prefix="/giftcards/<giftCardId>/transactions",
    description="Create, list and read a card's transactions.",
)


def transaction_ref(card_id: str, tx_id: str) -> dict:
    return {"cardId": card_id, "id": tx_id, "_self": {"href": links().transaction(card_id, tx_id)}}


def authorization(body: dict) -> dict:
    """LedgerStore.authorize's arguments from a loaded Transaction request body (bench/floor_app.py
    makes the same call from the same mapping)."""
    order = body.get("orderInfo") or {}
    profile = order.get("clientProfile") or {}
    return {
        "operation": body["operation"],
        "amount": body["value"],
        "request_id": body["requestId"],
        "token": body.get("redemptionToken") or "",
        "identities": identities(profile.get("email"), profile.get("document")),
        "order_id": order.get("orderId") or "",
        "description": body.get("description") or "",
    }


def refs_json(card_id: str, tx_ids: list[str]) -> str:
    """The JSON of a page of transaction_ref()s, written directly: the default page holds 1,000, and
    building 2,000 dicts for the generic encoder to walk was most of its CPU (issue 12). The text is
    what json.dumps(..., separators=(",", ":")) makes of the same refs (tests/test_transactions.py)."""
    card = json_string(card_id)
    hrefs = links().transaction_each(card_id, tx_ids)
    items = ",".join(
        [
            f'{{"cardId":{card},"id":{json_string(i)},"_self":{{"href":{json_string(h)}}}}}'
            for i, h in zip(tx_ids, hrefs, strict=True)
        ]
    )
    return f"[{items}]"


@blp.route("")
class Transactions(MethodView):
    @blp.arguments(TransactionRequestSchema())  # an instance: webargs would build one per request from a class
    @blp.response(200, TransactionRefSchema)
    def post(self, body, giftCardId):
        """Authorize a Debit (the value is held at once) or apply a Credit.

        Idempotent by requestId: a repeat returns the original transaction; the
        same requestId with another operation or value is a 409.
        """
        _, tx_id, _ = ledger().authorize(giftCardId, **authorization(body))
        return answer(transaction_ref(giftCardId, tx_id))

    @blp.response(200, TransactionRefSchema(many=True))
    def get(self, giftCardId):
        """The card's transactions, oldest first (REST-Range honoured, up to 1000 at once)."""
        start, stop = requested_range(default_last=999)
        ids, total = ledger().transaction_ids(giftCardId, start, stop)
        return answer(refs_json(giftCardId, ids), content_range(start, len(ids), total))


@blp.route("/<transactionId>")
class Transaction(MethodView):
    @blp.response(200, TransactionSchema)
    def get(self, giftCardId, transactionId):
        """One transaction, with links to its settlements, cancellations and authorization."""
        tx, exponent = ledger().transaction(giftCardId, transactionId)
        return answer(
            {
                "id": transactionId,
                "cardId": giftCardId,
                "operation": tx.operation,
                "value": to_major(tx.value, exponent),
                "date": iso_ms(tx.date_ms),
                "requestId": tx.request_id,
                "orderId": tx.order_id,
                "description": tx.description,
                "settlement": {"href": links().settlements(giftCardId, transactionId)},
                "cancellation": {"href": links().cancellations(giftCardId, transactionId)},
                "authorization": {"href": links().authorization(giftCardId, transactionId)},
                "_self": {"href": links().transaction(giftCardId, transactionId)},
            }
        )


@blp.route("/<transactionId>/authorization")
class Authorization(MethodView):
    @blp.response(200, OperationSchema)
    def get(self, giftCardId, transactionId):
        """The original authorization: the transaction's id, value and date."""
        tx, exponent = ledger().transaction(giftCardId, transactionId)
        return answer({"oid": transactionId, "value": to_major(tx.value, exponent), "date": iso_ms(tx.date_ms)})
