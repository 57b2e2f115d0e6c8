"""A card an upgrade is moving to a new layout: this release changes nothing on it, and says so with a 503.

The next release's migration marks each card (field movedTo) before it copies the card's keys; from
then on every write function of this release refuses the card, so no write can land where the copy
has already been made, while reads still answer. The Hub retries a 503 and reaches the new release.
"""

from __future__ import annotations

from decimal import Decimal

from giftcard_provider import create_app

from .conftest import APP_KEY, APP_TOKEN
from .hub import Hub, body
from .snapshot import unchanged

HEADERS = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
NEW_CARD = {"relationName": "r", "caption": "c", "profileId": "p@example.com"}


def mark_moving(store, card_id: str) -> None:
    store.redis.hset(store.keys.card(card_id), "movedTo", "v2")


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
    runner = app.test_cli_runner()
    with unchanged(store.redis):
        result = runner.invoke(args=["cards", "block", card["id"], "--reason", "test"])
    assert result.exit_code == 1 and "moved by an upgrade" in result.output
    with unchanged(store.redis):
        assert store.expire_all_holds()["moving"] == [card["id"]]
    shown = runner.invoke(args=["cards", "show", card["id"]])
    assert shown.exit_code == 0 and "being moved by a layout upgrade" in shown.output
    store.redis.hdel(store.keys.card(card["id"]), "movedTo")  # for verify after the test


def test_a_store_of_another_layout_is_refused_clearly(backend, settings, caplog):
    """A store migrated to a newer layout: this release answers 503 naming the layout rather than find
    no cards in it, or write old-layout cards beside the new ones; the log says so once."""
    key = f"{settings.key_prefix}:layout"
    backend.set(key, "v2")
    app = create_app(settings, redis_client=backend)
    hub = Hub(app.test_client(), HEADERS)
    for _ in range(3):
        response = hub.post("/giftcards", NEW_CARD)
        assert response.status_code == 503 and body(response)["code"] == "layout_unknown"
        assert "'v2'" in body(response)["message"]
        ready = app.test_client().get("/ready")
        assert ready.status_code == 503 and "layout" in ready.json["reason"]
    assert [r for r in caplog.records if "layout" in r.getMessage()] != []
    assert len([r for r in caplog.records if r.levelname == "ERROR" and "layout" in r.getMessage()]) == 1
    assert list(backend.scan_iter(match=f"{settings.key_prefix}:*")) == [key]  # nothing was written
    for served in ("v1", "migrating:12/256"):  # its own layout, and a migration in progress (cards are
        backend.set(key, served)  # guarded one by one by movedTo)
        assert create_app(settings, redis_client=backend).test_client().get("/ready").status_code == 200
    backend.delete(key)


def test_a_card_created_after_a_migration_finished_is_withdrawn(backend, settings):
    """A process that checked the layout before the migration finished: its card creation reads the
    marker again in the same round trip as the indexes, and withdraws the card it just wrote."""
    app = create_app(settings, redis_client=backend)
    hub = Hub(app.test_client(), HEADERS)
    assert app.test_client().get("/ready").status_code == 200  # checked: v1
    backend.set(f"{settings.key_prefix}:layout", "v2")  # the migration finishes meanwhile
    response = hub.post("/giftcards", NEW_CARD)
    assert response.status_code == 503 and body(response)["code"] == "layout_unknown"
    assert list(backend.scan_iter(match=f"{settings.key_prefix}:*")) == [f"{settings.key_prefix}:layout"]
    backend.delete(f"{settings.key_prefix}:layout")
