"""The event log and the books: written by the same call as every change, read without the keyspace.

Every money movement, status change and creation appends an event to the card's bucket log, with
the card's balances after it; every movement keeps the books' running totals per currency. These
tests drive a card through every kind of change over the API and the CLI and check the log, the
books, the liability report, the gauges, the consumer cursor, retention, and that verify catches
books that drifted from the cards.
"""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

from giftcard_provider import create_app
from giftcard_provider.records import EVENT_DELTAS

from .conftest import make_settings
from .hub import Hub
from .ledger_edit import make_due
from .test_cli import cli, ok_json, store_of


def life(hub: Hub, store) -> tuple[str, str]:
    """A BRL card through every kind of movement, and a JPY card with one load. Returns their ids."""
    brl = hub.create_card(currencyCode="BRL")["id"]
    hub.credit(brl, Decimal("100.00"))
    loaded = hub.credit(brl, Decimal("5.00"))
    settled = hub.debit(brl, Decimal("30.00"))
    assert hub.settle(brl, settled, Decimal("20.00")).status_code == 200  # 10.00 still held
    assert hub.cancel(brl, settled, Decimal("15.00")).status_code == 200  # releases 10.00, refunds 5.00
    expired = hub.debit(brl, Decimal("7.00"))
    make_due(store, brl, expired)
    assert hub.cancel(brl, loaded, Decimal("2.00")).status_code == 200  # takes 2.00 of a Credit back out
    hub.debit(brl, Decimal("1.50"))  # still held
    jpy = hub.funded_card(Decimal("300"), currencyCode="JPY")["id"]
    return brl, jpy


def test_every_change_is_an_event_with_the_balances_after_it(app, hub, store):
    brl, jpy = life(hub, store)
    assert store.set_status(jpy, "blocked", "review")[0]
    events = [e for e in store.events({}) if e.card_id == brl]
    assert [(e.type, e.amount, e.available, e.held) for e in events] == [
        ("created", 0, 0, 0),
        ("credit", 10000, 10000, 0),
        ("credit", 500, 10500, 0),
        ("authorize", 3000, 7500, 3000),
        ("settle", 2000, 7500, 1000),
        ("release", 1000, 8500, 0),
        ("refund", 500, 9000, 0),
        ("authorize", 700, 8300, 700),
        ("expire", 700, 9000, 0),  # released by the next money call, before it
        ("reverse_credit", 200, 8800, 0),
        ("authorize", 150, 8650, 150),
    ]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert {e.currency for e in events} == {"BRL"} and all(e.bucket == brl[:2] for e in events)
    assert all(re.fullmatch(r"[0-9a-f]{2}-\d+-\d+", e.id) for e in events)
    assert len({e.id for e in events}) == len(events)
    statuses = [(e.type, e.ref, e.amount) for e in store.events({}) if e.card_id == jpy and e.type == "status"]
    assert statuses == [("status", "blocked", 0)]


def test_the_books_keep_the_totals_and_the_liability(app, hub, store):
    brl, _ = life(hub, store)
    books = store.books()
    assert set(books) == {"BRL", "JPY"}
    b = books["BRL"]
    assert (b.cards, b.credited, b.reversed, b.authorized, b.settled) == (1, 10500, 200, 3850, 2000)
    assert (b.released, b.expired, b.refunded) == (1700, 700, 500)
    card = store.card(brl)
    assert (b.available, b.held, b.liability) == (card.available, card.held, card.available + card.held)
    assert b.liability == 8800 and b.problems() == []
    assert (books["JPY"].cards, books["JPY"].liability) == (1, 300)

    report = ok_json(app, "books")
    assert report["currencies"]["BRL"]["liability"] == {"amount": "88.00", "amountMinor": 8800}
    assert report["currencies"]["BRL"]["cards"] == 1
    assert report["currencies"]["JPY"]["credited"] == {"amount": "300", "amountMinor": 300}
    text = cli(app, "books")
    assert text.exit_code == 0 and "BRL: liability 88.00 (1 card(s))" in text.output


def test_the_liability_is_a_gauge_per_currency(app, hub, store):
    life(hub, store)
    page = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'giftcard_books_liability{currency="BRL"} 8800.0' in page
    assert 'giftcard_books_liability{currency="JPY"} 300.0' in page
    assert 'giftcard_books_cards{currency="BRL"} 1.0' in page


def test_verify_catches_books_that_drifted_from_the_cards(app, hub, store):
    brl, _ = life(hub, store)
    key = store.keys.books(brl[:2])
    store.redis.hincrby(key, "BRL:available", 1)
    try:
        result = cli(app, "verify")
        assert result.exit_code == 1
        assert f"books {brl[:2]} BRL: available/held/cards 8651/150/1, the cards sum to 8650/150/1" in result.output
        assert "liability 8801 != credited 10500" in result.output
    finally:
        store.redis.hincrby(key, "BRL:available", -1)
    assert cli(app, "verify").exit_code == 0


def test_events_command_writes_ndjson_and_a_consumer_resumes_where_it_stopped(app, hub, store):
    brl, jpy = life(hub, store)
    first = cli(app, "events", "--consumer", "crm")
    assert first.exit_code == 0, first.output
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(lines) == 13 and {line["cardId"] for line in lines} == {brl, jpy}
    refund = next(line for line in lines if line["type"] == "refund")
    assert (refund["amount"], refund["amountMinor"], refund["availableAfter"], refund["currency"]) == (
        "5.00",
        500,
        "90.00",
        "BRL",
    )
    assert cli(app, "events", "--consumer", "crm").stdout == ""  # its cursor was saved

    hub.debit(jpy, Decimal("20"))
    (new,) = [json.loads(line) for line in cli(app, "events", "--consumer", "crm").stdout.splitlines()]
    assert (new["type"], new["cardId"], new["amount"], new["availableAfter"]) == ("authorize", jpy, "20", "280")
    everything = [json.loads(line)["id"] for line in cli(app, "events").stdout.splitlines()]
    assert len(everything) == 14 and len(set(everything)) == 14
    in_bucket = [i for i in everything if i.startswith(brl[:2] + "-")]
    after = cli(app, "events", "--since", in_bucket[2]).stdout.splitlines()
    assert [json.loads(line)["id"] for line in after if json.loads(line)["id"].startswith(brl[:2])] == in_bucket[3:]
    assert cli(app, "events", "--since", "2999-01-01").stdout == ""
    bad = cli(app, "events", "--since", "yesterday")
    assert bad.exit_code == 2 and "--since" in bad.output
    assert cli(app, "events", "--consumer", "no spaces").exit_code == 2


def test_retention_trims_old_events_and_verify_replays_from_the_first_kept(backend, hub, store):
    life(hub, store)
    trimming = create_app(make_settings(event_retention_max=4), redis_client=backend)
    trimmer = store_of(trimming)
    before = sum(1 for _ in trimmer.all_events())
    result = trimmer.expire_all_holds()
    assert result["eventsTrimmed"] == before - sum(1 for _ in trimmer.all_events()) > 0
    assert all(len(backend.xrange(trimmer.keys.events(b))) <= 4 for b in {e.bucket for e in trimmer.all_events()})
    assert trimmer.verify().problems == []


def test_a_card_history_in_the_show_command_includes_status_changes(app, hub, store):
    card = hub.funded_card(Decimal("5"), currencyCode="BRL")["id"]
    assert cli(app, "block", card, "--reason", "lost").exit_code == 0
    shown = ok_json(app, "show", card, "--entries", "10")
    assert [(e["kind"], e["amountMinor"]) for e in shown["journal"]] == [("created", 0), ("credit", 500), ("status", 0)]


def test_export_leaves_out_events_that_move_no_money(app, hub, store):
    card = hub.funded_card(Decimal("5"), currencyCode="BRL")["id"]
    assert cli(app, "block", card, "--reason", "lost").exit_code == 0
    result = app.test_cli_runner().invoke(args=["cards", "export"])
    kinds = [json.loads(line)["kind"] for line in result.stdout.splitlines()]
    assert kinds == ["credit"] and all(k in EVENT_DELTAS for k in kinds)


def test_the_liability_report_reads_the_same_whatever_the_number_of_cards(app, hub, store):
    """One round trip of 256 small reads: the books never walk the cards (bench.scaling times it)."""
    for _ in range(3):
        hub.funded_card(Decimal("1"), currencyCode="BRL")
    started = time.perf_counter()
    books = store.books()
    assert books["BRL"].cards == 3 and time.perf_counter() - started < 5
