"""The v1 -> v2 migration (giftcard_provider/migration.py) on the committed v1 store (tests/fixtures/store-v1.json),
on one redis-server and on a Redis Cluster: afterwards every card answers as the v1 release recorded (balance,
GET card and transactions, code and owner search), verify is clean and the books are the sum of the cards. A
migration killed (SIGKILL) at any step resumes; cards v1 creates meanwhile are moved too; a rerun changes
nothing; --cleanup deletes what v1 left.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from giftcard_provider import create_app
from giftcard_provider.errors import StoreUnavailable
from giftcard_provider.keys import Keys, V1Keys, is_valid_card_id
from giftcard_provider.migration import MigrationError, cleanup, migrate

from .hub import Hub, body
from .ledger_edit import holds_of
from .snapshot import unchanged
from .store_fixture import (
    APP_KEY,
    APP_TOKEN,
    CODE_HASH_SECRET,
    api_view,
    fixture_settings,
    hub_headers,
    load_store_v1,
    operator_view,
    read_fixture,
    write_keys,
)

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = read_fixture()
CARDS = {card["label"]: card for card in DOCUMENT["metadata"]["cards"]}
PREFIX = DOCUMENT["metadata"]["settings"]["key_prefix"]
KEYS, V1 = Keys(PREFIX), V1Keys(PREFIX)
ROWS = {row["key"]: row for row in DOCUMENT["keys"]}


@pytest.fixture(params=["redis", "cluster"])
def kind(request):
    return request.param


@pytest.fixture
def v1_store(kind, request):
    """An empty Redis of each kind with the v1 fixture loaded."""
    client = request.getfixturevalue("real_redis" if kind == "redis" else "cluster_redis")
    load_store_v1(client)
    return client


@pytest.fixture
def server_url(kind, request) -> str:
    return request.getfixturevalue("redis_server" if kind == "redis" else "redis_cluster").url


def fixture_app(client):
    """Today's app on `client` with the fixture's settings (code searches not throttled): (app, store, hub)."""
    app = create_app(fixture_settings(code_lookup_limit=""), redis_client=client)
    app.config["TESTING"] = True
    return app, app.extensions["giftcard_provider"]["store"], Hub(app.test_client(), hub_headers())


def client_of(owner: str) -> dict:
    return {"id": owner, "email": owner if "@" in owner else None, "document": owner}


def expected_books(store, cards: dict, currency: str) -> dict[str, int]:
    """A currency's running totals as the v1 release's API views of its cards add up (minor units)."""
    totals = dict.fromkeys(("credited", "reversed", "authorized", "settled", "expired", "released+refunded"), 0)
    for card in cards.values():
        if card["currency"] != currency:
            continue
        exponent = store.card(card["id"]).exponent
        for view in card["api"]["transactions"]:
            tx = view["transaction"]

            def minor(records, exponent=exponent):
                return sum(int(Decimal(r["value"]).scaleb(exponent)) for r in records)

            # A release GET shows for a due hold no call has written yet is not in the books.
            due = [r for r in view["cancellations"] if r["oid"].endswith("-expired") and held(store, card, tx)]
            written = [r for r in view["cancellations"] if r not in due]
            if tx["operation"] == "Credit":
                totals["credited"] += minor([tx])
                totals["reversed"] += minor(written)
            else:
                totals["authorized"] += minor([tx])
                totals["settled"] += minor(view["settlements"])
                totals["released+refunded"] += minor(written)
                totals["expired"] += minor([r for r in written if r["oid"].endswith("-expired")])
    return totals


def held(store, card: dict, tx: dict) -> bool:
    return store.transaction(card["id"], tx["id"])[0].held > 0


def assert_migrated(client, cards: dict = CARDS) -> None:
    """The store is v2 and answers for every card as the v1 release recorded."""
    app, store, hub = fixture_app(client)
    assert client.get(KEYS.layout()) == "v2"
    report = store.verify()
    assert (report.checked, report.problems, report.unreachable) == (len(cards), [], [])
    read = {label: store.card(card["id"]) for label, card in cards.items()}
    books = store.books()
    assert set(books) == {card.currency for card in read.values()}
    for currency, book in books.items():
        mine = [card for card in read.values() if card.currency == currency]
        assert (book.cards, book.available, book.held) == (
            len(mine),
            sum(c.available for c in mine),
            sum(c.held for c in mine),
        ), currency
        assert book.problems() == [], currency
    assert {c: expected_books(store, cards, c) for c in books} == {
        c: {name: getattr(b, name) for name in ("credited", "reversed", "authorized", "settled", "expired")}
        | {"released+refunded": b.released + b.refunded}
        for c, b in books.items()
    }
    for label, card in cards.items():
        assert hub.balance(card["id"]) == Decimal(card["balance"]), label
        assert api_view(hub, card["id"]) == card["api"], label
        shown = operator_view(app, card["id"])
        assert {k: v for k, v in shown.items() if k in card["operator"]} == card["operator"], label
        assert shown["moving"] is False, label
        # Code search: any code finds its card in the index; search answers only the cards a shopper may use.
        assert store.find_by_code(card["code"]).id == card["id"], label
        found = body(hub.search(card["code"], client=client_of(card["profileId"])))
        assert [c["id"] for c in found] == ([card["id"]] if card["searchable"] else []), label
        # A v1 process still running reads the card frozen and refuses to change it.
        assert client.hget(V1.card(card["id"]), "movedTo") == "v2", label
    owners = defaultdict(list)
    for card in sorted(cards.values(), key=lambda c: c["operator"]["createdAt"]):
        owners[card["profileId"]].append(card)
    for owner, owned in owners.items():
        found = body(hub.search(None, client=client_of(owner)))
        assert [c["id"] for c in found] == [c["id"] for c in owned if c["searchable"]], owner
        assert [c["balance"] for c in found] == [Decimal(c["balance"]) for c in owned if c["searchable"]], owner


def test_migration_moves_every_card_as_v1_recorded(v1_store):
    _, store, _ = fixture_app(v1_store)
    events = []
    report = migrate(store, progress=events.append)
    assert report.ok, report.as_dict()
    assert (report.layout_before, report.layout_after) == (None, "v2")
    assert (report.cards, report.imported, report.already, report.vanished) == (len(CARDS), len(CARDS), 0, 0)
    assert (report.code_entries, report.owner_entries, report.skipped_entries) == (len(CARDS), len(CARDS), [])
    phases = [e.phase for e in events]
    assert phases.count("taken") == phases.count("imported") == len(CARDS)
    assert [(e.phase, e.note) for e in events if e.phase == "layout"] == [("layout", "migrating:0"), ("layout", "v2")]
    assert phases[-1] == "verify"
    assert_migrated(v1_store)

    # Each card's event log starts where v1's journal stopped: one "imported" event, seq after v1's.
    busy = CARDS["busy"]["id"]
    [imported] = store.journal(busy)
    v1_seq = int(ROWS[V1.card(busy)]["value"]["seq"])
    assert (imported.type, imported.seq, imported.amount) == ("imported", v1_seq + 1, 0)

    # Run again (every release's release phase does): it finished and verified, so nothing is read again.
    finished = int(v1_store.get(KEYS.migrated()))
    with unchanged(v1_store):
        again = migrate(store)
    assert again.ok and (again.imported, again.already, again.layout_before) == (0, 0, "v2")
    assert (again.finished_ms, again.verify) == (finished, None)


def test_requests_made_under_v1_replay_after_the_migration(real_redis):
    """Idempotency survives the move: every authorization, settlement and cancellation v1 recorded
    answers a repeat of its requestId with the original, and changes nothing."""
    load_store_v1(real_redis)
    _, store, hub = fixture_app(real_redis)
    assert migrate(store).ok
    replays = 0
    with unchanged(real_redis):
        for label, card in CARDS.items():
            cid, exponent = card["id"], int(ROWS[V1.card(card["id"])]["value"]["exponent"])
            for rid, made in ROWS.get(V1.requests(cid), {"value": {}})["value"].items():
                tx_id, operation, minor = made.split("|")
                response = hub.transaction(cid, operation, Decimal(minor).scaleb(-exponent), rid)
                assert response.status_code == 200, (label, response.get_data(as_text=True))
                assert body(response)["id"] == tx_id, label
                replays += 1
                tx_requests = V1.transaction_keys(cid, tx_id)[3]
                for name, record in ROWS.get(tx_requests, {"value": {}})["value"].items():
                    kind, op_rid = name.split(":", 1)
                    oid, op_minor, _ = record.split("|")
                    call = hub.settle if kind == "settlement" else hub.cancel
                    response = call(cid, tx_id, Decimal(op_minor).scaleb(-exponent), op_rid)
                    assert response.status_code == 200, (label, response.get_data(as_text=True))
                    assert body(response)["oid"] == oid, label
                    replays += 1
    assert replays > 100  # every card's requests, "|" in requestIds included (pipe-request-ids)


def test_a_due_hold_is_released_by_the_next_money_call_after_the_migration(real_redis):
    load_store_v1(real_redis)
    _, store, hub = fixture_app(real_redis)
    assert migrate(store).ok
    due = CARDS["hold-due-unwritten"]
    debit = due["api"]["transactions"][-1]["transaction"]["id"]
    card = store.card(due["id"])
    assert list(holds_of(store, due["id"])) == [debit]  # moved as v1 left it
    assert card.held == 3000 and card.due_holds == 3000
    expired_before = store.books()[due["currency"]].expired

    response = hub.transaction(due["id"], "Credit", Decimal("1"), "after-migration-credit", description=None)
    assert response.status_code == 200, response.get_data(as_text=True)

    card = store.card(due["id"])
    assert (card.held, holds_of(store, due["id"])) == (0, {})
    assert [e.type for e in store.journal(due["id"])] == ["imported", "expire", "credit"]
    assert hub.balance(due["id"]) == Decimal(due["balance"]) + 1
    view = api_view(hub, due["id"])  # the written release is the cancellation GET already reported
    assert view["transactions"][: len(due["api"]["transactions"])] == due["api"]["transactions"]
    assert store.verify().problems == []
    assert store.books()[due["currency"]].expired == expired_before + 3000
    assert store.expire_all_holds()["holdsReleased"] == 0  # no other hold was due


def test_a_v2_app_refuses_a_v1_store_until_it_is_migrated(real_redis):
    load_store_v1(real_redis)
    app, _, hub = fixture_app(real_redis)
    card = CARDS["loaded-brl"]
    with unchanged(real_redis):
        for response in (hub.get(f"/giftcards/{card['id']}"), hub.search(card["code"])):
            assert response.status_code == 503 and body(response)["code"] == "layout_unmigrated"
            assert "flask cards migrate" in body(response)["message"]
        ready = app.test_client().get("/ready")
        assert ready.status_code == 503 and "layout" in ready.json["reason"]


def test_a_store_of_an_unknown_layout_is_not_migrated(real_redis):
    load_store_v1(real_redis)
    real_redis.set(KEYS.layout(), "v3")
    _, store, _ = fixture_app(real_redis)
    with unchanged(real_redis), pytest.raises(StoreUnavailable) as refused:
        migrate(store)
    assert refused.value.code == "layout_unknown"


# -- killed and resumed ---------------------------------------------------------------

PAUSING_MIGRATION = """
import os, sys, time
from giftcard_provider import create_app
from giftcard_provider.migration import migrate
from tests.store_fixture import fixture_settings

phase, count = os.environ["PAUSE_AT"].rsplit(":", 1)
seen = 0

def progress(event):
    global seen
    if event.phase == phase:
        seen += 1
        if seen == int(count):
            print(f"paused {event.phase} {event.card_id} {event.done}", flush=True)
            time.sleep(60)  # killed before this ends

settings = fixture_settings(redis_url=os.environ["REDIS_URL"], redis_cluster=os.environ["REDIS_CLUSTER"] == "1")
migrate(create_app(settings).extensions["giftcard_provider"]["store"], progress=progress)
print("finished", flush=True)
"""


def cli_env(url: str, kind: str) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "APP_ENV": "development",
        "REDIS_URL": url,
        "REDIS_CLUSTER": "1" if kind == "cluster" else "0",
        "CODE_HASH_SECRET": CODE_HASH_SECRET,
        "PROVIDER_API_APP_KEY": APP_KEY,  # not the demo credentials: their warning would go to stdout
        "PROVIDER_API_APP_TOKEN": APP_TOKEN,
        "REDIS_KEY_PREFIX": PREFIX,
    }


def migrate_until_killed(url: str, kind: str, pause_at: str, while_paused=None) -> None:
    """Run the migration in another process, stop it at its `pause_at` ("phase:n", the n-th progress event
    of that phase), look at the store (while_paused), then SIGKILL it."""
    process = subprocess.Popen(
        [sys.executable, "-c", PAUSING_MIGRATION],
        cwd=ROOT,
        env={**cli_env(url, kind), "PAUSE_AT": pause_at},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        while line := process.stdout.readline():
            lines.append(line)
            if line.startswith(("paused", "finished")):
                break
        assert lines and lines[-1].startswith("paused"), lines
        if while_paused:
            while_paused(lines[-1].split())
    finally:
        process.kill()
        process.wait(10)
        process.stdout.close()
    assert process.returncode == -signal.SIGKILL


def migrate_by_cli(url: str, kind: str, *args: str) -> subprocess.CompletedProcess:
    """`flask --app wsgi cards migrate`, as the Procfile's release phase runs it."""
    return subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "cards", "migrate", *args],
        cwd=ROOT,
        env=cli_env(url, kind),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_migration_killed_at_any_step_resumes(real_redis, redis_server):
    load_store_v1(real_redis)
    hub = fixture_app(real_redis)[2]
    url = redis_server.url

    def between_mark_and_write(paused):
        _, _, card_id, done = paused
        assert done == "0"
        assert real_redis.get(KEYS.layout()) == "migrating:0"
        assert real_redis.hget(V1.card(card_id), "movedTo") == "v2"  # v1 refuses it from now on
        assert not real_redis.exists(KEYS.card(card_id))
        response = hub.get(f"/giftcards/{card_id}")
        assert response.status_code == 503 and body(response)["code"] == "layout_migrating"

    migrate_until_killed(url, "redis", "taken:1", between_mark_and_write)
    migrate_until_killed(url, "redis", "imported:12")  # the resumed run killed in its turn
    migrate_until_killed(url, "redis", "taken:20")
    migrate_until_killed(url, "redis", "indexes:1")  # after the index copy, before the rescan

    def marked_v2(paused):
        assert real_redis.get(KEYS.layout()) == "v2"
        assert hub.balance(CARDS["loaded-usd"]["id"]) == Decimal(CARDS["loaded-usd"]["balance"])  # v2 serves

    migrate_until_killed(url, "redis", "layout:2", marked_v2)  # the marker says v2: the final rescan is left
    resumed = migrate_by_cli(url, "redis", "--json")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert report["ok"] and (report["imported"], report["already"]) == (0, len(CARDS))
    assert report["verify"] == {"checked": len(CARDS), "problems": [], "unreachable": []}
    assert "migrate: verify" in resumed.stderr  # progress goes to stderr with --json
    assert_migrated(real_redis)


@pytest.mark.parametrize("pause_at", ["taken:5", "imported:30"])
def test_a_killed_migration_resumes_with_the_release_command(v1_store, server_url, kind, pause_at):
    migrate_until_killed(server_url, kind, pause_at)
    assert v1_store.get(KEYS.layout()) == "migrating:0"
    resumed = migrate_by_cli(server_url, kind)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    phase, n = pause_at.split(":")
    done_before = int(n) if phase == "imported" else int(n) - 1  # a card taken, not yet written, is taken again
    assert (
        f"migrate: layout migrating:0 -> v2: {len(CARDS)} v1 card(s), {len(CARDS) - done_before} moved now, "
        f"{done_before} moved before; {len(CARDS)} code and {len(CARDS)} owner index entries copied"
    ) in resumed.stdout
    assert_migrated(v1_store)


# -- v1 processes still running ---------------------------------------------------------


def held_back(label: str) -> list[dict]:
    """The fixture's rows of one card: its keys, its code index entry, its owner index set."""
    card = CARDS[label]
    rows = [row for key, row in ROWS.items() if V1.card_id_in(key) == card["id"]]
    rows += [row for key, row in ROWS.items() if V1.code_digest_in(key) and row["value"] == card["id"]]
    return [*rows, {**ROWS[V1.owner_index(card["profileId"])], "value": [card["id"]]}]


def without(client, label: str) -> None:
    """Take one card out of the loaded store, as if v1 had not created it yet."""
    card = CARDS[label]
    for row in held_back(label):
        if row["key"] == V1.owner_index(card["profileId"]):
            client.srem(row["key"], card["id"])
        else:
            client.delete(row["key"])


@pytest.mark.parametrize("created_at", ["indexes", "layout"])
def test_cards_v1_creates_during_the_migration_are_moved(v1_store, created_at):
    """A v1 process serves while the marker says migrating: a card it creates after the SCAN went past,
    and after the index copy, is found by the rescan; one whose creation read the marker just before it
    became v2 (so v1 kept it) by the rescan after."""
    late = "loaded-jpy"
    without(v1_store, late)
    _, store, _ = fixture_app(v1_store)

    def v1_creates(event):
        if event.phase == created_at and (created_at != "layout" or event.note == "v2"):
            write_keys(v1_store, held_back(late))

    report = migrate(store, progress=v1_creates)
    assert report.ok and report.cards == len(CARDS), report.as_dict()
    assert_migrated(v1_store)


def test_a_card_v1_withdraws_before_it_is_taken_is_left(real_redis):
    """v1 withdraws a card it could not index: gone between the SCAN and its mark, it is not moved, and
    the index entries that named it are reported, not copied."""
    load_store_v1(real_redis)
    _, store, _ = fixture_app(real_redis)
    gone = []

    def v1_withdraws(event):
        if event.phase == "taken" and not gone:  # the first card is taken: withdraw one not reached yet
            gone.extend(c for c in CARDS.values() if not real_redis.hexists(V1.card(c["id"]), "movedTo"))
            del gone[1:]
            real_redis.delete(V1.card(gone[0]["id"]))

    report = migrate(store, progress=v1_withdraws)
    assert report.ok and (report.vanished, report.imported) == (1, len(CARDS) - 1), report.as_dict()
    assert len(report.skipped_entries) == 2 and all(gone[0]["id"] in e for e in report.skipped_entries)
    assert_migrated(real_redis, {label: card for label, card in CARDS.items() if card is not gone[0]})


def test_a_card_that_cannot_be_read_stops_the_migration_short_of_v2(real_redis, redis_server):
    load_store_v1(real_redis)
    busy = CARDS["busy"]
    tx = busy["api"]["transactions"][0]["transaction"]["id"]
    real_redis.hset(V1.transaction(busy["id"], tx), "operation", "Refund")
    _, store, _ = fixture_app(real_redis)
    report = migrate(store)
    assert not report.ok and list(report.failed) == [busy["id"]]
    assert "operation 'Refund'" in report.failed[busy["id"]]
    assert report.layout_after == real_redis.get(KEYS.layout()) == f"migrating:{len(CARDS) - 1}"
    assert report.verify is None
    failed = migrate_by_cli(redis_server.url, "redis")
    assert failed.returncode == 1 and f"card {busy['id']}: unreadable v1 record" in failed.stderr

    real_redis.hset(V1.transaction(busy["id"], tx), "operation", "Credit")  # repaired by an operator
    again = migrate(store)
    assert again.ok and (again.imported, again.already) == (1, len(CARDS) - 1)
    assert_migrated(real_redis)


# -- cleanup ----------------------------------------------------------------------------


def v1_keys(client) -> list[str]:
    return sorted(
        key
        for key in client.scan_iter(count=1000)
        if is_valid_card_id(V1.card_id_in(key) or "") or V1.code_digest_in(key) or V1.owner_in(key) is not None
    )


def test_cleanup_deletes_what_v1_left_once_the_store_is_v2(v1_store):
    app, store, _ = fixture_app(v1_store)
    with pytest.raises(MigrationError, match="run `flask cards migrate` first"):
        cleanup(store)
    assert len(v1_keys(v1_store)) == len(DOCUMENT["keys"]) - 1  # all but the throttle's window
    late = "loaded-kwd"
    without(v1_store, late)
    assert migrate(store).ok
    write_keys(v1_store, held_back(late))  # a v1 card no migration has moved: kept, with the v1 indexes

    kept = cleanup(store)
    assert not kept.ok and kept.kept == [CARDS[late]["id"]]
    assert (kept.cards, kept.code_keys, kept.owner_keys) == (len(CARDS) - 1, 0, 0)
    assert V1.card(CARDS[late]["id"]) in v1_keys(v1_store)
    assert migrate(store).ok  # moves it

    result = app.test_cli_runner().invoke(args=["cards", "migrate", "--cleanup", "--json"])
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert done["ok"] and (done["cards"], done["codeKeys"], done["ownerKeys"]) == (1, len(CARDS), 5)
    assert v1_keys(v1_store) == []
    _, store, hub = fixture_app(v1_store)
    report = store.verify()
    assert (report.checked, report.problems) == (len(CARDS), [])
    for label, card in CARDS.items():
        assert api_view(hub, card["id"]) == card["api"], label
        assert store.find_by_code(card["code"]).id == card["id"], label
    with unchanged(v1_store):
        assert migrate(store).ok and cleanup(store).ok  # nothing left to move or delete
