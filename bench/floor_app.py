"""The floor: the provider's hot endpoints with the web stack's features taken out.

Each route here does what the provider's route does for a valid request from the Hub, and nothing
else: the same LedgerStore call (so the same Redis function, arguments and reply) and the same
answer-building functions (blueprints' card_body, search_result, transaction_ref, operation_body),
in plain Flask, with the body read by the provider's own JSON provider (Decimal, never float).

What it leaves out is what issue 12 calls the web stack: the credentials check, webargs and the
marshmallow schema that validate the body, flask-smorest's wrappers, the JSON request line and the
Prometheus metrics, the code-lookup throttle (a search reads the code index alone, without the
throttle's counters in the same pipeline), the error handlers and the middleware that collapses
"//" in paths. It runs on the provider's own Flask subclass (ProviderApp), so what that saves on
every request the floor saves too. So, measured in the same run as bench/baseline_app.py:

- floor / baseline is what the ledger call and JSON in and out cost over one PING: the part no
  trimming of the web stack can reach;
- provider / floor is what the web stack's features cost on top.

It is a benchmark instrument, not a service: it answers a valid request like the provider does, and
anything else with whatever error Flask raises.

    gunicorn -c bench/gunicorn_conf.py -w 2 -b 127.0.0.1:8002 'bench.floor_app:create_app()'

(A factory, not a module-level app: importing this module builds nothing, so tests/test_bench_floor.py
can build one on its own Redis.)
"""

from __future__ import annotations

import redis
from flask import Flask, request

from giftcard_provider import ProviderApp
from giftcard_provider.config import Settings
from giftcard_provider.identity import identities
from giftcard_provider.jsonio import DecimalJSONProvider
from giftcard_provider.links import Links
from giftcard_provider.money import Amount
from giftcard_provider.store import LedgerStore


def create_app(settings: Settings | None = None, redis_client: redis.Redis | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = ProviderApp(__name__)
    app.json = DecimalJSONProvider(app)
    app.config["SETTINGS"] = settings
    store = LedgerStore(redis_client, settings)  # None: connects from settings, as the provider does
    # What the blueprints' answer builders read (links(), settings()), as create_app sets it.
    app.extensions["giftcard_provider"] = {"store": store, "links": Links(settings.href_prefix)}

    # Imported here, as create_app does: the blueprints import schemas/, which imports giftcard_provider.
    from giftcard_provider.blueprints import answer, content_range, requested_range
    from giftcard_provider.blueprints.giftcards import card_body, search_result
    from giftcard_provider.blueprints.operations import operation_body
    from giftcard_provider.blueprints.transactions import authorization, transaction_ref

    def body() -> dict:
        return app.json.loads(request.get_data())

    @app.get("/health")
    def health():
        return answer({"status": "ok"})

    @app.post("/giftcards/<card_id>/transactions")
    def authorize(card_id):
        b = body()
        b["value"] = Amount.from_decimal(b["value"])  # what the provider's MoneyField loads
        _, tx_id, _ = store.authorize(card_id, **authorization(b))
        return answer(transaction_ref(card_id, tx_id))

    @app.get("/giftcards/<card_id>")
    def card(card_id):
        return answer(card_body(store.card(card_id)))

    @app.post("/giftcards/_search")
    def search():
        b = body()
        client = b["client"]
        found = store.find_by_code(b["cart"]["redemptionCode"])
        shopper = identities(client.get("id"), client.get("email"), client.get("document"))
        cards = [found] if found and found.visible_to(shopper) and found.usable else []
        start, stop = requested_range(default_last=49)
        page = cards[start : stop + 1]
        return answer([search_result(c) for c in page], content_range(start, len(page), len(cards)))

    @app.post("/giftcards/<card_id>/transactions/<tx_id>/settlements")
    def settle(card_id, tx_id):
        b = body()
        _, op, exponent = store.settle(card_id, tx_id, Amount.from_decimal(b["value"]), b["requestId"])
        return answer(operation_body(op, exponent))

    return app
