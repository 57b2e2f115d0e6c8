"""Thread-hammer tests on a real redis-server and on a 3-primary Redis Cluster: exact totals under racing requests.

Every request goes through the Flask app (one test client per thread, one
shared redis-py client, which is thread-safe), so a check-then-act anywhere
between the view and the ledger would show up as a wrong count. After each
test the journal verifier replays every card.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest

from giftcard_provider import create_app
from giftcard_provider.verify import verify_all

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub, body, request_id

pytestmark = pytest.mark.slow

WORKERS = 32
DEADLINE = 30  # seconds: a hung worker fails the test instead of hanging the suite


@pytest.fixture(params=["redis", "cluster"])
def app(request):
    client = request.getfixturevalue("real_redis" if request.param == "redis" else "cluster_redis")
    app = create_app(make_settings(), redis_client=client)
    app.config["TESTING"] = True
    yield app
    store = app.extensions["giftcard_provider"]["store"]
    checked, problems = verify_all(store.redis, store.keys)
    assert checked > 0 and problems == [], problems


@pytest.fixture
def hub(app):
    return new_hub(app)


@pytest.fixture
def store(app):
    return app.extensions["giftcard_provider"]["store"]


def new_hub(app) -> Hub:
    return Hub(app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})


def race(app, calls: list) -> list:
    """Run calls (each `call(hub) -> response`) on WORKERS threads released together.

    Each thread has its own test client; results come back in the order of `calls`.
    """
    assert len(calls) >= WORKERS, "fewer calls than workers would leave the start barrier closed"
    start = threading.Barrier(WORKERS)
    local = threading.local()

    def worker_hub() -> Hub:
        if not hasattr(local, "hub"):
            local.hub = new_hub(app)
            start.wait(timeout=DEADLINE)  # every worker is ready before the first request
        return local.hub

    with ThreadPoolExecutor(WORKERS) as pool:
        futures = [pool.submit(lambda call=call: call(worker_hub())) for call in calls]
        return [f.result(timeout=DEADLINE) for f in futures]


def statuses(responses) -> Counter:
    return Counter(r.status_code for r in responses)


def codes(responses) -> Counter:
    return Counter(body(r)["code"] for r in responses if r.status_code != 200)


def tx_fields(store, card_id: str, tx_id: str) -> dict[str, int]:
    """The transaction's counters as stored in Redis (its packed t:<tx> field of the card hash)."""
    tx, _ = store.transaction(card_id, tx_id)
    return {k: getattr(tx, k) for k in ("value", "held", "settled", "released", "refunded")}


def records(hub: Hub, card_id: str, tx_id: str, kind: str) -> list[dict]:
    response = hub.get(f"/giftcards/{card_id}/transactions/{tx_id}/{kind}")
    assert response.status_code == 200
    return body(response)


def listed(hub: Hub, card_id: str) -> list[str]:
    response = hub.get(f"/giftcards/{card_id}/transactions")
    assert response.status_code == 200
    return [t["id"] for t in body(response)]


def test_racing_debits_never_overdraw(app, hub):
    card = hub.funded_card(100, currencyCode="USD")
    responses = race(app, [lambda h: h.transaction(card["id"], "Debit", 1) for _ in range(400)])

    assert statuses(responses) == {200: 100, 422: 300}
    assert codes(responses) == {"insufficient_balance": 300}
    debit_ids = {body(r)["id"] for r in responses if r.status_code == 200}
    assert len(debit_ids) == 100
    assert hub.balance(card["id"]) == 0
    ids = listed(hub, card["id"])
    assert len(ids) == 101 and set(ids[1:]) == debit_ids  # the Credit, then the 100 Debits


@pytest.mark.parametrize(("balance", "value"), [(1000, 100), (100, 100)])
def test_racing_identical_debits_hold_once(app, hub, store, balance, value):
    card = hub.funded_card(balance)
    rid = request_id("debit")
    responses = race(app, [lambda h: h.transaction(card["id"], "Debit", value, rid) for _ in range(64)])

    # A retried authorization is the same success, never "insufficient balance".
    assert statuses(responses) == {200: 64}
    (tx_id,) = {body(r)["id"] for r in responses}
    assert hub.balance(card["id"]) == balance - value
    assert len(listed(hub, card["id"])) == 2
    assert tx_fields(store, card["id"], tx_id)["held"] == value * 100


def test_racing_settlements_never_settle_more_than_held(app, hub, store):
    card = hub.funded_card(Decimal("50"))
    tx_id = hub.debit(card["id"], Decimal("10.00"))
    # 64 settlements of 0.30 on a hold of 10.00: exactly 33 fit (9.90).
    responses = race(app, [lambda h: h.settle(card["id"], tx_id, Decimal("0.30")) for _ in range(64)])

    assert statuses(responses) == {200: 33, 422: 31}
    assert codes(responses) == {"exceeds_settleable": 31}
    settled = records(hub, card["id"], tx_id, "settlements")
    assert len(settled) == 33 and len({s["oid"] for s in settled}) == 33
    assert sum(s["value"] for s in settled) == Decimal("9.90")
    assert tx_fields(store, card["id"], tx_id) == {
        "value": 1000,
        "held": 10,
        "settled": 990,
        "released": 0,
        "refunded": 0,
    }
    assert hub.balance(card["id"]) == 40


def test_racing_cancellations_never_exceed_the_authorized_value(app, hub, store):
    card = hub.funded_card(Decimal("50"))
    tx_id = hub.debit(card["id"], Decimal("10.00"))
    assert hub.settle(card["id"], tx_id, Decimal("4")).status_code == 200
    # 64 cancellations of 0.25: 40 fit (6 released from the hold, then 4 refunded).
    responses = race(app, [lambda h: h.cancel(card["id"], tx_id, Decimal("0.25")) for _ in range(64)])

    assert statuses(responses) == {200: 40, 422: 24}
    assert codes(responses) == {"exceeds_cancellable": 24}
    cancelled = records(hub, card["id"], tx_id, "cancellations")
    assert len(cancelled) == 40 and sum(c["value"] for c in cancelled) == 10
    assert tx_fields(store, card["id"], tx_id) == {
        "value": 1000,
        "held": 0,
        "settled": 400,
        "released": 600,
        "refunded": 400,
    }
    assert hub.balance(card["id"]) == 50


def test_racing_settlements_and_cancellations_keep_the_transaction_whole(app, hub, store):
    card = hub.funded_card(Decimal("30"))
    tx_id = hub.debit(card["id"], Decimal("10.00"))

    def settle(h):
        return h.settle(card["id"], tx_id, Decimal("0.50"))

    def cancel(h):
        return h.cancel(card["id"], tx_id, Decimal("0.70"))

    responses = race(app, [settle if i % 2 else cancel for i in range(96)])
    settle_responses, cancel_responses = responses[1::2], responses[0::2]

    assert set(statuses(responses)) <= {200, 422}
    assert set(codes(settle_responses)) <= {"exceeds_settleable"}
    assert set(codes(cancel_responses)) <= {"exceeds_cancellable"}
    tx = tx_fields(store, card["id"], tx_id)
    assert tx["held"] + tx["settled"] + tx["released"] == tx["value"] == 1000
    assert tx["refunded"] <= tx["settled"]
    assert 0 <= tx["held"] < 50  # a settlement of 0.50 was still possible otherwise
    settlements = records(hub, card["id"], tx_id, "settlements")
    cancellations = records(hub, card["id"], tx_id, "cancellations")
    assert len(settlements) == statuses(settle_responses)[200]
    assert len(cancellations) == statuses(cancel_responses)[200]
    assert sum(s["value"] for s in settlements) * 100 == tx["settled"]
    assert sum(c["value"] for c in cancellations) * 100 == tx["released"] + tx["refunded"] <= tx["value"]
    # The card lost exactly what was captured and not refunded, plus what is still held.
    assert hub.balance(card["id"]) * 100 == 3000 - tx["held"] - tx["settled"] + tx["refunded"]


@pytest.mark.parametrize("kind", ["settlements", "cancellations"])
def test_racing_identical_operations_apply_once(app, hub, store, kind):
    card = hub.funded_card(Decimal("50"))
    tx_id = hub.debit(card["id"], Decimal("10.00"))
    rid = request_id(kind)
    operate = Hub.settle if kind == "settlements" else Hub.cancel
    responses = race(app, [lambda h: operate(h, card["id"], tx_id, Decimal("2.50"), rid) for _ in range(64)])

    assert statuses(responses) == {200: 64}
    answers = {tuple(body(r).items()) for r in responses}
    assert len(answers) == 1  # same oid, value and date every time
    (only,) = records(hub, card["id"], tx_id, kind)
    assert tuple(only.items()) in answers
    tx = tx_fields(store, card["id"], tx_id)
    assert tx["held"] == 750
    assert (tx["settled"], tx["released"]) == ((250, 0) if kind == "settlements" else (0, 250))


def test_racing_credits_on_a_single_credit_card(app, hub):
    card = hub.create_card(multipleCredits=False)
    responses = race(app, [lambda h: h.transaction(card["id"], "Credit", 25) for _ in range(64)])

    assert statuses(responses) == {200: 1, 422: 63}
    assert codes(responses) == {"credit_used": 63}
    assert hub.balance(card["id"]) == 25
    assert listed(hub, card["id"]) == [body(r)["id"] for r in responses if r.status_code == 200]


def test_racing_debits_on_a_single_redemption_card(app, hub):
    card = hub.funded_card(100, multipleRedemptions=False)
    responses = race(app, [lambda h: h.transaction(card["id"], "Debit", 10) for _ in range(64)])

    assert statuses(responses) == {200: 1, 422: 63}
    assert codes(responses) == {"redemption_used": 63}
    assert hub.balance(card["id"]) == 90


def test_verify_beside_live_traffic_reports_nothing_false(app, store):
    """verify reads each card in one call (gc_read_ledger): run in a loop while Debits, settlements
    and cancellations land on the same cards, it never reports a problem that is not there."""
    from giftcard_provider.verify import verify_store

    hub = new_hub(app)
    cards = [hub.funded_card(Decimal("1000"), currencyCode="BRL")["id"] for _ in range(3)]
    stop = threading.Event()
    reports: list[list[str]] = []

    def traffic(worker: int) -> int:
        client = new_hub(app)
        done = 0
        while not stop.is_set():
            card = cards[done % len(cards)]
            tx = client.debit(card, Decimal("1"))
            assert client.settle(card, tx, Decimal("0.5")).status_code == 200
            assert client.cancel(card, tx, Decimal("0.75")).status_code == 200  # releases 0.5, refunds 0.25
            done += 1
        return done

    def verifier() -> int:
        passes = 0
        while not stop.is_set() or passes < 3:
            reports.append(verify_store(store.redis, store.keys).problems)
            passes += 1
        return passes

    with ThreadPoolExecutor(max_workers=5) as pool:
        writers = [pool.submit(traffic, w) for w in range(4)]
        checking = pool.submit(verifier)
        threading.Timer(3.0, stop.set).start()
        moves = sum(w.result(timeout=DEADLINE) for w in writers)
        passes = checking.result(timeout=DEADLINE)
    assert moves > 20 and passes >= 3
    assert [p for p in reports if p] == []
