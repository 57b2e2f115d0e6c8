"""The committed store of release v1 loads into an empty Redis (one server, a cluster) and today's app
reads it as the release that wrote it did: sound ledger, same balances and API answers, every code
finds its card, due holds released by the next money call.

A migration test loads the same fixture and then migrates it (tests/fixtures/README.md).
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from giftcard_provider import create_app
from giftcard_provider.keys import Keys
from giftcard_provider.verify import verify_all

from .hub import Hub, body
from .store_fixture import (
    FIXTURE,
    api_view,
    dump_store,
    fixture_settings,
    hub_headers,
    load_store_v1,
    operator_view,
    read_fixture,
)

DOCUMENT = read_fixture()
METADATA = DOCUMENT["metadata"]
CARDS = {card["label"]: card for card in METADATA["cards"]}
KEYS = Keys(METADATA["settings"]["key_prefix"])

# The states the fixture was asked to hold (the migration's test relies on each being there).
STATES = [
    "fresh-no-money",
    "loaded-brl",
    "loaded-usd",
    "loaded-jpy",
    "loaded-kwd",
    "debit-held",
    "debit-partly-settled",
    "debit-settled",
    "debit-settled-partly-refunded",
    "debit-released",
    "hold-expired-by-money-call",
    "hold-due-unwritten",
    "credit-settled",
    "credit-partly-reversed",
    "blocked-with-money",
    "deactivated-with-money-and-hold",
    "restricted-to-owner",
    "single-redemption",
    "single-credit",
    "client-id-owner",
    "busy",
    "pipe-request-ids",
    "described",
]


def test_fixture_holds_every_state_in_a_small_sorted_file():
    assert FIXTURE.stat().st_size < 1_000_000
    assert set(STATES) <= set(CARDS) and 30 <= len(CARDS) <= 40
    assert {card["currency"] for card in CARDS.values()} >= {"BRL", "USD", "JPY", "KWD"}
    assert {CARDS["blocked-with-money"]["status"], CARDS["deactivated-with-money-and-hold"]["status"]} == {
        "blocked",
        "inactive",
    }
    assert len(CARDS["busy"]["api"]["transactions"]) >= 30
    shared = [card for card in CARDS.values() if card["profileId"] == "maria.silva@example.com"]
    assert len(shared) >= 3
    names = [row["key"] for row in DOCUMENT["keys"]]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {row["type"] for row in DOCUMENT["keys"]} == {"string", "hash", "list", "set", "zset", "stream"}
    # Each card is stored whole: its card hash, and its code and owner index entries naming it.
    values = {row["key"]: row.get("value") for row in DOCUMENT["keys"]}
    for card in CARDS.values():
        assert KEYS.card(card["id"]) in names
        code_keys = [k for k, v in values.items() if k.startswith(KEYS.code_index("")) and v == card["id"]]
        assert len(code_keys) == 1, card["label"]
        assert card["id"] in values[KEYS.owner_index(card["profileId"])], card["label"]


@pytest.fixture(params=["redis", "cluster"])
def empty_redis(request):
    return request.getfixturevalue("real_redis" if request.param == "redis" else "cluster_redis")


@pytest.fixture
def loaded(empty_redis):
    """The fixture loaded, and today's app on it with the fixture's settings (code searches not throttled)."""
    metadata = load_store_v1(empty_redis)
    app = create_app(fixture_settings(code_lookup_limit=""), redis_client=empty_redis)
    app.config["TESTING"] = True
    return empty_redis, metadata, app, Hub(app.test_client(), hub_headers())


def test_loading_restores_every_key_exactly(loaded):
    client, metadata, _, _ = loaded
    assert metadata == METADATA
    restored = {row["key"]: row for row in dump_store(client)}
    assert restored.keys() == {row["key"] for row in DOCUMENT["keys"]}
    for row in DOCUMENT["keys"]:
        again = restored[row["key"]]
        assert (again["type"], again["value"], again.get("last_id")) == (row["type"], row["value"], row.get("last_id"))
        if row["ttl_ms"] is None:
            assert again["ttl_ms"] is None, row["key"]
        else:  # running since the load: never longer than recorded
            assert 0 < again["ttl_ms"] <= row["ttl_ms"], row["key"]


def test_load_refuses_a_redis_that_has_keys(empty_redis):
    empty_redis.set("someone-else", "1")
    with pytest.raises(RuntimeError, match="empty"):
        load_store_v1(empty_redis)


def test_todays_app_reads_the_store_as_recorded(loaded):
    client, _, app, hub = loaded
    checked, problems = verify_all(client, KEYS)
    assert (checked, problems) == (len(CARDS), [])
    for label, card in CARDS.items():
        assert body(hub.get(f"/giftcards/{card['id']}"))["balance"] == Decimal(card["balance"]), label
        assert api_view(hub, card["id"]) == card["api"], label
        shown = operator_view(app, card["id"])
        # Every field the v1 release showed, with the same value; fields added since (e.g. "moving") may follow.
        assert {k: v for k, v in shown.items() if k in card["operator"]} == card["operator"], label
        assert shown.get("moving", False) is False, label


def test_every_recorded_code_finds_its_card(loaded):
    _, _, app, hub = loaded
    store = app.extensions["giftcard_provider"]["store"]
    for label, card in CARDS.items():
        # Any code finds its card in the index; search answers only the cards a shopper may use.
        assert store.find_by_code(card["code"]).id == card["id"], label
        owner = card["profileId"]
        client = {"id": owner, "email": owner if "@" in owner else None, "document": owner}
        found = body(hub.search(card["code"], client=client))
        if card["searchable"]:
            assert [c["id"] for c in found] == [card["id"]], label
            assert found[0]["balance"] == Decimal(card["balance"]), label
        else:
            assert found == [], label
    assert {label for label, card in CARDS.items() if not card["searchable"]} == {
        "fresh-no-money",
        "blocked-with-money",
        "deactivated-with-money-and-hold",
        "shared-owner-empty",
        "shared-owner-spent",
    }


def _journal_kinds(client, card_id: str) -> list[str]:
    return [fields["kind"] for _, fields in client.xrange(KEYS.journal(card_id))]


def test_due_hold_is_released_by_the_next_money_call(loaded):
    client, _, app, hub = loaded
    due = CARDS["hold-due-unwritten"]
    debit = due["api"]["transactions"][-1]
    deadline = int(client.zscore(KEYS.holds(due["id"]), debit["transaction"]["id"]))
    assert deadline < time.time() * 1000  # due, yet still held in the store
    assert client.hget(KEYS.card(due["id"]), "held") == "3000"
    assert "expire" not in _journal_kinds(client, due["id"])
    # The expired card's release was written while the fixture was made: its journal says so.
    expired = CARDS["hold-expired-by-money-call"]
    assert _journal_kinds(client, expired["id"]) == ["credit", "authorize", "expire", "credit"]
    assert [c["oid"] for c in expired["api"]["transactions"][1]["cancellations"]] == [
        expired["api"]["transactions"][1]["transaction"]["id"] + "-expired"
    ]

    response = hub.transaction(due["id"], "Credit", Decimal("1"), "after-load-credit", description=None)
    assert response.status_code == 200, response.get_data(as_text=True)

    assert client.hget(KEYS.card(due["id"]), "held") == "0"
    assert not client.exists(KEYS.holds(due["id"]))
    assert _journal_kinds(client, due["id"]) == ["credit", "authorize", "expire", "credit"]
    assert body(hub.get(f"/giftcards/{due['id']}"))["balance"] == Decimal(due["balance"]) + 1
    # The written release is the cancellation GET already reported.
    view = api_view(hub, due["id"])
    assert view["transactions"][: len(due["api"]["transactions"])] == due["api"]["transactions"]
    assert verify_all(client, KEYS) == (len(CARDS), [])
    # No other hold was due: a sweep now releases nothing.
    assert app.extensions["giftcard_provider"]["store"].expire_all_holds()["holdsReleased"] == 0
