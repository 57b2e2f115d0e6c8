"""The shortest honest story: load, hold, settle part, cancel the rest, on both backends."""

from decimal import Decimal

from giftcard_provider.verify import verify_all


def test_load_hold_settle_cancel(hub, store):
    card = hub.funded_card(Decimal("10.00"), currencyCode="BRL")
    tx = hub.debit(card["id"], Decimal("4.5"))
    assert hub.balance(card["id"]) == Decimal("5.5")
    assert hub.settle(card["id"], tx, Decimal("3")).status_code == 200
    assert hub.cancel(card["id"], tx, Decimal("2.5")).status_code == 200  # releases 1.5, refunds 1
    assert hub.balance(card["id"]) == Decimal("8")
    assert verify_all(store.redis, store.keys) == (1, [])
