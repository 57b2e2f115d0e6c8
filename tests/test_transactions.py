"""POST/GET /giftcards/{id}/transactions: holds, loads, idempotency, refusals, reads."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal

import fakeredis
from hypothesis import given, settings
from hypothesis import strategies as st

from giftcard_provider import create_app
from giftcard_provider.blueprints.transactions import refs_json, transaction_ref

from .conftest import make_settings
from .hub import body, request_id
from .ledger_edit import edit_card, raw_transaction, write_raw_transaction
from .snapshot import assert_rejected, unchanged

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def ok(response) -> dict:
    assert response.status_code == 200, response.get_data(as_text=True)
    return body(response)


def tx_list(hub, card_id: str, **headers) -> list[str]:
    return [t["id"] for t in ok(hub.get(f"/giftcards/{card_id}/transactions", headers=headers))]


# -- creating transactions ---------------------------------------------------------


def test_credit_loads_the_card(hub):
    card = hub.create_card(currencyCode="BRL")
    response = hub.transaction(card["id"], "Credit", Decimal("12.34"))
    answer = ok(response)
    assert set(answer) == {"cardId", "id", "_self"}
    assert answer["cardId"] == card["id"]
    assert re.fullmatch(r"[0-9a-f]{16}", answer["id"])  # unique within its card (keys.py)
    assert answer["_self"] == {"href": f"/giftcards/{card['id']}/transactions/{answer['id']}"}
    assert hub.balance(card["id"]) == Decimal("12.34")
    hub.credit(card["id"], Decimal("0.66"))
    assert hub.balance(card["id"]) == 13


def test_debit_holds_the_value_at_once(hub):
    card = hub.funded_card(Decimal("50"), currencyCode="BRL")
    answer = ok(hub.transaction(card["id"], "Debit", Decimal("20.01")))
    assert answer["cardId"] == card["id"] and answer["id"]
    assert hub.balance(card["id"]) == Decimal("29.99")
    hub.debit(card["id"], Decimal("29.99"))
    assert hub.balance(card["id"]) == 0


def test_credits_add_up_exactly(hub):
    card = hub.create_card(currencyCode="BRL")
    hub.credit(card["id"], Decimal("0.1"))
    hub.credit(card["id"], Decimal("0.2"))
    response = hub.get(f"/giftcards/{card['id']}")
    assert body(response)["balance"] == Decimal("0.3")
    assert '"balance":0.3,' in response.get_data(as_text=True)


def test_replay_returns_the_original_and_changes_nothing(hub, store):
    card = hub.funded_card(Decimal("10"))
    rid = request_id()
    first = ok(hub.transaction(card["id"], "Debit", Decimal("4"), rid))
    with unchanged(store.redis):
        again = ok(hub.transaction(card["id"], "Debit", Decimal("4.00"), rid))
        assert again == first
        assert ok(hub.transaction(card["id"], "Debit", 4, rid)) == first  # 4 == 4.00: same value
    assert hub.balance(card["id"]) == 6
    assert tx_list(hub, card["id"]).count(first["id"]) == 1


def test_replay_succeeds_even_when_a_new_request_would_be_refused(hub, store):
    card = hub.funded_card(Decimal("10"), multipleRedemptions=False)
    rid = request_id()
    first = ok(hub.transaction(card["id"], "Debit", 10, rid))
    edit_card(store, card["id"], status="blocked", expiring_ms=now_ms() - 1)
    with unchanged(store.redis):  # no balance left, single redemption used, blocked, expired: still the same success
        assert ok(hub.transaction(card["id"], "Debit", 10, rid)) == first


def test_credit_replay(hub, store):
    card = hub.create_card(multipleCredits=False)
    rid = request_id()
    first = ok(hub.transaction(card["id"], "Credit", 7, rid))
    with unchanged(store.redis):
        assert ok(hub.transaction(card["id"], "Credit", 7, rid)) == first
    assert hub.balance(card["id"]) == 7


def test_same_request_id_with_other_content_is_409(hub, store):
    card = hub.funded_card(Decimal("10"))
    rid = request_id()
    hub.debit(card["id"], Decimal("4"), rid)
    for operation, value, field in [
        ("Debit", Decimal("4.01"), "value"),
        ("Debit", 3, "value"),
        ("Credit", Decimal("4"), "operation"),
        ("Credit", Decimal("5"), "operation"),
    ]:
        error = assert_rejected(
            store.redis,
            lambda op=operation, v=value: hub.transaction(card["id"], op, v, rid),
            409,
            "request_id_conflict",
        )
        assert error["field"] == field
        assert field in error["message"]
    assert hub.balance(card["id"]) == 6


def test_over_precise_replay_is_a_value_conflict(hub, store):
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    rid = request_id()
    hub.debit(card["id"], Decimal("1.23"), rid)
    error = assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Debit", Decimal("1.234"), rid), 409)
    assert error["field"] == "value"


def test_request_ids_are_per_card(hub):
    a, b = hub.funded_card(10), hub.funded_card(10)
    rid = request_id()
    tx_a = hub.debit(a["id"], 3, rid)
    tx_b = hub.debit(b["id"], 5, rid)
    assert tx_a != tx_b
    assert (hub.balance(a["id"]), hub.balance(b["id"])) == (7, 5)


def test_what_the_hub_really_sends_is_accepted(hub):
    card = hub.funded_card(10)
    response = hub.post(
        f"/giftcards/{card['id']}/transactions?ts=1700000000",
        {
            "operation": "Debit",
            "value": 2,
            "requestId": request_id(),
            "description": None,
            "redemptionCode": "***************" + card["redemptionCode"][-4:],  # masked: never a key
            "redemptionToken": card["redemptionToken"],
            "orderInfo": {
                "orderId": "v123-01",
                "sequence": 4,
                "cart": {"items": []},
                "clientProfile": {"email": "x@example.com", "document": "1", "isCorporate": False},
                "shipping": {},
            },
            "corporateDocument": "",
            "paymentRelatedSellerInfo": {"id": "seller"},
        },
        headers={"x-vtex-operation-id": "abc", "traceparent": "00-1-2-01", "Content-Type": "application/json"},
    )
    tx = ok(response)["id"]
    assert hub.balance(card["id"]) == 8
    assert ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}"))["orderId"] == "v123-01"


INVALID_FIELDS = [
    ({"operation": "Refund"}, "operation"),
    ({"operation": "debit"}, "operation"),
    ({"operation": None}, "operation"),
    ({"requestId": ""}, "requestId"),
    ({"requestId": "   "}, "requestId"),
    ({"requestId": None}, "requestId"),
    ({"requestId": 12}, "requestId"),
    ({"requestId": "r" * 129}, "requestId"),
    ({"redemptionToken": 5}, "redemptionToken"),
    ({"orderInfo": "order"}, "orderInfo"),
    ({"orderInfo": {"orderId": "o" * 129}}, "orderInfo"),
]


def test_invalid_transaction_is_400(hub, store):
    card = hub.funded_card(10)
    path = f"/giftcards/{card['id']}/transactions"
    for fields, field in INVALID_FIELDS:
        request = {"operation": "Debit", "value": 1, "requestId": request_id(), **fields}
        error = assert_rejected(store.redis, lambda r=request: hub.post(path, r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == [field], fields
    for missing in ("operation", "value", "requestId"):
        request = {"operation": "Debit", "value": 1, "requestId": request_id()}
        del request[missing]
        error = assert_rejected(store.redis, lambda r=request: hub.post(path, r), 400, "invalid_request")
        assert list(error["errors"]["json"]) == [missing]
    assert hub.balance(card["id"]) == 10


def test_unknown_card_is_404(hub, store):
    hub.funded_card(10)
    assert_rejected(store.redis, lambda: hub.transaction("f" * 32, "Credit", 1), 404, "not_found")
    assert_rejected(store.redis, lambda: hub.transaction("f" * 32, "Debit", 1), 404, "not_found")


# -- refusals: 422, no trace, and a retry with the same requestId is judged afresh ----------


def refuse_then_allow(hub, store, card_id: str, operation: str, value, code: str, fix, **extra) -> str:
    """The request is refused with `code` and changes nothing; after `fix()` the same requestId succeeds."""
    rid = request_id("refused")
    balance = hub.balance(card_id)
    error = assert_rejected(store.redis, lambda: hub.transaction(card_id, operation, value, rid, **extra), 422, code)
    assert set(error) == {"code", "message"}
    assert hub.balance(card_id) == balance
    fix()
    return ok(hub.transaction(card_id, operation, value, rid, **extra))["id"]


def test_insufficient_balance(hub, store):
    card = hub.funded_card(Decimal("10"))
    tx = refuse_then_allow(
        hub, store, card["id"], "Debit", Decimal("10.01"), "insufficient_balance", lambda: hub.credit(card["id"], 1)
    )
    assert hub.balance(card["id"]) == Decimal("0.99")
    assert tx_list(hub, card["id"])[-1] == tx


def test_insufficient_balance_counts_holds(hub, store):
    card = hub.funded_card(Decimal("10"))
    first = hub.debit(card["id"], 6)
    refuse_then_allow(
        hub,
        store,
        card["id"],
        "Debit",
        5,
        "insufficient_balance",
        lambda: hub.cancel(card["id"], first, 1),
    )
    assert hub.balance(card["id"]) == 0


def test_single_redemption_card_refuses_a_second_debit(hub, store):
    card = hub.funded_card(Decimal("10"), multipleRedemptions=False)
    first = hub.debit(card["id"], 4)
    assert hub.cancel(card["id"], first, 3).status_code == 200  # partly cancelled: still used
    refuse_then_allow(
        hub,
        store,
        card["id"],
        "Debit",
        2,
        "redemption_used",
        lambda: hub.cancel(card["id"], first, 1),  # now fully cancelled
    )
    assert hub.balance(card["id"]) == 8


def test_single_redemption_settled_debit_stays_used(hub, store):
    card = hub.funded_card(Decimal("10"), multipleRedemptions=False)
    first = hub.debit(card["id"], 4)
    assert hub.settle(card["id"], first, 4).status_code == 200
    assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Debit", 1), 422, "redemption_used")
    # Fully refunded: it no longer counts.
    assert hub.cancel(card["id"], first, 4).status_code == 200
    hub.debit(card["id"], 10)
    assert hub.balance(card["id"]) == 0


def test_single_redemption_allows_credits(hub):
    card = hub.funded_card(Decimal("10"), multipleRedemptions=False)
    hub.debit(card["id"], 4)
    hub.credit(card["id"], 5)
    assert hub.balance(card["id"]) == 11


def test_single_credit_card_refuses_a_second_credit_for_life(hub, store):
    card = hub.create_card(multipleCredits=False)
    first = hub.credit(card["id"], 10)
    assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Credit", 1), 422, "credit_used")
    assert hub.cancel(card["id"], first, 10).status_code == 200
    assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Credit", 1), 422, "credit_used")
    assert hub.balance(card["id"]) == 0


def test_first_credit_of_a_single_credit_card_after_a_refusal(hub, store):
    card = hub.create_card(multipleCredits=False)
    edit_card(store, card["id"], status="blocked")
    refuse_then_allow(
        hub,
        store,
        card["id"],
        "Credit",
        10,
        "card_blocked",
        lambda: edit_card(store, card["id"], status="active"),
    )
    assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Credit", 1), 422, "credit_used")


def test_wrong_redemption_token(hub, store):
    card = hub.funded_card(Decimal("10"))
    rid = request_id()
    assert_rejected(
        store.redis,
        lambda: hub.transaction(card["id"], "Debit", 1, rid, redemptionToken="not-the-token"),
        422,
        "token_mismatch",
    )
    ok(hub.transaction(card["id"], "Debit", 1, rid, redemptionToken=card["redemptionToken"]))
    other = hub.create_card()
    assert_rejected(
        store.redis,
        lambda: hub.transaction(card["id"], "Credit", 1, redemptionToken=other["redemptionToken"]),
        422,
        "token_mismatch",
    )
    assert hub.balance(card["id"]) == 9


def test_a_debit_must_carry_the_cards_redemption_token(hub, store):
    """The decision (docs/api.md): spending needs the token the Hub reads with GET card; a load does not."""
    card = hub.funded_card(Decimal("10"))
    for missing in (None, ""):
        assert_rejected(
            store.redis,
            lambda missing=missing: hub.transaction(card["id"], "Debit", 1, redemptionToken=missing),
            422,
            "token_required",
        )
    ok(hub.transaction(card["id"], "Credit", 1, redemptionToken=None))  # a load: the token is checked if given
    ok(hub.transaction(card["id"], "Debit", 1, redemptionToken=card["redemptionToken"]))
    assert hub.balance(card["id"]) == 10


def order(email=None, document=None):
    return {"orderId": "o-1", "clientProfile": {"email": email, "document": document}}


def test_restricted_card_refuses_another_clients_order(hub, store):
    card = hub.funded_card(Decimal("10"), profileId="Owner@Example.com", restrictedToOwner=True)
    for email in ("thief@example.com", "owner@example.org"):
        assert_rejected(
            store.redis,
            lambda email=email: hub.transaction(card["id"], "Debit", 1, orderInfo=order(email)),
            422,
            "owner_mismatch",
        )
    ok(hub.transaction(card["id"], "Debit", 1, orderInfo=order("OWNER@example.com")))
    ok(hub.transaction(card["id"], "Debit", 1, orderInfo=order(" owner@example.com ")))
    assert hub.balance(card["id"]) == 8


def test_a_debit_on_a_restricted_card_that_names_no_identity_is_refused(hub, store):
    """A rule that needs data refuses when the data is missing: no order, no profile, no e-mail."""
    card = hub.funded_card(Decimal("10"), profileId="owner@example.com", restrictedToOwner=True)
    for info in (None, {"orderId": "o-2", "clientProfile": None}, order(email=None), order(email="")):
        assert_rejected(
            store.redis,
            lambda info=info: hub.transaction(card["id"], "Debit", 1, orderInfo=info),
            422,
            "owner_mismatch",
        )
    ok(hub.transaction(card["id"], "Credit", 1, orderInfo=None))  # loading someone's card spends nothing of theirs
    assert hub.balance(card["id"]) == 11


def test_restricted_card_owned_by_a_client_id_cannot_be_spent_by_an_email(hub, store):
    # The order names the shopper only by e-mail and document: an owner stored as a VTEX client id can
    # never be matched, so the Debit is refused (issue such cards to an e-mail or a document).
    card = hub.funded_card(Decimal("10"), profileId="client-42", restrictedToOwner=True)
    assert_rejected(
        store.redis,
        lambda: hub.transaction(card["id"], "Debit", 1, orderInfo=order("anyone@example.com", "client-42x")),
        422,
        "owner_mismatch",
    )
    assert hub.balance(card["id"]) == 10


def test_restricted_card_tied_to_a_b2b_document(hub, store):
    card = hub.funded_card(Decimal("10"), profileId="12345678000190", restrictedToOwner=True)
    assert_rejected(
        store.redis,
        lambda: hub.transaction(card["id"], "Debit", 1, orderInfo=order("buyer@corp.example", "99999999000199")),
        422,
        "owner_mismatch",
    )
    ok(hub.transaction(card["id"], "Debit", 1, orderInfo=order("buyer@corp.example", " 12345678000190 ")))
    assert hub.balance(card["id"]) == 9


def test_unrestricted_card_accepts_any_client(hub):
    card = hub.funded_card(Decimal("10"), profileId="owner@example.com")
    ok(hub.transaction(card["id"], "Debit", 1, orderInfo=order("someone@example.com")))
    assert hub.balance(card["id"]) == 9


def test_expired_card(hub, store):
    card = hub.funded_card(Decimal("10"))
    for operation in ("Debit", "Credit"):
        edit_card(store, card["id"], expiring_ms=now_ms() - 1000)
        refuse_then_allow(
            hub,
            store,
            card["id"],
            operation,
            1,
            "card_expired",
            lambda: edit_card(store, card["id"], expiring_ms=now_ms() + 3_600_000),
        )
    assert hub.balance(card["id"]) == 10


def test_card_not_yet_valid(hub, store):
    card = hub.create_card(emissionDate="2090-01-01T00:00:00Z")
    for operation in ("Credit", "Debit"):
        assert_rejected(store.redis, lambda op=operation: hub.transaction(card["id"], op, 1), 422, "card_not_yet_valid")
    refuse_then_allow(
        hub,
        store,
        card["id"],
        "Credit",
        5,
        "card_not_yet_valid",
        lambda: edit_card(store, card["id"], emission_ms=now_ms() - 1000),
    )
    assert hub.balance(card["id"]) == 5


def test_blocked_card(hub, store):
    card = hub.funded_card(Decimal("10"))
    for operation in ("Debit", "Credit"):
        edit_card(store, card["id"], status="blocked")
        refuse_then_allow(
            hub,
            store,
            card["id"],
            operation,
            1,
            "card_blocked",
            lambda: edit_card(store, card["id"], status="active"),
        )
    assert hub.balance(card["id"]) == 10


def test_balance_limit(hub, store):
    card = hub.funded_card(Decimal("1000000"), currencyCode="BRL")  # MAX_CARD_BALANCE
    held = hub.debit(card["id"], Decimal("0.01"))  # held money still counts against the limit
    refuse_then_allow(
        hub,
        store,
        card["id"],
        "Credit",
        Decimal("0.01"),
        "balance_limit",
        lambda: hub.settle(card["id"], held, Decimal("0.01")),  # settled money has left the card
    )
    assert hub.balance(card["id"]) == Decimal("1000000")


def test_refused_requests_leave_no_transaction(hub, store):
    card = hub.funded_card(Decimal("5"), multipleRedemptions=False)
    first = hub.debit(card["id"], 1)
    assert_rejected(store.redis, lambda: hub.transaction(card["id"], "Debit", 1), 422, "redemption_used")
    assert_rejected(
        store.redis, lambda: hub.transaction(card["id"], "Credit", 1, redemptionToken="x"), 422, "token_mismatch"
    )
    assert len(tx_list(hub, card["id"])) == 2
    assert tx_list(hub, card["id"])[1] == first


# -- reading transactions -------------------------------------------------------------


def test_get_transaction_shows_the_full_record(hub):
    card = hub.funded_card(Decimal("10"), currencyCode="BRL")
    rid = request_id()
    debit = hub.transaction(card["id"], "Debit", Decimal("2.5"), rid, orderInfo={"orderId": "v1-01"}, description="Hub")
    tx = ok(debit)["id"]
    record = ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}"))
    base = f"/giftcards/{card['id']}/transactions/{tx}"
    assert ISO_MS.fullmatch(record.pop("date"))
    assert record == {
        "id": tx,
        "cardId": card["id"],
        "operation": "Debit",
        "value": Decimal("2.5"),
        "requestId": rid,
        "orderId": "v1-01",
        "description": "Hub",
        "settlement": {"href": f"{base}/settlements"},
        "cancellation": {"href": f"{base}/cancellations"},
        "authorization": {"href": f"{base}/authorization"},
        "_self": {"href": base},
    }


def test_get_credit_transaction(hub):
    card = hub.create_card(currencyCode="JPY")
    tx = hub.credit(card["id"], 1500)
    record = ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}"))
    assert (record["operation"], record["value"], record["orderId"]) == ("Credit", 1500, "")
    assert record["description"] == "test"  # what the Hub sent (tests/hub.py), stored and returned


def test_get_authorization(hub):
    card = hub.funded_card(Decimal("10"), currencyCode="KWD")
    tx = hub.debit(card["id"], Decimal("1.234"))
    record = ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}"))
    authorization = ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}/authorization"))
    assert authorization == {"oid": tx, "value": Decimal("1.234"), "date": record["date"]}
    # It stays the original authorization whatever happens next.
    assert hub.settle(card["id"], tx, 1).status_code == 200
    assert hub.cancel(card["id"], tx, Decimal("0.234")).status_code == 200
    assert ok(hub.get(f"/giftcards/{card['id']}/transactions/{tx}/authorization")) == authorization


def test_unknown_transaction_is_404(hub, store):
    card = hub.funded_card(10)
    for tx_id in ("0" * 32, "a:b", "x}y", "{x}", "t" * 500):
        for suffix in ("", "/authorization"):
            path = f"/giftcards/{card['id']}/transactions/{tx_id}{suffix}"
            assert_rejected(store.redis, lambda p=path: hub.get(p), 404, "not_found")


def test_transaction_of_another_card_is_404(hub, store):
    a, b = hub.funded_card(10), hub.funded_card(10)
    tx = hub.debit(a["id"], 1)
    for suffix in ("", "/authorization", "/settlements", "/cancellations"):
        assert_rejected(store.redis, lambda s=suffix: hub.get(f"/giftcards/{b['id']}/transactions/{tx}{s}"), 404)


def test_list_is_exact_and_oldest_first(hub):
    card = hub.create_card()
    txs = [hub.credit(card["id"], 10), hub.debit(card["id"], 2), hub.credit(card["id"], 1), hub.debit(card["id"], 3)]
    response = hub.get(f"/giftcards/{card['id']}/transactions")
    assert ok(response) == [
        {"cardId": card["id"], "id": t, "_self": {"href": f"/giftcards/{card['id']}/transactions/{t}"}} for t in txs
    ]
    assert response.headers["REST-Content-Range"] == "resources 0-3/4"
    ranged = hub.get(f"/giftcards/{card['id']}/transactions", headers={"REST-Range": "resources=1-2"})
    assert [t["id"] for t in ok(ranged)] == txs[1:3]
    assert ranged.headers["REST-Content-Range"] == "resources 1-2/4"


def test_list_of_a_card_without_transactions_is_empty(hub):
    card = hub.create_card()
    response = hub.get(f"/giftcards/{card['id']}/transactions")
    assert ok(response) == []
    assert response.headers["REST-Content-Range"] == "resources 0-0/0"


def test_list_of_unknown_card_is_404(hub, store):
    hub.funded_card(1)
    assert_rejected(store.redis, lambda: hub.get(f"/giftcards/{'e' * 32}/transactions"), 404, "not_found")


def test_the_ledger_refuses_an_unknown_operation_itself(hub, store):
    """The schema refuses anything but Debit and Credit; the ledger must not rely on it."""
    from giftcard_provider.errors import InvalidRequest
    from giftcard_provider.money import Amount

    card = hub.funded_card(Decimal("10"))
    for operation in ("Refund", "debit", "", "Credit "):
        with unchanged(store.redis):
            try:
                store.authorize(card["id"], operation=operation, amount=Amount(5, 0), request_id="r-op", token="")
            except InvalidRequest as exc:
                assert exc.body()["errors"] == {"json": {"operation": ["Must be one of: Debit, Credit."]}}
            else:
                raise AssertionError(f"operation {operation!r} was accepted")
    assert hub.balance(card["id"]) == 10


def test_settling_or_cancelling_a_transaction_of_unknown_operation_changes_nothing(hub, store):
    card = hub.funded_card(Decimal("10"))
    tx = hub.debit(card["id"], Decimal("4"))
    packed = raw_transaction(store, card["id"], tx)
    write_raw_transaction(store, card["id"], tx, "Refund|" + packed.partition("|")[2])  # a damaged record
    for kind in ("settlements", "cancellations"):
        path = f"/giftcards/{card['id']}/transactions/{tx}/{kind}"
        refused = assert_rejected(store.redis, lambda p=path: hub.post(p, {"value": 1, "requestId": "r-x"}), 400)
        assert refused["code"] == "invalid_request"
    write_raw_transaction(store, card["id"], tx, packed)  # repaired for verify


def test_the_ledger_refuses_amounts_it_could_not_count_exactly(hub, store):
    """What Python never sends, the ledger still refuses: a fractional coefficient, infinity, and
    amounts beyond 2**53 minor units, where Lua's doubles stop being exact."""
    card = hub.funded_card(Decimal("10"))
    keys = store.keys.card_keys(card["id"])
    for coefficient, scale in (("1.5", "0"), ("1e400", "0"), (str(2**53), "0"), (str(2**52), "0"), ("0", "0")):
        args = ["t1", "Credit", coefficient, scale, "r-exact", "", "1000", "", ""]
        with unchanged(store.redis):
            assert store.library.call(store.redis, "gc_authorize", keys, args) == ["invalid_amount"], coefficient


def test_settling_a_transaction_whose_card_is_gone_is_not_found(hub, store):
    card = hub.funded_card(Decimal("10"))
    tx = hub.debit(card["id"], Decimal("4"))
    saved = store.redis.hgetall(store.keys.card(card["id"]))
    store.redis.delete(store.keys.card(card["id"]))  # removed by hand under its hold
    for kind in ("settlements", "cancellations"):
        path = f"/giftcards/{card['id']}/transactions/{tx}/{kind}"
        assert_rejected(store.redis, lambda p=path: hub.post(p, {"value": 1, "requestId": "r-gone"}), 404, "not_found")
    store.redis.hset(store.keys.card(card["id"]), mapping=saved)  # back, for verify


@settings(max_examples=200, deadline=None)
@given(
    card_id=st.text(max_size=40),
    tx_ids=st.lists(st.text(max_size=40), max_size=5),
    prefix=st.sampled_from(["", "acme/giftcardproviders/test-provider", 'we"ird\\/é']),
)
def test_a_page_of_refs_is_the_json_of_the_refs(card_id, tx_ids, prefix):
    # The page is written as text (refs_json): it must be exactly what the encoder makes of the refs,
    # whatever the ids hold (quotes, backslashes, control characters, non-ASCII) and the href prefix.
    app = create_app(make_settings(href_prefix=prefix), redis_client=fakeredis.FakeRedis(decode_responses=True))
    with app.app_context():
        written = refs_json(card_id, tx_ids)
        expected = [transaction_ref(card_id, tx_id) for tx_id in tx_ids]
    assert json.loads(written) == expected
    assert written == json.dumps(expected, separators=(",", ":"))
