"""The service against the reference model (tests/model.py), driven by Hypothesis.

A RuleBasedStateMachine creates cards in several currencies and sends Credits,
Debits, settlements, cancellations, repeats of earlier requestIds (same and
conflicting content) and reads, through the Flask test client, to the app on a
private real redis-server. The model judges every request on its own; after
every step the answers (status, error code, 409 field, ids of replays, values),
every balance (over HTTP and in Redis) and the journal (verify_card) must agree.
A refused request must leave Redis exactly as it was.

Budget: 50 examples of up to 30 steps (well under a minute). A longer search:
``HYPOTHESIS_PROFILE=long pytest tests/test_stateful.py`` (1000 examples of up to 60 steps).
A failure prints the steps, the values drawn and a ``@reproduce_failure(...)`` line;
add that decorator to LedgerMachine (or run with ``--hypothesis-seed=N``) to replay it.
"""

from __future__ import annotations

import itertools
import os
from decimal import Decimal

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from giftcard_provider import create_app
from giftcard_provider.verify import verify_all, verify_card

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub, body
from .model import EXPONENTS, Answer, Card, Ledger, Transaction

settings.register_profile(
    "ledger",
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    print_blob=True,
    derandomize=False,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("long", settings.get_profile("ledger"), max_examples=1000, stateful_step_count=60)
PROFILE = settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ledger"))

# Small ceilings, so Hypothesis reaches them: per operation and per card, in major units of any currency.
MAX_AMOUNT, MAX_BALANCE = Decimal("5000"), Decimal("6000")
# Failed code searches are throttled (10/minute per client by default): the model does not count them.
SETTINGS = make_settings(
    max_transaction_amount=MAX_AMOUNT,
    max_card_balance=MAX_BALANCE,
    code_lookup_limit="100000/minute",
    code_lookup_address_limit="100000/minute",
)
OWNERS = ["ana@example.com", "bo@example.com"]
STRANGER = "eve@example.com"
MAX_CARDS = 4  # enough for cross-card mistakes; more would only thin out the steps spent on each card
CARD_FIELDS = {
    "currency": st.sampled_from(sorted(EXPONENTS)),
    "owner": st.sampled_from(OWNERS),
    "restricted": st.booleans(),
    "multiple_redemptions": st.booleans(),
    "multiple_credits": st.booleans(),
    "relation_name": st.sampled_from(["gift", "loyalty"]),
}


def snapshot(client: redis.Redis) -> dict:
    """Every key with its type and value, in three round trips (tests/snapshot.py reads key by key)."""
    keys = sorted(client.scan_iter(count=10_000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.type(key)
    kinds = pipe.execute()
    read = {
        "string": lambda k: pipe.get(k),
        "hash": lambda k: pipe.hgetall(k),
        "list": lambda k: pipe.lrange(k, 0, -1),
        "set": lambda k: pipe.smembers(k),
        "zset": lambda k: pipe.zrange(k, 0, -1, withscores=True),
        "stream": lambda k: pipe.xrange(k),
    }
    for key, kind in zip(keys, kinds, strict=True):
        read[kind](key)
        pipe.pttl(key)
    found = pipe.execute()
    values, ttls = found[::2], found[1::2]
    return {key: (kind, value, ttl >= 0) for key, kind, value, ttl in zip(keys, kinds, values, ttls, strict=True)}


def values(exponent: int, target: int | None = None):
    """Valid amounts as the Hub sends them (exact Decimals in major units) for a currency with `exponent` decimals.

    `target` (minor units) is what the operation could take at most (what is available, held, left):
    most amounts are within it, or one unit either side of it; others range up to the per-operation
    ceiling. Some carry trailing zeros (``12.500``), which change nothing.
    """
    unit = Decimal(1).scaleb(-exponent)

    def amount(minor: int, pad: int = 0) -> Decimal:
        return (minor * unit).quantize(unit.scaleb(-pad))

    wide = st.integers(1, int(MAX_AMOUNT / unit))
    target = max(target or 0, 0)
    near = st.integers(1, target) if target else wide
    edges = [n for n in (target - 1, target, target + 1) if n > 0]
    return st.one_of(
        st.builds(amount, near, st.sampled_from([0, 0, 1, 2])),
        st.builds(amount, near),
        st.sampled_from([amount(n) for n in edges]),
        st.builds(amount, wide),
    )


def bad_values(exponent: int):
    """Amounts the service must answer 400 to: more precise than the currency, zero, negative, above the ceiling."""
    unit = Decimal(1).scaleb(-exponent)
    too_precise = st.builds(lambda n, digit: n * unit + digit * unit / 10, st.integers(1, 10**4), st.integers(1, 9))
    return st.one_of(
        too_precise, st.sampled_from([Decimal(0), -unit, Decimal("-1"), MAX_AMOUNT + unit, Decimal("0.00001")])
    )


class LedgerMachine(RuleBasedStateMachine):
    """The service and the model, side by side. `app` and `redis` are set by the test below."""

    app = None
    redis: redis.Redis = None

    cards = Bundle("cards")

    def __init__(self):
        super().__init__()
        self.redis.flushall()
        self.hub = Hub(self.app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})
        self.model = Ledger(MAX_AMOUNT, MAX_BALANCE)
        self.request_ids = itertools.count(1)
        self.used_request_ids: list[str] = []
        self.sent_transactions: list[dict] = []  # every POST .../transactions body sent, with its card
        self.sent_operations: list[tuple] = []  # (kind, card, tx, value, requestId)
        self.dates: dict[str, str] = {}  # oid -> date of its first answer (a replay must repeat it)
        self.touched: set[str] = set()  # cards changed since the last invariant check

    # -- helpers --------------------------------------------------------------

    def request_id(self, data) -> str:
        """A fresh requestId, or one used before (on any card, transaction or kind of request)."""
        if self.used_request_ids and data.draw(st.integers(0, 7), label="reuse a requestId") == 0:
            return data.draw(st.sampled_from(self.used_request_ids), label="requestId")
        rid = f"r{next(self.request_ids)}"
        self.used_request_ids.append(rid)
        return rid

    def post(self, path: str, payload: dict, judge) -> tuple[dict, Answer]:
        """POST, let the model judge the same request, compare; a refusal must change no key in Redis."""
        before = snapshot(self.redis)
        response = self.hub.post(path, payload)
        answer = body(response)
        new_id = (answer.get("id") or answer.get("oid") or "<none>") if isinstance(answer, dict) else "<none>"
        expected = judge(new_id)
        text = response.get_data(as_text=True)
        assert response.status_code == expected.status, f"POST {path} {payload}: service {text}, model {expected}"
        assert response.mimetype == "application/json"
        if expected.ok:
            return answer, expected
        assert snapshot(self.redis) == before, f"refused POST {path} {payload} changed Redis"
        assert isinstance(answer["code"], str) and answer["message"], text
        if expected.code:
            assert answer["code"] == expected.code, f"POST {path} {payload}: {text}, model {expected}"
        if expected.field:
            assert answer["field"] == expected.field, text
        return answer, expected

    def transact(self, card_id: str, payload: dict) -> Answer:
        """POST .../transactions, compared with the model's answer (which is returned)."""
        profile = (payload.get("orderInfo") or {}).get("clientProfile") or {}
        answer, expected = self.post(
            f"/giftcards/{card_id}/transactions",
            payload,
            lambda new_id: self.model.transact(
                card_id,
                payload["operation"],
                payload["value"],
                payload["requestId"],
                new_id=new_id,
                token=payload.get("redemptionToken"),
                identities=[profile.get("email"), profile.get("document")],
            ),
        )
        self.sent_transactions.append({"card": card_id, "payload": payload})
        self.touched.add(card_id)
        if expected.ok:
            assert answer == {
                "cardId": card_id,
                "id": expected.id,
                "_self": {"href": f"/giftcards/{card_id}/transactions/{expected.id}"},
            }
        return expected

    def operate(self, kind: str, card_id: str, tx_id: str, value: Decimal, rid: str):
        judge = self.model.settle if kind == "settlements" else self.model.cancel
        answer, expected = self.post(
            f"/giftcards/{card_id}/transactions/{tx_id}/{kind}",
            {"value": value, "requestId": rid},
            lambda new_oid: judge(card_id, tx_id, value, rid, new_oid=new_oid),
        )
        self.sent_operations.append((kind, card_id, tx_id, value, rid))
        self.touched.add(card_id)
        if expected.ok:
            card = self.model.cards[card_id]
            assert answer["oid"] == expected.id and answer["value"] == card.major(expected.minor), answer
            assert self.dates.setdefault(expected.id, answer["date"]) == answer["date"], "a replay changed the date"

    def tx(self, card_id: str, tx_id: str) -> Transaction | None:
        card = self.model.cards.get(card_id)
        return card.transactions.get(tx_id) if card else None

    # -- rules ----------------------------------------------------------------

    @precondition(lambda self: len(self.model.cards) < MAX_CARDS)
    @rule(target=cards, **CARD_FIELDS)
    def create_card(self, currency, owner, restricted, multiple_redemptions, multiple_credits, relation_name):
        """POST /giftcards: a card in one of several currencies (exponents 0, 2, 3), at balance 0."""
        response = self.hub.post(
            "/giftcards",
            {
                "relationName": relation_name,
                "caption": "card",
                "profileId": owner.upper() if restricted else owner,  # e-mails compare case-insensitively
                "currencyCode": currency.lower(),
                "restrictedToOwner": restricted,
                "multipleRedemptions": multiple_redemptions,
                "multipleCredits": multiple_credits,
            },
        )
        assert response.status_code == 200, response.get_data(as_text=True)
        created = body(response)
        assert (created["balance"], created["currencyCode"]) == (0, currency)
        self.model.create_card(
            Card(
                created["id"],
                currency,
                owner,
                restricted,
                multiple_redemptions,
                multiple_credits,
                token=created["redemptionToken"],
                code=created["redemptionCode"],
                relation_name=relation_name,
            )
        )
        return created["id"]

    @initialize(target=cards, data=st.data(), **CARD_FIELDS)
    def funded_card(self, data, **fields):
        """Every run starts with one card loaded by a Credit, so Debits have money to hold."""
        card_id = self.create_card(**fields)
        value = data.draw(values(self.model.cards[card_id].exponent), label="first credit")
        assert self.transact(card_id, {"operation": "Credit", "value": value, "requestId": self.request_id(data)}).ok
        return card_id

    def _transaction(self, card_id, operation, data):
        card = self.model.cards[card_id]
        target = card.available if operation == "Debit" else None
        clients = [None, None, None, card.owner, card.owner.upper(), STRANGER]
        client = data.draw(st.sampled_from(clients), label="client")
        # The Hub sends the token it read with GET card; now and then none, or a wrong one.
        token = data.draw(st.sampled_from([card.token] * 4 + [None, "", "wrong-token"]), label="token")
        payload = {
            "operation": operation,
            "value": data.draw(values(card.exponent, target), label="value"),
            "requestId": self.request_id(data),
            "redemptionToken": token,
            "redemptionCode": None,
            "orderInfo": {"orderId": "o-1", "clientProfile": {"email": client}} if client else None,
        }
        self.transact(card_id, payload)

    @rule(card_id=cards, data=st.data())
    def credit(self, card_id, data):
        self._transaction(card_id, "Credit", data)

    @rule(card_id=cards, data=st.data())
    def debit(self, card_id, data):
        self._transaction(card_id, "Debit", data)

    @precondition(lambda self: any(c.available > 0 for c in self.model.cards.values()))
    @rule(data=st.data())
    def pay(self, data):
        """A Debit on a card that has money: what a checkout does most of the time."""
        funded = [c.id for c in self.model.cards.values() if c.available > 0]
        self._transaction(data.draw(st.sampled_from(funded), label="funded card"), "Debit", data)

    @precondition(lambda self: any(c.available > 0 for c in self.model.cards.values()))
    @rule(data=st.data())
    def checkout(self, data):
        """The Hub's whole flow on one Debit: hold, settle part of it, then cancel part (release, then refund)."""
        funded = [c.id for c in self.model.cards.values() if c.available > 0]
        card = self.model.cards[data.draw(st.sampled_from(funded), label="funded card")]
        payload = {
            "operation": "Debit",
            "value": data.draw(values(card.exponent, card.available), label="value"),
            "redemptionToken": card.token,
            "orderInfo": {"orderId": "o-1", "clientProfile": {"email": card.owner}},
        }
        answer = self.transact(card.id, {**payload, "requestId": self.request_id(data)})
        if not answer.ok:
            return
        tx = card.transactions[answer.id]
        self._operation("settlements", card, tx, self.settleable(tx), data)
        self._operation("cancellations", card, tx, self.cancellable(card, tx), data)

    def pick_transaction(self, data, left) -> tuple[Card, Transaction]:
        """A transaction of any card; mostly one with something `left(card, tx)` to take, mostly a Debit."""
        every = [(c, t) for c in self.model.cards.values() for t in c.transactions.values()]
        with_left = [(c, t) for c, t in every if left(c, t) > 0]
        debits = [(c, t) for c, t in with_left if t.operation == "Debit"]
        pools = [p for p in (debits, debits, with_left, every) if p]
        pool = pools[data.draw(st.integers(0, len(pools) - 1), label="pool")]
        card_id, tx_id = data.draw(st.sampled_from([(c.id, t.id) for c, t in pool]), label="transaction")
        return self.model.cards[card_id], self.model.cards[card_id].transactions[tx_id]

    @precondition(lambda self: self.has_transactions)
    @rule(data=st.data())
    def settle(self, data):
        card, tx = self.pick_transaction(data, lambda c, t: self.settleable(t))
        self._operation("settlements", card, tx, self.settleable(tx), data)

    @precondition(lambda self: self.has_transactions)
    @rule(data=st.data())
    def cancel(self, data):
        card, tx = self.pick_transaction(data, self.cancellable)
        self._operation("cancellations", card, tx, self.cancellable(card, tx), data)

    @staticmethod
    def settleable(tx: Transaction) -> int:
        return tx.held if tx.operation == "Debit" else tx.minor - tx.settled - tx.cancelled

    @staticmethod
    def cancellable(card: Card, tx: Transaction) -> int:
        if tx.operation == "Debit":
            return tx.minor - tx.released - tx.refunded
        return min(tx.minor - tx.cancelled, card.available)

    def _operation(self, kind, card, tx, target, data):
        value = data.draw(values(card.exponent, target), label="value")
        card_id = card.id
        if data.draw(st.integers(0, 9), label="path") == 0:  # the transaction under another card: 404
            card_id = data.draw(st.sampled_from(list(self.model.cards)), label="card in path")
        self.operate(kind, card_id, tx.id, value, self.request_id(data))

    @property
    def has_transactions(self) -> bool:
        return any(c.transactions for c in self.model.cards.values())

    @precondition(lambda self: self.sent_transactions)
    @rule(data=st.data(), change=st.sampled_from(["nothing", "value", "operation"]))
    def repeat_transaction(self, data, change):
        """An earlier POST .../transactions again: as it was (a gateway retry), or with one field changed."""
        sent = data.draw(st.sampled_from(self.sent_transactions), label="earlier request")
        payload = dict(sent["payload"])
        if change == "value":
            exponent = self.model.cards[sent["card"]].exponent
            payload["value"] = data.draw(values(exponent) | bad_values(exponent), label="new value")
        elif change == "operation":
            payload["operation"] = "Credit" if payload["operation"] == "Debit" else "Debit"
        self.transact(sent["card"], payload)

    @precondition(lambda self: self.sent_operations)
    @rule(data=st.data(), same_value=st.booleans())
    def repeat_operation(self, data, same_value):
        """An earlier settlement or cancellation again, with the same or another value."""
        kind, card_id, tx_id, value, rid = data.draw(st.sampled_from(self.sent_operations), label="earlier operation")
        if not same_value:
            exponent = self.model.cards[card_id].exponent
            value = data.draw(values(exponent) | bad_values(exponent), label="new value")
        self.operate(kind, card_id, tx_id, value, rid)

    @precondition(lambda self: self.has_transactions)
    @rule(request=st.sampled_from(["Credit", "Debit", "settlements", "cancellations"]), data=st.data())
    def bad_value(self, request, data):
        """A value the service must refuse with 400 (and no trace), on a fresh or an already used requestId."""
        card, tx = self.pick_transaction(data, lambda c, t: 1)
        value = data.draw(bad_values(card.exponent), label="value")
        if request in ("Credit", "Debit"):
            self.transact(card.id, {"operation": request, "value": value, "requestId": self.request_id(data)})
        else:
            self.operate(request, card.id, tx.id, value, self.request_id(data))

    @rule(card_id=cards)
    def read_transactions(self, card_id):
        """GET the card's transaction list, and each transaction with its authorization and lists."""
        self.check_transaction_list(card_id)
        for tx_id in self.model.cards[card_id].transactions:
            self.check_transaction(card_id, tx_id)

    @rule(card_id=cards, data=st.data())
    def search(self, card_id, data):
        card = self.model.cards[card_id]
        who = data.draw(st.sampled_from([card.owner, card.owner.upper(), STRANGER]), label="client")
        client = {"id": "profile-1", "email": who, "document": "1"}
        if data.draw(st.booleans(), label="by code"):
            code = data.draw(st.sampled_from([card.code, card.code.lower(), card.code.replace("-", " ")]), label="code")
            response, expected = self.hub.search(code, client), self.model.search([client["id"], who], code)
        else:
            relation = data.draw(st.sampled_from([None, "gift", "loyalty"]), label="relationName")
            response = self.hub.search(None, client, relationName=relation)
            expected = self.model.search([client["id"], who], relation_name=relation)
        assert response.status_code == 200, response.get_data(as_text=True)
        found = {r["id"]: r["balance"] for r in body(response)}
        assert set(found) == expected, (found, expected)
        for found_id, balance in found.items():
            model_card = self.model.cards[found_id]
            assert balance == model_card.major(model_card.available)

    # -- checks ---------------------------------------------------------------

    def check_card(self, card_id: str) -> None:
        card = self.model.cards[card_id]
        response = self.hub.get(f"/giftcards/{card_id}")
        assert response.status_code == 200
        balance = body(response)["balance"]
        assert balance == card.major(card.available), f"card {card_id}: balance {balance}, model {card.available}"
        stored = [int(v or 0) for v in self.redis.hmget(self.model_keys.card(card_id), "av", "hd")]  # absent: 0
        model = [card.available, card.held]
        assert stored == model, f"card {card_id}: available/held {stored} in Redis, model {model}"
        assert verify_card(self.redis, self.model_keys, card_id) == []

    def check_transaction_list(self, card_id: str) -> None:
        response = self.hub.get(f"/giftcards/{card_id}/transactions")
        assert response.status_code == 200
        assert [t["id"] for t in body(response)] == list(self.model.cards[card_id].transactions)
        total = len(self.model.cards[card_id].transactions)
        assert response.headers["REST-Content-Range"] == f"resources 0-{max(total - 1, 0)}/{total}"

    def check_transaction(self, card_id: str, tx_id: str) -> None:
        card, tx = self.model.cards[card_id], self.tx(card_id, tx_id)
        base = f"/giftcards/{card_id}/transactions/{tx_id}"
        read = body(self.hub.get(base))
        assert (read["id"], read["operation"], read["value"], read["requestId"]) == (
            tx.id,
            tx.operation,
            card.major(tx.minor),
            tx.request_id,
        )
        authorization = body(self.hub.get(f"{base}/authorization"))
        assert (authorization["oid"], authorization["value"]) == (tx.id, card.major(tx.minor))
        for kind in ("settlements", "cancellations"):
            response = self.hub.get(f"{base}/{kind}")
            assert response.status_code == 200
            listed = [(r["oid"], r["value"], r["date"]) for r in body(response)]
            assert listed == [(r.oid, card.major(r.minor), self.dates[r.oid]) for r in getattr(tx, kind)], kind

    @invariant()
    def touched_cards_agree(self):
        for card_id in sorted(self.touched & set(self.model.cards)):
            self.check_card(card_id)
        self.touched.clear()

    def teardown(self):
        """At the end of each example, everything the API can show, for every card, and the whole store."""
        for card_id, card in self.model.cards.items():
            self.check_card(card_id)
            self.check_transaction_list(card_id)
            for tx_id in card.transactions:
                self.check_transaction(card_id, tx_id)
        assert verify_all(self.redis, self.model_keys) == (len(self.model.cards), [])

    @property
    def model_keys(self):
        return self.app.extensions["giftcard_provider"]["store"].keys


def test_service_matches_the_model(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    app = create_app(SETTINGS, redis_client=client)
    app.config["TESTING"] = True
    LedgerMachine.app, LedgerMachine.redis = app, client
    try:
        run_state_machine_as_test(LedgerMachine, settings=PROFILE)
    finally:
        client.flushall()
        client.close()
