"""Holds that are neither settled nor cancelled are released after HOLD_LIFETIME_SECONDS (Redis's clock)."""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from giftcard_provider import create_app
from giftcard_provider.keys import hold_member

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub, body
from .ledger_edit import (
    hold_deadline,
    holds_of,
    make_due,
    operation_records,
    set_hold_deadlines,
    set_hold_entry,
    stored_transaction,
)
from .snapshot import assert_rejected

LIFETIME = 0.2  # seconds


@pytest.fixture
def short(backend):
    """(hub, store) of an app whose holds live LIFETIME seconds."""
    app = create_app(make_settings(hold_lifetime_seconds=LIFETIME), redis_client=backend)
    hub = Hub(app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})
    return hub, app.extensions["giftcard_provider"]["store"]


def ok(response):
    assert response.status_code == 200, response.get_data(as_text=True)
    return body(response)


def past_deadline() -> None:
    time.sleep(LIFETIME + 0.05)


def cancellations(hub, card_id: str, tx: str) -> list[dict]:
    return ok(hub.get(f"/giftcards/{card_id}/transactions/{tx}/cancellations"))


def test_expired_hold_returns_to_the_card(short):
    hub, store = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    past_deadline()
    assert hub.balance(card["id"]) == 10  # GET card counts the due hold as available at once
    [found] = ok(hub.search(card["redemptionCode"]))
    assert found["balance"] == 10
    refused = hub.settle(card["id"], tx, Decimal("4"))
    assert refused.status_code == 422
    assert body(refused) == {"code": "exceeds_settleable", "message": body(refused)["message"]}
    [record] = cancellations(hub, card["id"], tx)
    assert record["value"] == 4
    assert record["oid"] and record["oid"] != tx
    assert ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}/settlements")) == []
    [raw] = operation_records(store, card["id"], tx)  # the refused settlement wrote the release
    assert (raw.kind, raw.minor, raw.reason) == ("c", 400, "expired")
    assert holds_of(store, card["id"]) == {}
    hub.debit(card["id"], Decimal("10"))  # the released money can be spent again
    assert hub.balance(card["id"]) == 0


def test_expiry_releases_only_what_is_still_held(hub, store):
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    ok(hub.settle(card["id"], tx, Decimal("1")))
    make_due(store, card["id"], tx)
    assert hub.balance(card["id"]) == 9
    ok(hub.cancel(card["id"], tx, Decimal("1")))  # the settled part can still be refunded
    assert [r["value"] for r in cancellations(hub, card["id"], tx)] == [3, 1]
    assert hub.balance(card["id"]) == 10
    assert_rejected(store.redis, lambda: hub.cancel(card["id"], tx, Decimal("0.01")), 422, "exceeds_cancellable")


def test_cancelling_an_expired_hold_adds_up_for_the_hub(short):
    hub, _ = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    past_deadline()
    response = hub.cancel(card["id"], tx, Decimal("4"))
    assert response.status_code == 422
    assert body(response)["code"] == "exceeds_cancellable"
    # The Hub sums the GET list: the expiry counts as the cancellation it wanted.
    assert sum(r["value"] for r in cancellations(hub, card["id"], tx)) == 4
    assert hub.balance(card["id"]) == 10


def test_only_due_unsettled_holds_expire(hub, store):
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    settled, due, young = (hub.debit(card["id"], Decimal(v)) for v in ("4", "2", "1"))
    ok(hub.settle(card["id"], settled, Decimal("4")))  # fully settled: no longer a hold
    make_due(store, card["id"], due)
    assert hub.balance(card["id"]) == 5  # 10 - 4 settled - 1 still held
    hub.credit(card["id"], 1)  # a money call runs the expiry pass
    assert cancellations(hub, card["id"], settled) == []
    assert [r["value"] for r in cancellations(hub, card["id"], due)] == [2]
    assert cancellations(hub, card["id"], young) == []
    assert hub.balance(card["id"]) == 6
    ok(hub.settle(card["id"], young, Decimal("1")))  # a hold within its lifetime can still be captured


def test_expired_debit_frees_a_single_redemption_card(short):
    hub, _ = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL", multipleRedemptions=False)
    hub.debit(card["id"], Decimal("4"))
    past_deadline()
    hub.debit(card["id"], Decimal("10"))
    assert hub.balance(card["id"]) == 0


def test_many_expired_holds_come_back_together(short):
    hub, _ = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    txs = [hub.debit(card["id"], Decimal("1.5")) for _ in range(4)]
    past_deadline()
    assert hub.balance(card["id"]) == 10
    hub.credit(card["id"], 1)
    assert [len(cancellations(hub, card["id"], t)) for t in txs] == [1, 1, 1, 1]
    assert hub.balance(card["id"]) == 11


def test_sweeper_call_releases_due_holds(short):
    hub, store = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    past_deadline()
    assert store.expire_holds(card["id"]) == 1
    assert store.expire_holds(card["id"]) == 0
    assert [r["value"] for r in cancellations(hub, card["id"], tx)] == [4]
    assert hub.balance(card["id"]) == 10


def test_expiry_is_visible_in_the_list_without_a_money_call(short):
    hub, store = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    past_deadline()
    assert hub.balance(card["id"]) == 10
    pending = cancellations(hub, card["id"], tx)
    assert [r["value"] for r in pending] == [4]
    # The listed record is exactly the one the release then writes: same oid, value and date.
    assert store.expire_holds(card["id"]) == 1
    assert cancellations(hub, card["id"], tx) == pending


def age_holds(store, card_id: str, txs: list[str]) -> None:
    """Move the holds' deadlines into the past, in order (as if their lifetime had passed), all at once,
    so that no money call in between has released any of them."""
    base = time.time_ns() // 1_000_000 - 10_000
    set_hold_deadlines(store, card_id, {tx: base + i for i, tx in enumerate(txs)})


def test_a_due_hold_is_never_settleable_however_many_others_are_due(hub, store):
    """More due holds than the sweeper releases per call: the one a call names is released first,
    and every money call releases all that are due, so it agrees with GET card and the lists."""
    card = hub.funded_card(Decimal("300"), currencyCode="BRL")
    txs = [hub.debit(card["id"], Decimal("1")) for _ in range(150)]
    age_holds(store, card["id"], txs)
    last = txs[-1]  # the latest deadline of all, and already past
    assert [r["value"] for r in cancellations(hub, card["id"], last)] == [1]  # the list shows it released
    assert hub.balance(card["id"]) == 300
    refused = hub.settle(card["id"], last, Decimal("1"))  # releasing due holds is a change in its own right
    assert (refused.status_code, body(refused)["code"]) == (422, "exceeds_settleable")
    assert holds_of(store, card["id"]) == {}  # the refusal above released them all
    assert hub.balance(card["id"]) == 300


def test_a_debit_sees_every_due_hold_as_available(hub, store):
    card = hub.funded_card(Decimal("150"), currencyCode="BRL")
    txs = [hub.debit(card["id"], Decimal("1")) for _ in range(150)]
    age_holds(store, card["id"], txs)
    assert hub.balance(card["id"]) == 150  # what GET card says, the next Debit may spend
    hub.debit(card["id"], Decimal("150"))
    assert hub.balance(card["id"]) == 0


def test_the_sweeper_releases_a_backlog_in_batches(short):
    hub, store = short
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    for _ in range(5):
        hub.debit(card["id"], Decimal("1"))
    past_deadline()
    assert [store.expire_holds(card["id"], batch=2) for _ in range(4)] == [2, 2, 1, 0]
    assert hub.balance(card["id"]) == 10


def test_a_due_entry_whose_transaction_disagrees_never_stalls_the_sweeper(hub, store):
    """A hold-deadline entry edited by hand to look due: it is put back at its transaction's real
    deadline, nothing is released, and the sweeper's loop ends."""
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    set_hold_entry(store, card["id"], tx, 1)
    assert store.expire_holds(card["id"]) == 0  # the card's own pass goes by its records, not the entry
    swept = store.expire_all_holds()
    assert swept == {"bucketsWithDueHolds": 1, "holdsReleased": 0, "errors": {}, "moving": 0, "eventsTrimmed": 0}
    assert hold_deadline(store, card["id"], tx) == stored_transaction(store, card["id"], tx).hold_deadline_ms
    assert store.expire_all_holds()["bucketsWithDueHolds"] == 0
    assert hub.balance(card["id"]) == 6


def test_the_bucket_sweeper_releases_every_due_hold_in_batches(hub, store):
    """More due holds in one bucket than one sweeper call takes (store.SWEEP_BATCH): the pass goes on
    until none is left, leaves the young hold alone, and a second pass finds nothing to do."""
    from giftcard_provider.store import SWEEP_BATCH

    card = hub.funded_card(Decimal("300"), currencyCode="BRL")
    txs = [hub.debit(card["id"], Decimal("1")) for _ in range(SWEEP_BATCH + 50)]
    young = hub.debit(card["id"], Decimal("1"))
    age_holds(store, card["id"], txs)
    swept = store.expire_all_holds()
    assert swept == {"bucketsWithDueHolds": 1, "holdsReleased": len(txs), "errors": {}, "moving": 0, "eventsTrimmed": 0}
    assert list(holds_of(store, card["id"])) == [young]
    assert store.expire_all_holds() == {
        "bucketsWithDueHolds": 0,
        "holdsReleased": 0,
        "errors": {},
        "moving": 0,
        "eventsTrimmed": 0,
    }
    assert [r["value"] for r in cancellations(hub, card["id"], txs[0])] == [1]
    assert hub.balance(card["id"]) == 299
    ok(hub.settle(card["id"], young, Decimal("1")))


def test_a_card_keeps_its_open_holds_in_the_bucket_only(hub, store):
    """A card's open holds are its entries in the bucket's holds: a Debit adds one, its settlement takes
    it away, and verify reports an entry that disagrees with the transaction either way."""
    from giftcard_provider.verify import verify_card

    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    settled, held = hub.debit(card["id"], Decimal("4")), hub.debit(card["id"], Decimal("1"))
    ok(hub.settle(card["id"], settled, Decimal("4")))
    assert holds_of(store, card["id"]) == {held: stored_transaction(store, card["id"], held).hold_deadline_ms}
    assert verify_card(store.redis, store.keys, card["id"]) == []

    deadline = stored_transaction(store, card["id"], held).hold_deadline_ms
    set_hold_entry(store, card["id"], settled, 5)  # a closed Debit listed again
    store.redis.zrem(store.keys.holds(card["id"][:2]), hold_member(card["id"], held))  # an open one unlisted
    problems = verify_card(store.redis, store.keys, card["id"])
    assert sorted(problems) == sorted(
        [
            f"card {card['id']}: transaction {settled}: closed hold left in the bucket's hold deadlines (deadline 5)",
            f"card {card['id']}: transaction {held}: hold missing from the bucket's hold deadlines "
            f"(found None, deadline {deadline})",
        ]
    )
    store.redis.zrem(store.keys.holds(card["id"][:2]), hold_member(card["id"], settled))  # put both back
    set_hold_entry(store, card["id"], held, deadline)
    assert verify_card(store.redis, store.keys, card["id"]) == []
