"""This release's guards around layout upgrades: it serves only a store of its own layout (v2), and it
changes nothing on a card that a later layout's migration is moving, saying so with a 503.

The layout marker (``gc:layout``, keys.py) says which layout a store holds. A v1 store (no marker, v1
cards) and a store being migrated to v2 ("migrating:...") are refused until `flask cards migrate` has
finished (tests/test_migration.py runs it); so is a store a later release has marked with its own layout.
A later layout's migration will mark each card (field ``mv`` of the card hash) before it copies it: from
then on every write of this release refuses the card, so no write can land where the copy has been made,
while reads still answer. The Hub retries a 503 and reaches the new release.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest

from giftcard_provider import create_app
from giftcard_provider.errors import StoreUnavailable
from giftcard_provider.keys import Keys, V1Keys, buckets

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub, body
from .snapshot import unchanged

HEADERS = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
NEW_CARD = {"relationName": "r", "caption": "c", "profileId": "p@example.com"}
MOVING = "mv"  # the card hash's mark of a later layout's migration (keys.py, records.Card.moving)


def mark_moving(store, card_id: str) -> None:
    store.redis.hset(store.keys.card(card_id), MOVING, "v3")


def unmark(store, card_id: str) -> None:
    store.redis.hdel(store.keys.card(card_id), MOVING)  # for verify after the test


def test_a_card_being_moved_takes_no_write_and_still_reads(hub, store, app):
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4"))
    mark_moving(store, card["id"])
    writes = {
        "debit": lambda: hub.transaction(card["id"], "Debit", Decimal("1")),
        "credit": lambda: hub.transaction(card["id"], "Credit", Decimal("1")),
        "settle": lambda: hub.settle(card["id"], tx, Decimal("1")),
        "cancel": lambda: hub.cancel(card["id"], tx, Decimal("1")),
    }
    for name, write in writes.items():
        with unchanged(store.redis):
            response = write()
        assert response.status_code == 503, name
        assert body(response)["code"] == "card_moving", name
        assert response.headers["Retry-After"] == "1"
    assert hub.balance(card["id"]) == 6  # reads still answer
    assert hub.get(f"/giftcards/{card['id']}/transactions/{tx}").status_code == 200
    assert store.card(card["id"]).moving
    runner = app.test_cli_runner()
    with unchanged(store.redis):
        result = runner.invoke(args=["cards", "block", card["id"], "--reason", "test"])
        with pytest.raises(StoreUnavailable) as refused:
            store.expire_holds(card["id"])
    assert result.exit_code == 1 and "moved by an upgrade" in result.output
    assert refused.value.code == "card_moving"
    shown = runner.invoke(args=["cards", "show", card["id"]])
    assert shown.exit_code == 0 and "being moved by a layout upgrade" in shown.output
    unmark(store, card["id"])


def test_the_sweeper_leaves_a_card_being_moved(backend, settings):
    lifetime = 0.2
    app = create_app(make_settings(hold_lifetime_seconds=lifetime), redis_client=backend)
    hub, store = Hub(app.test_client(), HEADERS), app.extensions["giftcard_provider"]["store"]
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    hub.debit(card["id"], Decimal("4"))
    mark_moving(store, card["id"])
    time.sleep(lifetime + 0.05)  # the hold is due
    with unchanged(backend):
        assert store.expire_all_holds() == {
            "bucketsWithDueHolds": 1,
            "holdsReleased": 0,
            "errors": {},
            "moving": 1,
            "eventsTrimmed": 0,
        }
        response = hub.get(f"/giftcards/{card['id']}")
    assert body(response)["balance"] == 10  # a due hold counts as released, as on any card
    unmark(store, card["id"])
    assert store.expire_all_holds()["holdsReleased"] == 1


@pytest.mark.parametrize(
    ("marker", "code"),
    [(None, "layout_unmigrated"), ("migrating:12", "layout_migrating"), ("v3", "layout_unknown")],
)
def test_a_store_of_another_layout_is_refused_clearly(backend, settings, caplog, marker, code):
    """A v1 store, one being migrated, one a later release migrated: 503 naming the layout, rather than
    find no cards in it or write v2 cards beside others; the log says so once; nothing is written."""
    keys = Keys(settings.key_prefix)
    v1_card = V1Keys(settings.key_prefix).card("ab" * 16)
    backend.hset(v1_card, "currency", "USD")  # a v1 store has v1 cards
    if marker:
        backend.set(keys.layout(), marker)
    app = create_app(settings, redis_client=backend)
    hub = Hub(app.test_client(), HEADERS)
    with unchanged(backend):
        for _ in range(3):
            response = hub.post("/giftcards", NEW_CARD)
            assert response.status_code == 503 and body(response)["code"] == code
            ready = app.test_client().get("/ready")
            assert ready.status_code == 503 and "layout" in ready.json["reason"]
        assert hub.get(f"/giftcards/{'cd' * 16}").status_code == 503
    if marker == "v3":
        assert "'v3'" in body(response)["message"]
    else:
        assert "flask cards migrate" in body(response)["message"]
    assert len([r for r in caplog.records if r.levelname == "ERROR" and "layout" in r.getMessage()]) == 1
    backend.delete(v1_card, keys.layout())


def test_a_new_store_is_marked_v2_and_served(backend, settings):
    app = create_app(settings, redis_client=backend)
    assert app.test_client().get("/ready").status_code == 200
    assert backend.get(Keys(settings.key_prefix).layout()) == "v2"
    backend.set(Keys(settings.key_prefix).layout(), "v2")  # marked: served by a new process too
    assert create_app(settings, redis_client=backend).test_client().get("/ready").status_code == 200


def test_a_card_created_after_a_later_migration_finished_is_withdrawn(backend, settings):
    """A process that checked the layout before a later migration finished: its card creation reads the
    marker again in the same round trip as the owner index, and withdraws the card it just wrote."""
    keys = Keys(settings.key_prefix)
    app = create_app(settings, redis_client=backend)
    hub = Hub(app.test_client(), HEADERS)
    assert app.test_client().get("/ready").status_code == 200  # checked: v2
    backend.set(keys.layout(), "v3")  # a later release's migration finishes meanwhile
    response = hub.post("/giftcards", NEW_CARD)
    assert response.status_code == 503 and body(response)["code"] == "layout_unknown"
    # No card, no index entry: only its bucket's event log ("created", "discarded") and books (0 cards).
    store = app.extensions["giftcard_provider"]["store"]
    assert list(store.card_ids()) == []
    left = set(backend.scan_iter(match=f"{settings.key_prefix}:*"))
    logs = {k for b in buckets() for k in (keys.events(b), keys.books(b))}
    assert keys.layout() in left and left - {keys.layout()} <= logs
    assert [b.cards for b in store.books().values()] == [0]
    backend.set(keys.layout(), "v2")
