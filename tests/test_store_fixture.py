"""The committed store of release v1 (tests/fixtures/store-v1.json) is what its description says: every
state it lists, each card's keys, code and owner index entries and journal as v1 wrote them, loading back
exactly into an empty Redis (one server, a cluster).

This release serves layout v2 only: tests/test_migration.py migrates the loaded fixture and checks that
every card then answers through the API as the metadata records (balances, API views, code and owner
search, a due hold released by the next money call). Here the fixture is read as raw v1 keys.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from decimal import Decimal

import pytest

from giftcard_provider.codes import normalise
from giftcard_provider.keys import V1Keys

from .store_fixture import CODE_HASH_SECRET, FIXTURE, dump_store, load_store_v1, read_fixture

DOCUMENT = read_fixture()
METADATA = DOCUMENT["metadata"]
CARDS = {card["label"]: card for card in METADATA["cards"]}
KEYS = V1Keys(METADATA["settings"]["key_prefix"])  # the layout v1 wrote
VALUES = {row["key"]: row["value"] for row in DOCUMENT["keys"]}

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
    """The fixture loaded: (client, metadata)."""
    return empty_redis, load_store_v1(empty_redis)


def test_loading_restores_every_key_exactly(loaded):
    client, metadata = loaded
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


def _v1_card(card_id: str) -> dict[str, str]:
    return VALUES[KEYS.card(card_id)]


def _journal_kinds(card_id: str) -> list[str]:
    return [dict(entry["fields"])["kind"] for entry in VALUES.get(KEYS.journal(card_id), [])]


def test_each_cards_v1_records_are_what_its_metadata_says():
    """Currency, owner, status, balance (holds past their deadline counted as released, as GET did),
    transactions in order, and the code: its HMAC names the card in the v1 code index."""
    now_ms = time.time() * 1000
    for label, card in CARDS.items():
        fields = _v1_card(card["id"])
        assert (fields["id"], fields["currency"], fields["profileId"], fields["status"]) == (
            card["id"],
            card["currency"],
            card["profileId"],
            card["status"],
        ), label
        holds = VALUES.get(KEYS.holds(card["id"]), [])
        due = sum(int(VALUES[KEYS.transaction(card["id"], tx)]["held"]) for tx, deadline in holds
                  if float(deadline) <= now_ms)  # fmt: skip
        balance = Decimal(int(fields["available"]) + due).scaleb(-int(fields["exponent"]))
        assert balance == Decimal(card["balance"]), label
        listed = [view["transaction"]["id"] for view in card["api"]["transactions"]]
        assert VALUES.get(KEYS.transactions(card["id"]), []) == listed, label
        for view in card["api"]["transactions"]:
            tx = VALUES[KEYS.transaction(card["id"], view["transaction"]["id"])]
            assert (tx["operation"], tx["requestId"]) == (view["transaction"]["operation"],
                                                         view["transaction"]["requestId"]), label  # fmt: skip
        digest = hmac.new(CODE_HASH_SECRET.encode(), normalise(card["code"]).encode(), hashlib.sha256).hexdigest()
        assert fields["codeDigest"] == digest and VALUES[KEYS.code_index(digest)] == card["id"], label
        assert card["code"].replace("-", "")[-4:] == fields["codeLast4"], label


def test_the_due_hold_is_still_held_and_the_expired_one_was_released():
    due = CARDS["hold-due-unwritten"]
    debit = due["api"]["transactions"][-1]
    holds = dict(VALUES[KEYS.holds(due["id"])])
    assert float(holds[debit["transaction"]["id"]]) < time.time() * 1000  # due, yet still held in the store
    assert _v1_card(due["id"])["held"] == "3000"
    assert "expire" not in _journal_kinds(due["id"])
    assert [c["oid"] for c in debit["cancellations"]] == [debit["transaction"]["id"] + "-expired"]  # as GET said
    # The expired card's release was written while the fixture was made: its journal says so.
    expired = CARDS["hold-expired-by-money-call"]
    assert _journal_kinds(expired["id"]) == ["credit", "authorize", "expire", "credit"]
    assert [c["oid"] for c in expired["api"]["transactions"][1]["cancellations"]] == [
        expired["api"]["transactions"][1]["transaction"]["id"] + "-expired"
    ]
    assert KEYS.holds(expired["id"]) not in VALUES


def test_searchable_is_what_search_could_answer():
    """Search shows a card only if it is active, in its window and has money: the fixture's `searchable`."""
    assert {label for label, card in CARDS.items() if not card["searchable"]} == {
        "fresh-no-money",
        "blocked-with-money",
        "deactivated-with-money-and-hold",
        "shared-owner-empty",
        "shared-owner-spent",
    }
    for label, card in CARDS.items():
        if card["searchable"]:
            assert card["status"] == "active" and Decimal(card["balance"]) > 0, label
