"""POST /giftcards and GET /giftcards/{id}: creation, masking, currencies, validity window, odd ids."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from giftcard_provider import create_app

from .conftest import make_settings
from .hub import Hub, body
from .ledger_edit import stored_card
from .snapshot import assert_rejected, snapshot

CODE = re.compile(r"^[ABCDEFGHJKMNPQRSTVWXYZ23456789]{4}(-[ABCDEFGHJKMNPQRSTVWXYZ23456789]{4}){4}$")
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def test_create_answers_a_zero_balance_card_with_its_full_code(hub):
    before = datetime.now(UTC)
    response = hub.post("/giftcards", {"relationName": "loyalty", "caption": "Welcome card", "profileId": "shopper-1"})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    card = body(response)
    card_id = card["id"]
    assert re.fullmatch(r"[0-9a-f]{32}", card_id)
    assert CODE.fullmatch(card["redemptionCode"]), card["redemptionCode"]
    assert isinstance(card["redemptionToken"], str) and len(card["redemptionToken"]) >= 16
    assert card["balance"] == 0
    assert '"balance":0,' in response.get_data(as_text=True)
    assert card["currencyCode"] == "USD"  # Settings.default_currency
    assert (card["restrictedToOwner"], card["multipleRedemptions"], card["multipleCredits"]) == (False, True, True)
    assert (card["relationName"], card["caption"], card["profileId"]) == ("loyalty", "Welcome card", "shopper-1")
    assert card["status"] == "active"
    assert card["discount"] is False
    assert card["_self"] == {"href": f"/giftcards/{card_id}"}
    assert card["transactions"] == card["transaction"] == {"href": f"/giftcards/{card_id}/transactions"}
    # Default window: from now (Redis clock) for CARD_VALIDITY_DAYS.
    assert ISO_MS.fullmatch(card["emissionDate"]) and ISO_MS.fullmatch(card["expiringDate"])
    emission, expiring = parse_iso(card["emissionDate"]), parse_iso(card["expiringDate"])
    assert before - timedelta(seconds=5) <= emission <= datetime.now(UTC) + timedelta(seconds=5)
    assert expiring - emission == timedelta(days=5 * 365)


def test_later_reads_mask_the_code_to_its_last_four(hub):
    created = hub.create_card()
    response = hub.get(f"/giftcards/{created['id']}")
    assert response.status_code == 200
    card = body(response)
    last4 = created["redemptionCode"].replace("-", "")[-4:]
    assert card["redemptionCode"] == "*" * 16 + last4
    assert created["redemptionCode"].replace("-", "") not in response.get_data(as_text=True)
    # Everything else reads back as created.
    assert {k: v for k, v in card.items() if k != "redemptionCode"} == {
        k: v for k, v in created.items() if k != "redemptionCode"
    }


def test_each_card_gets_its_own_id_code_and_token(hub):
    cards = [hub.create_card() for _ in range(5)]
    for field in ("id", "redemptionCode", "redemptionToken"):
        assert len({c[field] for c in cards}) == 5, field


def test_redis_holds_no_spendable_code(hub, store):
    codes = [hub.create_card()["redemptionCode"] for _ in range(3)]
    dump = repr(snapshot(store.redis))
    for code in codes:
        assert code not in dump
        assert code.replace("-", "") not in dump


def test_explicit_currency(hub):
    for given, stored in [("BRL", "BRL"), ("brl", "BRL"), ("JPY", "JPY"), ("KWD", "KWD"), ("eur", "EUR")]:
        card = hub.create_card(currencyCode=given)
        assert card["currencyCode"] == stored
        assert body(hub.get(f"/giftcards/{card['id']}"))["currencyCode"] == stored


def test_default_currency_comes_from_settings(backend):
    app = create_app(make_settings(default_currency="EUR"), redis_client=backend)
    hub = Hub(app.test_client(), {"X-PROVIDER-API-AppKey": "test-app-key", "X-PROVIDER-API-AppToken": "test-app-token"})
    assert hub.create_card()["currencyCode"] == "EUR"
    assert hub.create_card(currencyCode=None)["currencyCode"] == "EUR"


def test_unknown_currency_is_refused(hub, store):
    hub.create_card()  # something in Redis for the snapshot to watch
    for currency in ["XYZ", "US", "", "XAU", "XXX", "dollars", 978]:
        request = {"relationName": "r", "caption": "c", "profileId": "p", "currencyCode": currency}
        error = assert_rejected(store.redis, lambda r=request: hub.post("/giftcards", r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == ["currencyCode"], currency


def test_explicit_window_is_kept_to_the_millisecond(hub):
    emission = datetime(2020, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    expiring = datetime(2040, 6, 7, 8, 9, 10, 123000, tzinfo=UTC)
    card = hub.create_card(emissionDate=emission.isoformat(), expiringDate=expiring.isoformat())
    assert (card["emissionDate"], card["expiringDate"]) == (iso(emission), iso(expiring))
    read = body(hub.get(f"/giftcards/{card['id']}"))
    assert (read["emissionDate"], read["expiringDate"]) == (iso(emission), iso(expiring))


def test_offset_and_naive_dates(hub):
    card = hub.create_card(emissionDate="2030-01-01T02:00:00+02:00", expiringDate="2031-01-01T00:00:00")
    assert card["emissionDate"] == "2030-01-01T00:00:00.000Z"
    assert card["expiringDate"] == "2031-01-01T00:00:00.000Z"  # naive means UTC


def test_emission_alone_gets_the_default_validity(hub):
    card = hub.create_card(emissionDate="2030-01-01T00:00:00Z")
    assert card["emissionDate"] == "2030-01-01T00:00:00.000Z"
    assert parse_iso(card["expiringDate"]) == datetime(2030, 1, 1, tzinfo=UTC) + timedelta(days=5 * 365)


def future(days: float) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).isoformat()


INVALID_WINDOWS = [
    ({"emissionDate": "2031-01-01T00:00:00Z", "expiringDate": "2030-01-01T00:00:00Z"}, "expiringDate"),  # reversed
    ({"emissionDate": "2031-01-01T00:00:00Z", "expiringDate": "2031-01-01T00:00:00Z"}, "expiringDate"),  # empty
    ({"expiringDate": "2001-01-01T00:00:00Z"}, "expiringDate"),  # already over
    ({"emissionDate": "2000-01-01T00:00:00Z", "expiringDate": "2001-01-01T00:00:00Z"}, "expiringDate"),
    ({"emissionDate": "not a date"}, "emissionDate"),
    ({"expiringDate": "2030-13-45"}, "expiringDate"),
    ({"expiringDate": 1700000000000}, "expiringDate"),
]


def test_invalid_window_is_refused(hub, store):
    hub.create_card()
    for window, field in INVALID_WINDOWS:
        request = {"relationName": "r", "caption": "c", "profileId": "p", **window}
        error = assert_rejected(store.redis, lambda r=request: hub.post("/giftcards", r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == [field], window


def test_window_only_in_the_future_is_accepted(hub):
    card = hub.create_card(emissionDate=future(1), expiringDate=future(2))
    assert card["status"] == "active"
    assert card["balance"] == 0


INVALID_FIELDS = [
    ({"relationName": None}, "relationName"),
    ({"relationName": "   "}, "relationName"),
    ({"profileId": ""}, "profileId"),
    ({"caption": 12}, "caption"),
    ({"restrictedToOwner": "perhaps"}, "restrictedToOwner"),
    ({"multipleRedemptions": []}, "multipleRedemptions"),
    ({"multipleCredits": {}}, "multipleCredits"),
    ({"relationName": "x" * 101}, "relationName"),
    ({"profileId": "x" * 129}, "profileId"),  # longer than any client id or document a search can name
    ({"profileId": "x" * 243 + "@example.com"}, "profileId"),  # 255 > 254, the longest e-mail address
]


def test_invalid_fields_are_refused(hub, store):
    hub.create_card()
    for fields, field in INVALID_FIELDS:
        request = {"relationName": "r", "caption": "c", "profileId": "p", **fields}
        error = assert_rejected(store.redis, lambda r=request: hub.post("/giftcards", r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == [field], fields
    for missing in ("relationName", "caption", "profileId"):
        request = {"relationName": "r", "caption": "c", "profileId": "p"}
        del request[missing]
        error = assert_rejected(store.redis, lambda r=request: hub.post("/giftcards", r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == [missing]


def test_malformed_body_is_refused(hub, store):
    hub.create_card()
    headers = {**hub.headers, "Content-Type": "application/json"}
    for raw in (b"", b"{", b"[]", b'"card"', b"null", b"\xff\xfe", b'{"relationName": "a", "relationName": "b"}'):
        assert_rejected(
            store.redis, lambda r=raw: hub.client.post("/giftcards", data=r, headers=headers), 400, "invalid_request"
        )


def test_flags_are_stored_as_given(hub):
    card = hub.create_card(restrictedToOwner=True, multipleRedemptions=False, multipleCredits=False)
    read = body(hub.get(f"/giftcards/{card['id']}"))
    for c in (card, read):
        assert (c["restrictedToOwner"], c["multipleRedemptions"], c["multipleCredits"]) == (True, False, False)


def test_unknown_fields_are_ignored(hub):
    card = hub.create_card(corporateDocument="123", balance=500, status="blocked", id="mine")
    assert card["balance"] == 0
    assert card["status"] == "active"
    assert card["id"] != "mine"


def test_email_owner_is_kept_lowercase(hub):
    assert hub.create_card(profileId="  Shopper@Example.COM ")["profileId"] == "shopper@example.com"
    assert hub.create_card(profileId="Client-ID-7")["profileId"] == "Client-ID-7"  # ids stay as given


def test_balance_reads_available_money(hub):
    card = hub.funded_card(Decimal("25.50"), currencyCode="BRL")
    assert hub.balance(card["id"]) == Decimal("25.5")
    hub.debit(card["id"], Decimal("0.5"))
    assert hub.balance(card["id"]) == 25
    text = hub.get(f"/giftcards/{card['id']}").get_data(as_text=True)
    assert '"balance":25,' in text


ODD_IDS = [
    "0" * 32,
    "a:b",
    "x}y",
    "{x}",
    "a*",
    "x" * 65,
    "x" * 5000,
    "a%00b",
    "%F0%9F%92%B3",
    "..",
    "a%2Fb",
    "a b",
]


def test_unknown_or_odd_card_id_is_404(hub, store):
    hub.funded_card(5)  # something in Redis for the snapshot to watch
    for card_id in ODD_IDS:
        for path in (
            f"/giftcards/{card_id}",
            f"/giftcards/{card_id}/transactions",
            f"/giftcards/{card_id}/transactions/{'0' * 32}",
        ):
            error = assert_rejected(store.redis, lambda p=path: hub.get(p), 404, "not_found")
            assert set(error) == {"code", "message"}
        assert_rejected(store.redis, lambda c=card_id: hub.transaction(c, "Credit", 1), 404, "not_found")


def test_hrefs_carry_the_configured_prefix(backend):
    app = create_app(make_settings(href_prefix="acme/giftcardproviders/test-provider"), redis_client=backend)
    hub = Hub(app.test_client(), {"X-PROVIDER-API-AppKey": "test-app-key", "X-PROVIDER-API-AppToken": "test-app-token"})
    card = hub.create_card()
    base = f"acme/giftcardproviders/test-provider/giftcards/{card['id']}"
    read = body(hub.get(f"/giftcards/{card['id']}"))
    assert read["_self"] == {"href": base}
    assert read["transactions"] == read["transaction"] == {"href": f"{base}/transactions"}
    tx = hub.transaction(card["id"], "Credit", 3).json
    assert tx["_self"] == {"href": f"{base}/transactions/{tx['id']}"}


# -- the card first, its indexes after (they live in other slots on a cluster) --


def test_a_card_is_written_before_its_indexes(backend, store, hub, monkeypatch):
    """Redis fails between the card and its indexes: 503, no index names a missing card, no money anywhere."""
    from giftcard_provider.errors import StoreUnavailable
    from giftcard_provider.verify import unreachable_cards, verify_all

    def fail(*args):
        raise StoreUnavailable("the ledger store is unavailable (ConnectionError)")

    monkeypatch.setattr(store, "_index_owner", fail)  # the code index is written with the card (keys.py)
    response = hub.post("/giftcards", {"relationName": "r", "caption": "c", "profileId": "shopper@example.com"})
    assert (response.status_code, response.json["code"]) == (503, "store_unavailable")
    monkeypatch.undo()
    [orphan] = unreachable_cards(backend, store.keys)
    orphan_card = stored_card(store, orphan)  # the card is there, with no money
    assert (orphan_card.available, orphan_card.held) == (0, 0)
    assert verify_all(backend, store.keys) == (1, [])  # garbage, not a ledger problem
    assert store.cards_of({"shopper@example.com"}) == []


def test_a_taken_code_is_never_shared(backend, store, hub, monkeypatch):
    """A code collision (1 in 30**20) withdraws the new card and issues it again with a fresh code."""
    from giftcard_provider import store as store_module
    from giftcard_provider.verify import unreachable_cards, verify_all

    first = hub.create_card()
    codes = iter([first["redemptionCode"], "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZ2"])
    monkeypatch.setattr(store_module, "new_code", lambda: next(codes))
    second = hub.create_card()
    assert second["redemptionCode"] == "ZZZZ-ZZZZ-ZZZZ-ZZZZ-ZZZ2"
    assert sorted(c.id for c in store.cards_of({"shopper@example.com"})) == sorted([first["id"], second["id"]])
    assert store.find_by_code(first["redemptionCode"]).id == first["id"]
    assert verify_all(backend, store.keys) == (2, []) and unreachable_cards(backend, store.keys) == []


def test_verify_reports_an_index_entry_that_names_no_card(backend, store, hub):
    from giftcard_provider.keys import owner_member
    from giftcard_provider.verify import verify_all

    card = hub.create_card()
    stray_digest, owner = "f" * 32, "shopper@example.com"
    backend.hset(store.keys.code_index(stray_digest), stray_digest, "0" * 32)
    backend.zadd(store.keys.owner_index(owner), {owner_member(owner, "1" * 32): 0})
    checked, problems = verify_all(backend, store.keys)
    assert checked == 1 and len(problems) == 2, problems
    assert all("names card" in p for p in problems)
    backend.hdel(store.keys.code_index(stray_digest), stray_digest)
    backend.zrem(store.keys.owner_index(owner), owner_member(owner, "1" * 32))
    assert verify_all(backend, store.keys)[1] == []
    digest = store.hasher.digest(card["redemptionCode"])
    assert backend.hdel(store.keys.code_index(digest), digest) == 1
    # v2 writes the code entry in the same call as the card, so even a card never used is reported.
    assert verify_all(backend, store.keys)[1] == [f"card {card['id']}: missing from the code index"]
    hub.credit(card["id"], 5)
    assert verify_all(backend, store.keys)[1] == [f"card {card['id']}: missing from the code index"]
    backend.hset(store.keys.code_index(digest), digest, card["id"])
