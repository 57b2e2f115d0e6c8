"""Settlements and cancellations: the same shape twice, POST {value, requestId} and GET the list.

One factory builds both blueprints; what differs (the ledger calls, the name of
the transaction path parameter, the docs) is passed in explicitly.
"""

from __future__ import annotations

from collections.abc import Callable

from flask.views import MethodView

from schemas.common import iso_ms
from schemas.transactions import OperationRequestSchema, OperationSchema

from ..api import Blueprint
from ..money import to_major
from ..records import Operation
from ..store import LedgerStore
from . import answer, ledger


def operation_body(op: Operation, exponent: int) -> dict:
    return {"oid": op.oid, "value": to_major(op.minor, exponent), "date": iso_ms(op.date_ms)}


def operation_blueprint(
    name: str,
    tx_param: str,
    apply: Callable[..., tuple[bool, Operation, int]],
    records: Callable[..., tuple[list[Operation], int]],
    docs: tuple[str, str, str],
) -> Blueprint:
    description, post_doc, get_doc = docs
    blp = Blueprint(
        name, __name__, url_prefix=f"/giftcards/<giftCardId>/transactions/<{tx_param}>/{name}", description=description
    )

    class Operations(MethodView):
        @blp.arguments(OperationRequestSchema())  # an instance: webargs would build one per request from a class
        @blp.response(200, OperationSchema)
        def post(self, body, giftCardId, **path):
            _, op, exponent = apply(ledger(), giftCardId, path[tx_param], body["value"], body["requestId"])
            return answer(operation_body(op, exponent))

        @blp.response(200, OperationSchema(many=True))
        def get(self, giftCardId, **path):
            ops, exponent = records(ledger(), giftCardId, path[tx_param])
            return answer([operation_body(op, exponent) for op in ops])

    Operations.post.__doc__, Operations.get.__doc__ = post_doc, get_doc
    blp.route("")(Operations)
    return blp


settlements = operation_blueprint(
    "settlements",
    "tId",
    LedgerStore.settle,
    LedgerStore.settlements,
    (
        "Capture what a Debit holds, in one or several partial settlements.",
        "Settle `value` of the transaction (never more than it still holds). Idempotent by requestId.",
        "The transaction's settlements, oldest first; [] when there are none.",
    ),
)

cancellations = operation_blueprint(
    "cancellations",
    "transactionId",
    LedgerStore.cancel,
    LedgerStore.cancellations,
    (
        "Release what a Debit still holds, then refund what was settled; reverse a Credit.",
        "Cancel `value` of the transaction: the held part is released first, then settled money "
        "is refunded. Idempotent by requestId.",
        "The transaction's cancellations (including hold expiries), oldest first; [] when there are none.",
    ),
)
