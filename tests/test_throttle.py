"""Failed redemption-code searches are throttled per client identity and per source address, in Redis."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from giftcard_provider import create_app
from giftcard_provider.config import ConfigError

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub
from .redis_server import free_port
from .test_observability import delta, samples

CLIENT_LIMIT, ADDRESS_LIMIT = 3, 5
WRONG = "AAAA-BBBB-CCCC-DDDD-EEEE"
AUTH = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}


@pytest.fixture
def settings():
    return make_settings(
        code_lookup_limit=f"{CLIENT_LIMIT}/minute;20/day", code_lookup_address_limit=f"{ADDRESS_LIMIT}/minute"
    )


def shopper(n: int) -> dict:
    return {"id": f"shopper-{n}", "email": f"shopper{n}@example.com", "document": str(n)}


def search(hub: Hub, code: str, n: int, address: str = "192.0.2.1", **headers):
    body = {"client": shopper(n), "cart": {"redemptionCode": code, "relationName": None, "grandTotal": 1}}
    response = hub.client.post(
        "/giftcards/_search", json=body, headers={**hub.headers, **headers}, environ_base={"REMOTE_ADDR": address}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return [card["id"] for card in response.json]


@pytest.fixture
def card(hub):
    created = hub.funded_card(Decimal("25"))
    return created["id"], created["redemptionCode"]


def test_a_client_is_throttled_after_n_failures_even_with_the_right_code(hub, client, card, capsys):
    card_id, code = card
    before = samples(client)
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, 1) == []
    assert search(hub, code, 1) == []  # throttled: the right code finds nothing, exactly like a wrong one
    assert search(hub, code, 2) == [card_id]  # another client, same address: not throttled
    after = samples(client)
    assert delta(before, after, "giftcard_code_lookups_total", outcome="not_found") == CLIENT_LIMIT
    assert delta(before, after, "giftcard_code_lookups_total", outcome="throttled") == 1
    assert delta(before, after, "giftcard_code_lookups_total", outcome="found") == 1
    assert delta(before, after, "giftcard_code_lookups_throttled_total", scope="client") == 1

    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (warning,) = [line for line in lines if line["message"] == "code look-up throttled"]
    assert (warning["level"], warning["scope"], warning["limit"]) == ("WARNING", "client", "3 per 1 minute")
    assert warning["address"] == "192.0.2.1" and "shopper-1" in warning["clients"]
    outcomes = [line.get("code_lookup") for line in lines if line["message"] == "request"][-5:]
    assert outcomes == ["not_found"] * CLIENT_LIMIT + ["throttled", "found"]
    assert code not in "\n".join(map(json.dumps, lines))


def test_either_identity_of_a_client_is_enough_to_throttle(hub, card):
    _, code = card
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, 1) == []
    body = {"client": {"id": "someone-else", "email": "SHOPPER1@example.com"}, "cart": {"redemptionCode": code}}
    assert hub.post("/giftcards/_search", body).json == []  # same e-mail (case aside), new id: still throttled


def test_an_address_is_throttled_after_n_failures_across_clients(hub, client, card):
    card_id, code = card
    for n in range(ADDRESS_LIMIT):  # one failure each: no client reaches its own limit
        assert search(hub, WRONG, 100 + n) == []
    before = samples(client)
    assert search(hub, code, 200) == []  # a fresh client, from the guessing address
    assert search(hub, code, 200, address="198.51.100.9") == [card_id]  # the same client elsewhere
    after = samples(client)
    assert delta(before, after, "giftcard_code_lookups_throttled_total", scope="address") == 1


def test_successful_lookups_and_listings_are_never_counted(hub, card):
    card_id, code = card
    for _ in range(3 * ADDRESS_LIMIT):
        assert search(hub, code, 1) == [card_id]
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, 1) == []
    assert search(hub, code, 1) == []
    # Without a code the client's own cards are still listed (only code look-ups are limited).
    owned = hub.funded_card(Decimal("1"), profileId="shopper-1")
    listing = hub.post("/giftcards/_search", {"client": shopper(1), "cart": {"redemptionCode": None}})
    assert [c["id"] for c in listing.json] == [owned["id"]]


def test_forwarded_address_is_used_behind_trusted_proxies(backend, hub, card):
    card_id, code = card
    settings = make_settings(code_lookup_limit="", code_lookup_address_limit="2/minute", trusted_proxy_hops=1)
    proxied = Hub(create_app(settings, redis_client=backend).test_client(), hub.headers)
    for n in range(2):
        assert search(proxied, WRONG, n, address="10.1.1.1", **{"X-Forwarded-For": "spoofed, 203.0.113.5"}) == []
    assert search(proxied, code, 9, address="10.1.1.1", **{"X-Forwarded-For": "203.0.113.5"}) == []
    assert search(proxied, code, 9, address="10.1.1.1", **{"X-Forwarded-For": "203.0.113.6"}) == [card_id]


def test_counters_live_in_redis_and_are_shared_by_every_worker(backend, hub, settings, card):
    card_id, code = card
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, 1) == []
    keys = sorted(backend.scan_iter(match=f"{settings.key_prefix}:limits:*"))
    counters = [k for k in keys if ":limits:throttled/" not in k]
    flags = {k: backend.get(k) for k in keys if ":limits:throttled/" in k}
    # One moving window per limit: 3 identities (id, e-mail, document) x 2 client limits + 1 address limit;
    # no identity in clear.
    assert len(counters) == 7
    # The spent per-minute limit raised a flag for each identity, expiring with its window.
    assert sorted(flags.values()) == ["3 per 1 minute"] * 3
    assert all(0 < backend.ttl(k) <= 60 for k in flags)
    assert not any("shopper" in key or "192.0.2.1" in key for key in keys)
    other_worker = Hub(create_app(settings, redis_client=backend).test_client(), hub.headers)
    assert search(other_worker, code, 1) == []
    backend.delete(*keys)  # forgetting the counters lifts the throttle
    assert search(other_worker, code, 1) == [card_id]


def test_limiter_does_not_fail_open_when_redis_fails(settings):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.1, decode_responses=True, retry=Retry(NoBackoff(), 0))
    client = create_app(settings, redis_client=dead).test_client()
    before = samples(client)
    body = {"client": shopper(1), "cart": {"redemptionCode": WRONG}}
    response = client.post("/giftcards/_search", json=body, headers=AUTH)
    assert (response.status_code, response.json["code"]) == (503, "store_unavailable")
    assert response.headers["Retry-After"] == "1"
    # The throttle's flags are read with the code index: that read fails, so nothing is looked up.
    after = samples(client)
    assert delta(before, after, "giftcard_redis_errors_total", component="ledger", error="ConnectionError") == 1
    assert delta(before, after, "giftcard_code_lookups_total", outcome="not_found") == 0


def test_a_failed_count_does_not_fail_open(backend, settings, card, monkeypatch):
    # Counting a failure is the limiter's own call: if it fails, the search is a 503, not an uncounted [].
    from limits.errors import StorageError

    app = create_app(settings, redis_client=backend)
    throttle = app.extensions["giftcard_provider"]["throttle"]

    def broken(*args, **kwargs):
        raise StorageError(redis.ConnectionError("gone"))

    monkeypatch.setattr(throttle.limiter, "hit", broken)
    body = {"client": shopper(1), "cart": {"redemptionCode": WRONG}}
    response = app.test_client().post("/giftcards/_search", json=body, headers=AUTH)
    assert (response.status_code, response.json["code"]) == (503, "store_unavailable")
    assert "rate limiter" in response.json["message"]


@pytest.mark.parametrize("setting", ["code_lookup_limit", "code_lookup_address_limit"])
def test_a_malformed_limit_is_a_config_error(backend, setting):
    with pytest.raises(ConfigError, match=setting.upper()):
        create_app(make_settings(**{setting: "ten per fortnight"}), redis_client=backend)
