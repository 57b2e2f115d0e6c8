"""Settlements and cancellations: partial captures, release-then-refund, caps, idempotency, GET lists."""

from __future__ import annotations

import re
import time
from decimal import Decimal

import pytest

from .hub import body, request_id
from .ledger_edit import edit_card
from .snapshot import assert_rejected, unchanged

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
KINDS = ["settlements", "cancellations"]


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return body(response)


def post(hub, kind: str, card_id: str, tx: str, value, rid: str | None = None):
    return hub.settle(card_id, tx, value, rid) if kind == "settlements" else hub.cancel(card_id, tx, value, rid)


def listed(hub, kind: str, card_id: str, tx: str) -> list[dict]:
    return ok(hub.get(f"/giftcards/{card_id}/transactions/{tx}/{kind}"))


def values(hub, kind: str, card_id: str, tx: str) -> list:
    return [r["value"] for r in listed(hub, kind, card_id, tx)]


@pytest.fixture
def held(hub):
    """A BRL card loaded with 100 and a Debit holding 10 of it: (card id, transaction id)."""
    card = hub.funded_card(Decimal("100"), currencyCode="BRL")
    return card["id"], hub.debit(card["id"], Decimal("10"))


# -- settlements ----------------------------------------------------------------------


def test_partial_settlements_up_to_the_hold(hub, store, held):
    card, tx = held
    answers = [ok(hub.settle(card, tx, v)) for v in (Decimal("3"), Decimal("2.5"), Decimal("4.5"))]
    for answer, value in zip(answers, (3, Decimal("2.5"), Decimal("4.5")), strict=True):
        assert set(answer) == {"oid", "value", "date"}
        assert answer["value"] == value
        assert answer["oid"] and answer["oid"] != tx
        assert ISO_MS.fullmatch(answer["date"])
    assert len({a["oid"] for a in answers}) == 3
    assert listed(hub, "settlements", card, tx) == answers  # exactly these, oldest first
    assert hub.balance(card) == 90  # settled money is gone; nothing returns
    error = assert_rejected(store.redis, lambda: hub.settle(card, tx, Decimal("0.01")), 422, "exceeds_settleable")
    assert set(error) == {"code", "message"}
    assert len(listed(hub, "settlements", card, tx)) == 3


def test_settling_more_than_held_at_once_is_refused(hub, store, held):
    card, tx = held
    assert_rejected(store.redis, lambda: hub.settle(card, tx, Decimal("10.01")), 422, "exceeds_settleable")
    assert listed(hub, "settlements", card, tx) == []
    assert ok(hub.settle(card, tx, 10))["value"] == 10


def test_settling_after_a_partial_cancellation(hub, store, held):
    card, tx = held
    ok(hub.cancel(card, tx, 3))
    assert hub.balance(card) == 93
    assert_rejected(store.redis, lambda: hub.settle(card, tx, Decimal("7.01")), 422, "exceeds_settleable")
    ok(hub.settle(card, tx, 7))
    assert hub.balance(card) == 93


def test_settling_a_credit_records_it_as_final(hub, store):
    card = hub.create_card(currencyCode="BRL")
    tx = hub.credit(card["id"], 10)
    ok(hub.settle(card["id"], tx, 4))
    ok(hub.settle(card["id"], tx, 6))
    assert hub.balance(card["id"]) == 10
    assert values(hub, "settlements", card["id"], tx) == [4, 6]
    assert_rejected(store.redis, lambda: hub.settle(card["id"], tx, Decimal("0.01")), 422, "exceeds_settleable")


# -- cancellations --------------------------------------------------------------------


def test_cancel_an_unsettled_hold(hub, store, held):
    card, tx = held
    ok(hub.cancel(card, tx, 10))
    assert hub.balance(card) == 100
    assert_rejected(store.redis, lambda: hub.settle(card, tx, Decimal("0.01")), 422, "exceeds_settleable")
    assert_rejected(store.redis, lambda: hub.cancel(card, tx, Decimal("0.01")), 422, "exceeds_cancellable")


def test_cancellation_releases_the_hold_first_then_refunds(hub, store, held):
    card, tx = held
    ok(hub.settle(card, tx, 6))  # held 4, settled 6
    assert hub.balance(card) == 90
    ok(hub.cancel(card, tx, 5))  # releases 4, refunds 1
    assert hub.balance(card) == 95
    assert_rejected(store.redis, lambda: hub.settle(card, tx, Decimal("0.01")), 422, "exceeds_settleable")
    ok(hub.cancel(card, tx, 5))  # refunds the remaining 5
    assert hub.balance(card) == 100
    assert values(hub, "cancellations", card, tx) == [5, 5]
    assert_rejected(store.redis, lambda: hub.cancel(card, tx, Decimal("0.01")), 422, "exceeds_cancellable")


def test_cancellation_of_a_partly_settled_hold_only_releases(hub, held):
    card, tx = held
    ok(hub.settle(card, tx, 2))  # held 8
    ok(hub.cancel(card, tx, 3))  # releases 3 of the 8: no refund yet
    assert hub.balance(card) == 93
    ok(hub.settle(card, tx, 5))  # the other 5 can still be settled
    assert hub.balance(card) == 93


@pytest.mark.parametrize("settled", [0, 4, 10])
def test_cancellations_never_exceed_the_authorized_value(hub, store, held, settled):
    card, tx = held
    if settled:
        ok(hub.settle(card, tx, settled))
    assert_rejected(store.redis, lambda: hub.cancel(card, tx, Decimal("10.01")), 422, "exceeds_cancellable")
    ok(hub.cancel(card, tx, Decimal("9.99")))
    assert_rejected(store.redis, lambda: hub.cancel(card, tx, Decimal("0.02")), 422, "exceeds_cancellable")
    ok(hub.cancel(card, tx, Decimal("0.01")))
    assert sum(values(hub, "cancellations", card, tx)) == 10
    assert hub.balance(card) == 100


def test_cancelling_a_credit_takes_the_money_back_while_available(hub, store):
    card = hub.create_card(currencyCode="BRL")
    credit = hub.credit(card["id"], 10)
    debit = hub.debit(card["id"], 8)
    error = assert_rejected(store.redis, lambda: hub.cancel(card["id"], credit, 3), 422, "insufficient_balance")
    assert set(error) == {"code", "message"}
    ok(hub.cancel(card["id"], credit, 2))
    assert hub.balance(card["id"]) == 0
    ok(hub.cancel(card["id"], debit, 8))
    assert hub.balance(card["id"]) == 8
    assert_rejected(store.redis, lambda: hub.cancel(card["id"], credit, Decimal("8.01")), 422, "exceeds_cancellable")
    ok(hub.cancel(card["id"], credit, 8))
    assert hub.balance(card["id"]) == 0
    assert values(hub, "cancellations", card["id"], credit) == [2, 8]


def test_settled_debits_and_credit_cancellation(hub, store):
    card = hub.create_card(currencyCode="BRL")
    credit = hub.credit(card["id"], 10)
    debit = hub.debit(card["id"], 10)
    ok(hub.settle(card["id"], debit, 10))  # spent for good
    assert_rejected(store.redis, lambda: hub.cancel(card["id"], credit, 1), 422, "insufficient_balance")


# -- idempotency ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_replay_returns_the_same_record_and_changes_nothing(hub, store, held, kind):
    card, tx = held
    rid = request_id(kind)
    first = ok(post(hub, kind, card, tx, 4, rid))
    time.sleep(0.002)
    with unchanged(store.redis):
        assert ok(post(hub, kind, card, tx, Decimal("4.00"), rid)) == first
    assert listed(hub, kind, card, tx) == [first]


@pytest.mark.parametrize("kind", KINDS)
def test_replay_succeeds_when_nothing_is_left(hub, store, held, kind):
    card, tx = held
    rid = request_id(kind)
    first = ok(post(hub, kind, card, tx, 10, rid))
    with unchanged(store.redis):
        assert ok(post(hub, kind, card, tx, 10, rid)) == first


@pytest.mark.parametrize("kind", KINDS)
def test_same_request_id_other_value_is_409(hub, store, held, kind):
    card, tx = held
    rid = request_id(kind)
    first = ok(post(hub, kind, card, tx, 4, rid))
    for other in (Decimal("4.01"), 3, Decimal("4.001"), 6):
        error = assert_rejected(
            store.redis, lambda v=other: post(hub, kind, card, tx, v, rid), 409, "request_id_conflict"
        )
        assert error["field"] == "value"
        assert "value" in error["message"]
    assert listed(hub, kind, card, tx) == [first]


def test_request_id_of_the_other_kind_is_independent(hub, held):
    card, tx = held
    rid = request_id("shared")
    settlement = ok(hub.settle(card, tx, 3, rid))
    cancellation = ok(hub.cancel(card, tx, 2, rid))
    assert settlement["oid"] != cancellation["oid"]
    assert values(hub, "settlements", card, tx) == [3]
    assert values(hub, "cancellations", card, tx) == [2]
    assert hub.balance(card) == 92
    # And the transaction's own requestId does not collide either.
    record = ok(hub.get(f"/giftcards/{card}/transactions/{tx}"))
    ok(hub.settle(card, tx, 1, record["requestId"]))
    assert values(hub, "settlements", card, tx) == [3, 1]


def test_request_ids_are_per_transaction(hub):
    card = hub.funded_card(Decimal("20"), currencyCode="BRL")
    a, b = hub.debit(card["id"], 5), hub.debit(card["id"], 5)
    rid = request_id("settle")
    first = ok(hub.settle(card["id"], a, 5, rid))
    second = ok(hub.settle(card["id"], b, 2, rid))
    assert first["oid"] != second["oid"]
    assert values(hub, "settlements", card["id"], b) == [2]


@pytest.mark.parametrize("kind", KINDS)
def test_refused_request_id_is_judged_afresh(hub, store, held, kind):
    card, tx = held
    rid = request_id(kind)
    assert_rejected(store.redis, lambda: post(hub, kind, card, tx, 11, rid), 422)
    ok(post(hub, kind, card, tx, 10, rid))  # same requestId, new value: not a conflict
    assert values(hub, kind, card, tx) == [10]


# -- GET lists -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_lists_are_empty_not_404(hub, held, kind):
    card, tx = held
    assert listed(hub, kind, card, tx) == []
    credit = hub.credit(card, 1)
    assert listed(hub, kind, card, credit) == []


@pytest.mark.parametrize("kind", KINDS)
def test_lists_hold_exactly_the_successes_oldest_first(hub, store, held, kind):
    card, tx = held
    answers = []
    for value in (1, 2, 3):
        answers.append(ok(post(hub, kind, card, tx, value)))
        assert_rejected(store.redis, lambda: post(hub, kind, card, tx, 50), 422)  # refusals leave no record
        time.sleep(0.002)
    rid = request_id(kind)
    ok(post(hub, kind, card, tx, 1, rid))
    ok(post(hub, kind, card, tx, 1, rid))  # a replay is not a new record
    listed_now = listed(hub, kind, card, tx)
    assert listed_now[:3] == answers
    assert [r["value"] for r in listed_now] == [1, 2, 3, 1]
    dates = [r["date"] for r in listed_now]
    assert dates == sorted(dates)


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_transaction_or_card_is_404(hub, store, held, kind):
    card, _ = held
    for path in (
        f"/giftcards/{card}/transactions/{'0' * 32}/{kind}",
        f"/giftcards/{'0' * 32}/transactions/{'0' * 32}/{kind}",
        f"/giftcards/{card}/transactions/a:b/{kind}",
        f"/giftcards/x}}y/transactions/{'0' * 32}/{kind}",
    ):
        assert_rejected(store.redis, lambda p=path: hub.get(p), 404, "not_found")
        assert_rejected(store.redis, lambda p=path: hub.post(p, {"value": 1, "requestId": "r"}), 404, "not_found")


@pytest.mark.parametrize("kind", KINDS)
def test_invalid_operation_is_400(hub, store, held, kind):
    card, tx = held
    path = f"/giftcards/{card}/transactions/{tx}/{kind}"
    for request, field in [
        ({"requestId": "r"}, "value"),
        ({"value": 1}, "requestId"),
        ({"value": 1, "requestId": ""}, "requestId"),
        ({"value": 1, "requestId": "r" * 129}, "requestId"),
        ({"value": 0, "requestId": "r"}, "value"),
        ({"value": -1, "requestId": "r"}, "value"),
        ({"value": "1", "requestId": "r"}, "value"),
    ]:
        error = assert_rejected(store.redis, lambda r=request: hub.post(path, r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == [field], request
    assert listed(hub, kind, card, tx) == []


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_fields_are_ignored(hub, held, kind):
    card, tx = held
    path = f"/giftcards/{card}/transactions/{tx}/{kind}"
    ok(hub.post(path, {"value": 1, "requestId": request_id(), "transactionId": "x", "paymentId": "p"}))


# -- money already held stays releasable ----------------------------------------------


def test_settle_and_cancel_still_work_when_the_card_cannot_take_new_transactions(hub, store, held):
    card, tx = held
    other = hub.debit(card, 20)
    edit_card(store, card, status="blocked")
    ok(hub.settle(card, tx, 4))
    ok(hub.cancel(card, tx, 10))  # releases 6, refunds 4
    edit_card(store, card, status="active", expiring_ms=1)
    ok(hub.settle(card, other, 5))
    ok(hub.cancel(card, other, 20))  # releases 15, refunds 5
    assert hub.balance(card) == 100
