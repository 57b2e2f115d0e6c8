"""Finance reports (`flask cards report ...`, reports.py): liability now and at a past time, breakage,
expiring cards, activity; their table, CSV and JSON output; refusals when retention trimmed the log.

Everything that reads the ledger runs on a real redis-server and on a 3-primary Redis Cluster, with
currencies of three exponents (BRL 2, JPY 0, KWD 3), and checks money to the minor unit. The pure
functions are also checked on hand-made records, where a test needs days or events Redis cannot make
on demand (an import, a discarded card, several days of activity).
"""

from __future__ import annotations

import csv
import io
import json
import stat
import threading
import time
from decimal import Decimal

import pytest

from giftcard_provider import create_app, reports
from giftcard_provider.keys import Keys
from giftcard_provider.money import Amount
from giftcard_provider.records import Card, Event, LogBounds
from giftcard_provider.verify import verify_all
from schemas.common import iso_ms

from .conftest import make_settings
from .ledger_edit import edit_card, make_due
from .test_cli import cli, store_of

DAY = reports.DAY_MS


@pytest.fixture(params=["redis", "cluster"])
def backend(request, settings):
    """Real Redis only (the reports read XINFO STREAM, which fakeredis does not answer as Redis 7 does);
    the ledger must verify after every test, as in conftest."""
    client = request.getfixturevalue("real_redis" if request.param == "redis" else "cluster_redis")
    yield client
    checked, problems = verify_all(client, Keys(settings.key_prefix))
    assert problems == [], f"ledger verification failed after the test ({checked} cards)"


def report(app, *args: str):
    return cli(app, "report", *args)


def report_json(app, *args: str) -> dict:
    result = report(app, *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def by_currency(document: dict) -> dict[str, dict]:
    return {row["currency"]: row for row in document["rows"]}


def wait_past(store, ms: int) -> None:
    """Until Redis's clock is at `ms` or later: every event written from then on is dated `ms` or later."""
    while store.now_ms() < ms:
        time.sleep(0.002)


def cut(store) -> int:
    """A time that splits the events: every event so far is before it, every later one at or after it."""
    at = store.now_ms() + 1
    wait_past(store, at)
    return at


def three_currencies(hub) -> dict[str, str]:
    """Cards in BRL (2 decimals), JPY (0) and KWD (3), loaded with amounts that use every decimal."""
    return {
        "BRL": hub.funded_card(Decimal("100.05"), currencyCode="BRL")["id"],
        "JPY": hub.funded_card(Decimal("1500"), currencyCode="JPY")["id"],
        "KWD": hub.funded_card(Decimal("1.234"), currencyCode="KWD")["id"],
    }


# -- liability -------------------------------------------------------------------------------------


def test_liability_now_is_the_books_in_exact_money(app, hub, store):
    cards = three_currencies(hub)
    hub.debit(cards["BRL"], Decimal("30.01"))  # held: still owed
    rows = by_currency(report_json(app, "liability"))
    assert set(rows) == {"BRL", "JPY", "KWD"}
    brl = rows["BRL"]
    assert (brl["liability"], brl["liabilityMinor"], brl["available"], brl["held"]) == (
        "100.05",
        10005,
        "70.04",
        "30.01",
    )
    assert (rows["JPY"]["liability"], rows["JPY"]["liabilityMinor"]) == ("1500", 1500)
    assert (rows["KWD"]["liability"], rows["KWD"]["liabilityMinor"], rows["KWD"]["cards"]) == ("1.234", 1234, 1)
    books = store.books()
    assert {c: r["liabilityMinor"] for c, r in rows.items()} == {c: b.liability for c, b in books.items()}

    text = report(app, "liability")
    assert text.exit_code == 0, text.output
    assert "(from the books)" in text.stdout
    assert any(line.split() == ["KWD", "1", "1.234", "1.234", "0.000"] for line in text.stdout.splitlines())


def test_liability_as_of_a_past_time_is_the_books_at_that_time(app, hub, store):
    """Books read at a time T, then every kind of movement; the report as of T gives the books of T."""
    cards = three_currencies(hub)
    open_debit = hub.debit(cards["BRL"], Decimal("30.00"))
    loaded = hub.credit(cards["KWD"], Decimal("0.500"))
    then = store.books()
    as_of = cut(store)

    assert hub.settle(cards["BRL"], open_debit, Decimal("20.00")).status_code == 200
    assert hub.cancel(cards["BRL"], open_debit, Decimal("15.00")).status_code == 200  # release 10, refund 5
    expiring = hub.debit(cards["JPY"], Decimal("700"))
    make_due(store, cards["JPY"], expiring)
    hub.credit(cards["JPY"], Decimal("1"))  # releases the due hold first (an expire event)
    assert hub.cancel(cards["KWD"], loaded, Decimal("0.250")).status_code == 200  # a Credit taken back
    hub.funded_card(Decimal("9.999"), currencyCode="KWD")  # a card created since
    assert store.set_status(cards["JPY"], "blocked", "audit")[0]
    now = store.books()
    assert now["BRL"].liability != then["BRL"].liability and now["KWD"].cards == 2

    past = report_json(app, "liability", "--as-of", iso_ms(as_of))
    assert past["source"] == "events" and past["asOf"] == iso_ms(as_of) and past["eventsRead"] >= 9
    rows = by_currency(past)
    for currency, book in then.items():
        row = rows[currency]
        assert (row["cards"], row["availableMinor"], row["heldMinor"], row["liabilityMinor"]) == (
            book.cards,
            book.available,
            book.held,
            book.liability,
        ), currency
    assert (rows["KWD"]["liability"], rows["BRL"]["held"]) == ("1.734", "30.00")

    # As of now, the log gives the books exactly: nothing is undone.
    current = report_json(app, "liability", "--as-of", iso_ms(cut(store)))
    assert current["eventsRead"] == 0
    assert {c: (r["cards"], r["availableMinor"], r["heldMinor"]) for c, r in by_currency(current).items()} == {
        c: (b.cards, b.available, b.held) for c, b in store.books().items()
    }
    # Before the first card, nothing was owed.
    assert report_json(app, "liability", "--as-of", "2020-01-01")["rows"] == []


def test_a_past_liability_holds_while_cards_keep_moving(app, hub, store):
    """The books and the log position they stand for are read together, so a report taken while
    credits land (each changes the books and appends its event) still gives the books of its time."""
    cards = three_currencies(hub)
    then = store.books()
    as_of = cut(store)
    stop = threading.Event()

    def keep_crediting():
        amounts = {"BRL": "0.01", "JPY": "1", "KWD": "0.001"}
        n = 0
        while not stop.is_set():
            for currency, card_id in cards.items():
                amount = Amount.from_decimal(Decimal(amounts[currency]))
                store.authorize(card_id, operation="Credit", amount=amount, request_id=f"busy-{n}", token="")
                n += 1

    writer = threading.Thread(target=keep_crediting)
    writer.start()
    try:
        results = [reports.liability_as_of(store, as_of) for _ in range(5)]
    finally:
        stop.set()
        writer.join()
    assert store.books()["JPY"].liability > then["JPY"].liability  # the writer did write meanwhile
    for result in results:
        assert {r.currency: (r.cards, r.available, r.held) for r in result.rows} == {
            c: (b.cards, b.available, b.held) for c, b in then.items()
        }


def test_the_whole_log_replayed_forward_gives_the_books(app, hub, store):
    """liability_change, summed over every event from the start, equals the books: the table of what
    each event does is the ledger's."""
    cards = three_currencies(hub)
    debit = hub.debit(cards["BRL"], Decimal("12.34"))
    assert hub.settle(cards["BRL"], debit, Decimal("2.34")).status_code == 200
    assert hub.cancel(cards["BRL"], debit, Decimal("5.00")).status_code == 200
    assert store.set_status(cards["KWD"], "blocked", "lost")[0]
    totals: dict[str, reports.Liability] = {}
    count = reports.undo(totals, store.all_events())
    assert count > 0
    books = store.books()
    assert {c: (-r.cards, -r.available, -r.held) for c, r in totals.items()} == {
        c: (b.cards, b.available, b.held) for c, b in books.items()
    }


def test_a_time_retention_trimmed_is_refused_and_a_later_one_answered(app, backend, hub, store):
    cards = three_currencies(hub)
    early = cut(store)
    for _ in range(3):
        hub.credit(cards["BRL"], Decimal("1.00"))
    later = cut(store)
    hub.credit(cards["BRL"], Decimal("2.00"))
    trimming = create_app(make_settings(event_retention_max=2), redis_client=backend)
    assert store_of(trimming).expire_all_holds()["eventsTrimmed"] > 0

    refused = report(app, "liability", "--as-of", iso_ms(early))
    assert refused.exit_code == 1
    assert "no longer holds every event since" in refused.output and "retention" in refused.output
    assert "the earliest time this report can start from is" in refused.output
    assert refused.stdout == ""
    activity = report(app, "activity", "--since", iso_ms(early))
    assert activity.exit_code == 1 and "no longer holds every event" in activity.output

    # The BRL card's bucket kept its last two events (both after `later`); the others kept theirs
    # whole unless they shared the bucket. The earliest answerable time is what the refusal said.
    earliest = max(ms for ms in (lb.complete_from_ms for lb in store.log_bounds().values()) if ms is not None)
    assert iso_ms(earliest) in refused.output
    if earliest <= later:
        rows = by_currency(report_json(app, "liability", "--as-of", iso_ms(later)))
        assert rows["BRL"]["liabilityMinor"] == 10005 + 300


# -- breakage and expiring cards -------------------------------------------------------------------


def test_breakage_per_currency_and_month_of_expiry(app, hub, store):
    cards = three_currencies(hub)
    spare = hub.funded_card(Decimal("0.10"), currencyCode="BRL")["id"]
    held = hub.debit(cards["BRL"], Decimal("0.05"))  # taken before the expiry: may still settle
    empty = hub.create_card(currencyCode="JPY")["id"]  # expired with nothing on it: no breakage
    hub.funded_card(Decimal("5"), currencyCode="JPY")  # not expired
    march, april = 1_772_323_200_000, 1_775_001_600_000  # 2026-03-01, 2026-04-01 (UTC)
    edit_card(store, cards["BRL"], expiring_ms=march + 5 * DAY)
    edit_card(store, spare, expiring_ms=march + 20 * DAY)
    edit_card(store, cards["JPY"], expiring_ms=april)
    edit_card(store, cards["KWD"], expiring_ms=april + DAY)
    edit_card(store, empty, expiring_ms=april)

    document = report_json(app, "breakage")
    rows = [
        (r["month"], r["currency"], r["cards"], r["balance"], r["balanceMinor"], r["held"]) for r in document["rows"]
    ]
    assert rows == [
        ("2026-03", "BRL", 2, "100.10", 10010, "0.05"),
        ("2026-04", "JPY", 1, "1500", 1500, "0"),
        ("2026-04", "KWD", 1, "1.234", 1234, "0.000"),
    ]
    assert held and document["asOf"].endswith("Z")

    text = report(app, "breakage")
    assert text.exit_code == 0, text.output
    assert "BRL: 2 card(s), balance 100.10, held 0.05" in text.stdout
    assert "reading cards" in text.stderr  # the progress bar's label (stderr is not a terminal here)


def test_expiring_cards_soonest_first_with_owner_and_balance(app, hub, store):
    now = store.now_ms()

    def card(currency: str, amount: str, days: float, owner: str) -> str:
        made = hub.create_card(currencyCode=currency, profileId=owner, relationName="loyalty")["id"]
        if amount:
            hub.credit(made, Decimal(amount))
        edit_card(store, made, expiring_ms=now + int(days * DAY))
        return made

    soon = card("KWD", "0.001", 2.5, "ana@example.com")
    later = card("BRL", "12.30", 20, "bo@example.com")
    card("JPY", "300", 45, "late@example.com")  # beyond 30 days
    card("BRL", "", 3, "empty@example.com")  # nothing to spend
    blocked = card("BRL", "1.00", 4, "blocked@example.com")
    assert store.set_status(blocked, "blocked", "fraud review")[0]
    card("BRL", "1.00", -1, "gone@example.com")  # already expired: breakage, not a reminder

    document = report_json(app, "expiring", "--days", "30")
    assert document["days"] == 30
    assert [
        (r["cardId"], r["profileId"], r["balance"], r["balanceMinor"], r["daysLeft"]) for r in document["rows"]
    ] == [
        (soon, "ana@example.com", "0.001", 1, 2),
        (later, "bo@example.com", "12.30", 1230, 19),
    ]
    assert document["rows"][0]["relationName"] == "loyalty"
    assert [r["cardId"] for r in report_json(app, "expiring", "--days", "3")["rows"]] == [soon]


# -- activity --------------------------------------------------------------------------------------


def test_activity_per_day_and_kind_over_a_period(app, hub, store):
    before = three_currencies(hub)
    since = cut(store)
    debit = hub.debit(before["BRL"], Decimal("10.00"))
    assert hub.settle(before["BRL"], debit, Decimal("4.00")).status_code == 200
    assert hub.cancel(before["BRL"], debit, Decimal("7.50")).status_code == 200  # release 6.00, refund 1.50
    hub.credit(before["KWD"], Decimal("0.005"))
    hub.credit(before["KWD"], Decimal("0.010"))
    expiring = hub.debit(before["JPY"], Decimal("99"))
    make_due(store, before["JPY"], expiring)
    assert store.expire_all_holds()["holdsReleased"] == 1
    until = cut(store)
    hub.credit(before["KWD"], Decimal("1"))  # after the period

    document = report_json(app, "activity", "--since", iso_ms(since), "--until", iso_ms(until))
    assert (document["since"], document["until"], document["eventsRead"]) == (iso_ms(since), iso_ms(until), 8)
    day = reports.utc_day(since)
    rows = {(r["day"], r["currency"], r["kind"]): (r["count"], r["amount"], r["amountMinor"]) for r in document["rows"]}
    if reports.utc_day(until) == day:  # the period did not cross midnight (UTC)
        assert rows == {
            (day, "BRL", "authorize"): (1, "10.00", 1000),
            (day, "BRL", "settle"): (1, "4.00", 400),
            (day, "BRL", "release"): (1, "6.00", 600),
            (day, "BRL", "refund"): (1, "1.50", 150),
            (day, "KWD", "credit"): (2, "0.015", 15),
            (day, "JPY", "authorize"): (1, "99", 99),
            (day, "JPY", "expire"): (1, "99", 99),
        }
    everything = report_json(app, "activity", "--since", "2020-01-01")
    assert everything["eventsRead"] == sum(1 for _ in store.all_events())
    kinds = {r["kind"] for r in everything["rows"]}
    assert {"created", "credit", "authorize", "settle", "release", "refund", "expire"} <= kinds


def test_activity_tally_splits_days_and_currencies():
    def event(ms: int, kind: str, amount: int, currency: str = "BRL") -> Event:
        return Event("ab", f"{ms}-0", kind, "c" * 32, "t", "r", amount, 0, 0, 1, currency)

    tally = reports.ActivityTally()
    day1, day2 = 1_795_824_000_000, 1_795_824_000_000 + DAY  # 2026-11-28 and 2026-11-29 at 00:00 UTC
    for e in (event(day1, "credit", 100), event(day2 - 1, "credit", 5), event(day2, "credit", 7),
              event(day2, "credit", 1, "JPY"), event(day2, "created", 0)):  # fmt: skip
        tally.add(e)
    assert [(r.day, r.currency, r.kind, r.count, r.amount) for r in tally.rows()] == [
        ("2026-11-28", "BRL", "credit", 2, 105),
        ("2026-11-29", "BRL", "created", 1, 0),
        ("2026-11-29", "BRL", "credit", 1, 7),
        ("2026-11-29", "JPY", "credit", 1, 1),
    ]
    assert tally.events == 5


# -- output formats and bad input ------------------------------------------------------------------


def test_csv_and_json_have_the_same_rows_and_a_file_is_written_whole(app, hub, store, tmp_path):
    three_currencies(hub)
    as_csv = report(app, "liability", "--format", "csv")
    assert as_csv.exit_code == 0, as_csv.output
    parsed = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(parsed[0]) == [
        "asOf", "currency", "cards", "liability", "liabilityMinor", "available", "availableMinor", "held", "heldMinor",
    ]  # fmt: skip
    as_json = report_json(app, "liability")
    assert set(as_json) == {"report", "asOf", "source", "eventsRead", "rows"} and as_json["report"] == "liability"
    keep = ("currency", "cards", "liability", "liabilityMinor")
    assert [{k: str(r[k]) for k in keep} for r in as_json["rows"]] == [{k: r[k] for k in keep} for r in parsed]
    assert [r["liability"] for r in parsed] == ["100.05", "1500", "1.234"]

    path = tmp_path / "activity.csv"
    written = report(app, "activity", "--format", "csv", "--output", str(path))
    assert written.exit_code == 0 and written.stdout == "" and f"wrote {path}" in written.stderr
    with path.open(newline="") as f:
        lines = list(csv.DictReader(f))
    assert list(lines[0]) == ["day", "currency", "kind", "count", "amount", "amountMinor"]
    assert {(r["currency"], r["kind"], r["count"], r["amount"]) for r in lines} >= {
        ("BRL", "credit", "1", "100.05"),
        ("JPY", "credit", "1", "1500"),
        ("KWD", "credit", "1", "1.234"),
    }
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind

    empty = report(app, "expiring", "--format", "csv")
    assert empty.exit_code == 0 and empty.stdout.splitlines() == [
        "cardId,profileId,relationName,currency,balance,balanceMinor,expiringDate,daysLeft"
    ]


def test_an_output_file_that_cannot_be_written_is_refused_before_the_report_runs(app, hub, tmp_path):
    hub.funded_card(Decimal("5"), currencyCode="BRL")
    missing = tmp_path / "no-such-dir" / "activity.csv"
    result = report(app, "activity", "--format", "csv", "--output", str(missing))
    assert result.exit_code == 2, result.output
    assert "--output" in result.output and "cannot write a file in" in result.output
    assert "No such file or directory" in result.output and "Traceback" not in result.output
    assert "reading the event log" not in result.stderr  # refused before the walk began
    assert not missing.parent.exists()

    # A new file is its owner's only (the expiring report names owners); a file that exists keeps
    # the mode its operator gave it.
    path = tmp_path / "liability.json"
    assert report(app, "liability", "--format", "json", "--output", str(path)).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o640)
    assert report(app, "liability", "--format", "json", "--output", str(path)).exit_code == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640 and json.loads(path.read_text())["report"] == "liability"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["liability.json"]  # no temporary file left


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("liability", "--as-of", "last tuesday"), "not an ISO 8601 date"),
        (("liability", "--as-of", "2999-01-01"), "is in the future"),
        (("activity", "--since", "2026-13-01"), "not an ISO 8601 date"),
        (("activity", "--since", "2026-11-02", "--until", "2026-11-01"), "must be before --until"),
        (("expiring", "--days", "-3"), "-3 is not in the range x>=1"),
        (("expiring", "--days", "0"), "0 is not in the range x>=1"),
        (("breakage", "--format", "xml"), "'xml' is not one of"),
    ],
)
def test_bad_input_is_a_usage_error(app, args, says, tmp_path):
    target = tmp_path / "never.csv"
    result = report(app, *args, "--output", str(target))
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not target.exists()


# -- the log's bounds and what each event does -----------------------------------------------------


def test_log_bounds_say_from_when_the_log_is_whole():
    def bounds(length, added, first, last):
        reply = {"length": length, "entries-added": added, "last-generated-id": last}
        reply["first-entry"] = (first, {}) if first else None
        return LogBounds.from_xinfo(reply)

    assert bounds(3, 3, "100-0", "102-0").complete_from_ms == 0  # never trimmed
    assert bounds(2, 5, "104-1", "105-0").complete_from_ms == 105  # events up to 104-0 may be gone
    assert bounds(0, 5, None, "105-3").complete_from_ms == 106  # everything trimmed
    assert bounds(0, 0, None, "0-0").complete_from_ms == 0
    assert (
        LogBounds.from_xinfo({"length": 1, "last-generated-id": "9-0", "first-entry": ("9-0", {})}).complete_from_ms
        is None
    )
    with pytest.raises(reports.RetentionGap, match="Redis 7 is needed"):
        reports.check_complete(50, {"ab": LogBounds(1, None, "9-0", "9-0")})


def test_what_each_event_does_to_the_liability():
    def event(kind: str, amount: int = 0, available: int = 0, held: int = 0) -> Event:
        return Event("ab", "1-0", kind, "c" * 32, "", "", amount, available, held, 1, "KWD")

    assert reports.liability_change(event("imported", available=1234, held=5)) == (1, 1234, 5)
    assert reports.liability_change(event("discarded")) == (-1, 0, 0)
    assert reports.liability_change(event("authorize", 7)) == (0, -7, 7)
    assert reports.liability_change(event("settle_credit", 7)) == (0, 0, 0)
    with pytest.raises(Exception, match="cannot undo it"):
        reports.liability_change(event("mystery"))


def test_breakage_and_expiring_judge_each_card_by_its_own_read():
    def card(expiring_ms: int, available: int, held: int = 0, due: int = 0, status: str = "active") -> Card:
        fields = {"cur": "BRL", "exp": "2", "st": status, "at": "0", "to": str(expiring_ms), "av": str(available),
                  "hd": str(held)}  # fmt: skip
        return Card.from_hash("a" * 32, fields, due_holds=due, now_ms=10 * DAY)

    # A hold past its deadline is balance (it can no longer be settled), as the card reads it.
    rows = reports.breakage_rows([card(DAY, 100, held=50, due=20), card(10 * DAY, 1), card(11 * DAY, 5)])
    assert [(r.month, r.cards, r.balance, r.held) for r in rows] == [("1970-01", 2, 121, 30)]
    soon = reports.expiring_rows([card(10 * DAY + 1, 5), card(11 * DAY, 5, status="blocked"), card(12 * DAY, 0)], 30)
    assert [(e.balance, e.days_left) for e in soon] == [(5, 0)]
