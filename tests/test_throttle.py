"""Failed redemption-code searches are throttled per shopper (the whole identity sent), never by a bucket
that other identities can spend; the store-wide brake is opt-in and warns first; the state is bounded."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from giftcard_provider import create_app, throttle
from giftcard_provider.config import ConfigError, Settings

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub
from .redis_server import RedisServer, free_port
from .test_observability import delta, log_lines, samples

ROOT = Path(__file__).resolve().parent.parent
CLIENT_LIMIT = 3
WRONG = "AAAA-BBBB-CCCC-DDDD-EEEE"
AUTH = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
VICTIM = {"id": "victim-7f3a", "email": "Victim.Shopper@example.com", "document": "123.456.789-00"}


@pytest.fixture
def settings():
    return make_settings(code_lookup_limit=f"{CLIENT_LIMIT}/minute")


def shopper(n: int) -> dict:
    return {"id": f"shopper-{n}", "email": f"shopper{n}@example.com", "document": str(n)}


def made_up() -> dict:
    tag = uuid.uuid4().hex
    return {"id": tag, "email": f"{tag}@example.com", "document": tag[:11]}


def search(hub: Hub, code: str, client: dict, address: str = "192.0.2.1", **headers) -> list[str]:
    body = {"client": client, "cart": {"redemptionCode": code, "relationName": None, "grandTotal": 1}}
    response = hub.client.post(
        "/giftcards/_search", json=body, headers={**hub.headers, **headers}, environ_base={"REMOTE_ADDR": address}
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return [card["id"] for card in response.json]


@pytest.fixture
def card(hub):
    created = hub.funded_card(Decimal("25"))
    return created["id"], created["redemptionCode"]


@pytest.fixture(autouse=True)
def clock(monkeypatch):
    """The throttle's clock, held still by the tests (50 s into this minute's window), so that no test
    straddles a window boundary by chance. Near real time: Redis expires the windows on its own clock."""
    now = [time.time() // 60 * 60 + 50]
    monkeypatch.setattr(throttle.time, "time", lambda: now[0])
    return now


def limiter_keys(client, settings) -> list[str]:
    return sorted(client.scan_iter(match=f"{settings.key_prefix}:limits:*"))


# -- nobody can block somebody else --------------------------------------------------------------


def test_a_flood_under_made_up_identities_never_blocks_a_real_shopper(backend, capsys):
    # The defaults, exactly: the Hub is the only caller, so every search comes from one address.
    hub = Hub(create_app(make_settings(), redis_client=backend).test_client(), AUTH)
    card_id, code = (c := hub.funded_card(Decimal("25")))["id"], c["redemptionCode"]
    for _ in range(120):
        assert search(hub, WRONG, made_up()) == []
    assert search(hub, code, VICTIM) == [card_id]
    assert "code look-up throttled" not in capsys.readouterr().out


def test_wrong_codes_under_a_victims_email_or_id_do_not_block_the_victim(hub, card):
    card_id, code = card
    for n in range(60):  # the victim's e-mail (any case) with other ids, and the victim's id with other e-mails
        assert search(hub, WRONG, {**VICTIM, "id": f"other-{n}", "email": VICTIM["email"].upper()}) == []
        assert search(hub, WRONG, {**VICTIM, "email": f"other{n}@example.com"}) == []
        assert search(hub, WRONG, {"email": VICTIM["email"]}) == []
    assert search(hub, code, VICTIM) == [card_id]


def test_anonymous_searches_are_not_limited_per_shopper(hub, card, capsys):
    # Nothing tells anonymous shoppers apart: one shared bucket would let one guesser block them all.
    card_id, code = card
    nobody = {"id": None, "email": " ", "document": None}
    for _ in range(5 * CLIENT_LIMIT):
        assert search(hub, WRONG, nobody) == []
    assert search(hub, code, nobody) == [card_id]
    assert search(hub, code, {}) == [card_id]
    assert "code look-up throttled" not in capsys.readouterr().out


# -- one identity that fails too often is throttled ---------------------------------------------


def test_an_identity_is_throttled_after_n_failures_even_with_the_right_code(hub, client, card, capsys):
    card_id, code = card
    before = samples(client)
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, VICTIM) == []
    assert search(hub, code, VICTIM) == []  # throttled: the right code finds nothing, exactly like a wrong one
    same = {"id": f" {VICTIM['id']} ", "email": VICTIM["email"].lower(), "document": VICTIM["document"]}
    assert search(hub, code, same) == []  # the same identity, spelled differently
    assert search(hub, code, shopper(2)) == [card_id]  # another shopper, same address: not throttled
    after = samples(client)
    assert delta(before, after, "giftcard_code_lookups_total", outcome="not_found") == CLIENT_LIMIT
    assert delta(before, after, "giftcard_code_lookups_total", outcome="throttled") == 2
    assert delta(before, after, "giftcard_code_lookups_total", outcome="found") == 1
    assert delta(before, after, "giftcard_code_lookups_throttled_total", scope="client") == 2

    lines = log_lines(capsys.readouterr().out)
    warnings = [line for line in lines if line["message"] == "code look-up throttled"]
    assert len(warnings) == 2
    assert (warnings[0]["level"], warnings[0]["scope"], warnings[0]["limit"]) == ("WARNING", "client", "3/minute")
    outcomes = [line.get("code_lookup") for line in lines if line["message"] == "request"][-6:]
    assert outcomes == ["not_found"] * CLIENT_LIMIT + ["throttled", "throttled", "found"]


def test_the_limit_is_a_sliding_window(hub, card, clock):
    # 3 failures 50 s into a window; 10 s into the next one 5/6 of them still count (2.5 of 3).
    card_id, code = card
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, VICTIM) == []
    assert search(hub, code, VICTIM) == []
    clock[0] += 20
    assert search(hub, WRONG, VICTIM) == []  # not throttled: 2.5 failures in the last minute
    assert search(hub, code, VICTIM) == []  # 3.5: throttled again, not handed a fresh burst
    clock[0] += 60  # a window on: the 3 failures have left the sliding window, 1 of the next one is 1/6 in it
    assert search(hub, code, VICTIM) == [card_id]


def test_successful_lookups_and_listings_are_never_counted(hub, card):
    card_id, code = card
    for _ in range(3 * CLIENT_LIMIT):
        assert search(hub, code, shopper(1)) == [card_id]
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, shopper(1)) == []
    assert search(hub, code, shopper(1)) == []
    # Without a code the client's own cards are still listed (only code look-ups are limited).
    owned = hub.funded_card(Decimal("1"), profileId="shopper-1")
    listing = hub.post("/giftcards/_search", {"client": shopper(1), "cart": {"redemptionCode": None}})
    assert [c["id"] for c in listing.json] == [owned["id"]]


# -- the store-wide brake ------------------------------------------------------------------------


def test_the_store_wide_brake_is_off_by_default_and_in_app_json():
    assert (Settings().code_lookup_limit, Settings().code_lookup_address_limit) == ("10/minute", "")
    env = json.loads((ROOT / "app.json").read_text())["env"]
    defaults = Settings()
    for name in ("CODE_LOOKUP_LIMIT", "CODE_LOOKUP_ADDRESS_LIMIT", "CODE_LOOKUP_MAX_TRACKED"):
        assert env[name]["value"] == str(getattr(defaults, name.lower())), name


def test_the_brake_warns_before_it_blocks_every_shopper(backend, capsys):
    settings = make_settings(code_lookup_limit="", code_lookup_address_limit="10/minute")
    client = create_app(settings, redis_client=backend).test_client()
    hub = Hub(client, AUTH)
    card_id, code = (c := hub.funded_card(Decimal("25")))["id"], c["redemptionCode"]
    before = samples(client)
    capsys.readouterr()
    for n in range(10):
        assert search(hub, WRONG, made_up() if n % 2 else {}) == []  # anonymous searches count here too
    assert search(hub, code, VICTIM) == []  # the brake: nobody's code is looked up
    assert search(hub, code, VICTIM, address="198.51.100.9") == [card_id]  # the brake is per address
    after = samples(client)
    assert delta(before, after, "giftcard_code_lookup_brake_alerts_total") == 1
    assert delta(before, after, "giftcard_code_lookups_throttled_total", scope="address") == 1

    lines = log_lines(capsys.readouterr().out)
    messages = [line["message"] for line in lines if line["level"] == "WARNING"]
    assert messages == [
        "code look-up brake near: failed code searches from one address approach its limit",
        "code look-up throttled",
    ]
    (alert,) = [line for line in lines if line["message"].startswith("code look-up brake near")]
    assert (alert["scope"], alert["limit"], alert["failures"]) == ("address", "10/minute", 8)
    requests = [line for line in lines if line["message"] == "request"]
    assert requests.index(next(r for r in requests if r.get("code_lookup") == "throttled")) == 10
    assert lines.index(requests[6]) < lines.index(alert) < lines.index(requests[7])  # with the 8th failure


def test_forwarded_address_is_used_behind_trusted_proxies(backend, hub, card):
    card_id, code = card
    settings = make_settings(code_lookup_limit="", code_lookup_address_limit="2/minute", trusted_proxy_hops=1)
    proxied = Hub(create_app(settings, redis_client=backend).test_client(), hub.headers)
    for n in range(2):
        assert search(proxied, WRONG, shopper(n), "10.1.1.1", **{"X-Forwarded-For": "spoofed, 203.0.113.5"}) == []
    assert search(proxied, code, shopper(9), "10.1.1.1", **{"X-Forwarded-For": "203.0.113.5"}) == []
    assert search(proxied, code, shopper(9), "10.1.1.1", **{"X-Forwarded-For": "203.0.113.6"}) == [card_id]


# -- logs and Redis name subjects by keyed hash only ---------------------------------------------


def test_logs_and_keys_never_name_a_shopper_or_an_address(backend, capsys):
    settings = make_settings(code_lookup_limit="2/minute", code_lookup_address_limit="3/minute")
    app = create_app(settings, redis_client=backend)
    hub = Hub(app.test_client(), AUTH)
    code = hub.funded_card(Decimal("25"))["redemptionCode"]
    for client in (VICTIM, VICTIM, shopper(5)):  # the victim's limit spent, the brake's about to be
        search(hub, WRONG, client, address="203.0.113.77")
    assert search(hub, code, VICTIM, address="203.0.113.77") == []
    out = capsys.readouterr().out
    keys = limiter_keys(backend, settings)
    stored = json.dumps({k: backend.hgetall(k) for k in keys})
    for secret in ("victim", "7f3a", "123.456", "203.0.113.77", code):
        assert secret not in out.lower() and secret not in stored.lower(), secret
    # The logs carry the same keyed hash as the Redis field: an operator who knows the identity
    # (and the secret) can find its counts, nobody else can.
    lookups = app.extensions["giftcard_provider"]["throttle"]
    subject = lookups.subject("client", VICTIM["id"], VICTIM["email"].lower(), VICTIM["document"])
    warnings = [line for line in log_lines(out) if line["level"] == "WARNING"]
    assert [(w["message"][:19], w["scope"]) for w in warnings] == [
        ("code look-up brake ", "address"),
        ("code look-up thrott", "client"),
    ]
    assert warnings[1]["subject"] == subject
    assert warnings[0]["subject"] == lookups.subject("address", "203.0.113.77")
    assert any(backend.hget(k, subject) for k in keys)


def test_counters_live_in_redis_and_are_shared_by_every_worker(backend, hub, settings, card, clock):
    card_id, code = card
    for _ in range(CLIENT_LIMIT):
        assert search(hub, WRONG, shopper(1)) == []
    (key,) = limiter_keys(backend, settings)  # one hash: this minute's failures of every shopper
    assert key.startswith(f"{settings.key_prefix}:limits:client:60:")
    counts = backend.hgetall(key)
    assert list(counts.values()) == [str(CLIENT_LIMIT)] and all(len(f) == 16 for f in counts)
    # to the end of the next window, read as the previous one (Redis rounds TTL to whole seconds)
    assert 60 <= backend.ttl(key) <= 120
    other_worker = Hub(create_app(settings, redis_client=backend).test_client(), hub.headers)
    assert search(other_worker, code, shopper(1)) == []
    backend.hdel(key, *counts)  # forgetting a subject's counts lifts its throttle
    assert search(other_worker, code, shopper(1)) == [card_id]


# -- fail closed --------------------------------------------------------------------------------


def test_limiter_does_not_fail_open_when_redis_fails(settings):
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.1, decode_responses=True, retry=Retry(NoBackoff(), 0))
    client = create_app(settings, redis_client=dead).test_client()
    before = samples(client)
    body = {"client": shopper(1), "cart": {"redemptionCode": WRONG}}
    response = client.post("/giftcards/_search", json=body, headers=AUTH)
    assert (response.status_code, response.json["code"]) == (503, "store_unavailable")
    assert response.headers["Retry-After"] == "1"
    # The counts are read with the code index: that read fails, so nothing is looked up.
    after = samples(client)
    assert delta(before, after, "giftcard_redis_errors_total", component="ledger", error="ConnectionError") == 1
    assert delta(before, after, "giftcard_code_lookups_total", outcome="not_found") == 0


def test_a_failure_that_cannot_be_counted_is_a_503(real_redis, settings):
    # Redis out of memory: the reads still work, the count (a write) is refused, and the search must
    # not answer an uncounted [].
    client = create_app(settings, redis_client=real_redis).test_client()
    assert client.get("/ready").status_code == 200  # a new store is marked v2 before memory runs out
    before = samples(client)
    real_redis.config_set("maxmemory-policy", "noeviction")
    real_redis.config_set("maxmemory", 1)
    try:
        body = {"client": shopper(1), "cart": {"redemptionCode": WRONG}}
        response = client.post("/giftcards/_search", json=body, headers=AUTH)
    finally:
        real_redis.config_set("maxmemory", 0)
    assert (response.status_code, response.json["code"]) == (503, "store_unavailable")
    assert "rate limiter" in response.json["message"]
    after = samples(client)
    assert delta(before, after, "giftcard_redis_errors_total", component="limiter", error="OutOfMemoryError") == 1


@pytest.mark.parametrize(
    "setting,value",
    [
        ("code_lookup_limit", "ten per fortnight"),
        ("code_lookup_limit", "0/minute"),
        ("code_lookup_address_limit", "10/minute;5"),
        ("code_lookup_max_tracked", 0),
    ],
)
def test_a_malformed_setting_is_a_config_error(backend, setting, value):
    with pytest.raises(ConfigError, match=setting.upper()):
        create_app(make_settings(**{setting: value}), redis_client=backend)


def test_limit_notation():
    parsed = throttle.parse_limits("X", "10/minute; 50 per day;3/2 hours")
    assert [(limit.count, limit.seconds) for limit in parsed] == [(10, 60), (50, 86400), (3, 7200)]
    assert throttle.parse_limits("X", " ") == []


# -- bounded state ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_redis():
    """The Redis app.json provisions (heroku-redis:mini): 25 MB, noeviction."""
    server = RedisServer("--maxmemory", "25mb", "--maxmemory-policy", "noeviction").start()
    yield redis.Redis(port=server.port, decode_responses=True)
    server.close()


def limiter_bytes(client, keys) -> int:
    return sum(client.memory_usage(k, samples=0) or 0 for k in keys)


def test_a_flood_of_new_identities_cannot_grow_the_limiter_past_its_cap(small_redis, capsys):
    small_redis.flushall()
    cap = 50
    # No brake: a brake that engages stops the counting, and would hide the growth being tested.
    settings = make_settings(
        code_lookup_limit=f"{CLIENT_LIMIT}/minute", code_lookup_address_limit="", code_lookup_max_tracked=cap
    )
    client = create_app(settings, redis_client=small_redis).test_client()
    hub = Hub(client, AUTH)
    card_id, code = (c := hub.funded_card(Decimal("25")))["id"], c["redemptionCode"]
    before = samples(client)
    search(hub, WRONG, shopper(1))  # tracked before the flood
    for _ in range(2 * cap):
        search(hub, WRONG, made_up())
    keys = limiter_keys(small_redis, settings)
    size, used = limiter_bytes(small_redis, keys), small_redis.info("memory")["used_memory"]
    for _ in range(4 * cap):
        search(hub, WRONG, made_up())
    keys = limiter_keys(small_redis, settings)
    assert [small_redis.hlen(k) for k in keys] == [cap]  # one window hash, at its cap
    assert limiter_bytes(small_redis, keys) == size  # the tracked state stopped growing
    assert small_redis.info("memory")["used_memory"] - used < 64 * 1024  # and so did Redis (allocator noise)
    assert delta(before, samples(client), "giftcard_code_lookups_untracked_total", scope="client") == 5 * cap + 1
    full = [line for line in log_lines(capsys.readouterr().out) if line["message"].startswith("code look-up tracking")]
    assert len(full) == 1 and full[0]["max_tracked"] == cap

    # A subject tracked before the flood is still counted and throttled; one new to the full window is
    # not (what a flood buys: no more than a new identity per guess buys anyway). The ledger still takes
    # writes, and a shopper still finds their card.
    for _ in range(CLIENT_LIMIT - 1):
        search(hub, WRONG, shopper(1))
    assert search(hub, code, shopper(1)) == []
    for _ in range(CLIENT_LIMIT):
        search(hub, WRONG, shopper(2))
    assert search(hub, code, shopper(2)) == [card_id]
    assert hub.debit(card_id, Decimal("5"))
    assert search(hub, code, VICTIM) == [card_id]


def test_a_full_window_costs_the_bytes_the_docs_state(small_redis):
    """docs/security.md, "Throttling of redemption-code guessing": at most about 110 bytes of used_memory per tracked
    subject (77 by MEMORY USAGE, plus the hash table's buckets, doubled while it rehashes; 108 measured
    on a fresh server, 85 on one that held the module's other tests' data), so a window hash at the
    default cap of 10,000 subjects costs at most ~1.1 MB, and a limit (two live windows) ~2.2 MB of the
    25 MB plan."""
    small_redis.flushall()
    settings = make_settings()
    lookups = create_app(settings, redis_client=small_redis).extensions["giftcard_provider"]["throttle"]
    (limit,) = lookups.limits["client"]
    now = time.time()
    used = small_redis.info("memory")["used_memory"]
    for n in range(settings.code_lookup_max_tracked + 500):
        lookups.count_failure([throttle.Check("client", lookups.subject("client", str(n), "", ""), limit)], now)
    (key,) = limiter_keys(small_redis, settings)
    assert small_redis.hlen(key) == settings.code_lookup_max_tracked
    assert small_redis.memory_usage(key, samples=0) / settings.code_lookup_max_tracked <= 80
    grown = small_redis.info("memory")["used_memory"] - used
    assert grown / settings.code_lookup_max_tracked <= 110
    assert 2 * grown <= 2.2e6


def test_a_code_search_stays_two_round_trips_and_a_failure_pays_one_more(real_redis):
    # Counted by Redis itself (read events on client sockets), like bench/round_trips.py.
    settings = make_settings(code_lookup_limit="2/minute;100/hour", code_lookup_address_limit="50/minute")
    hub = Hub(create_app(settings, redis_client=real_redis).test_client(), AUTH)
    card_id, code = (c := hub.funded_card(Decimal("25")))["id"], c["redemptionCode"]

    def round_trips(code: str) -> tuple[list[str], int]:
        before = int(real_redis.info("stats")["total_reads_processed"])
        found = search(hub, code, shopper(1))
        return found, int(real_redis.info("stats")["total_reads_processed"]) - before - 1  # less the INFO itself

    assert round_trips(code) == ([card_id], 2)  # counts and code index, then the card
    assert round_trips(WRONG) == ([], 2)  # counts and code index, then the count
    search(hub, WRONG, shopper(1))
    assert round_trips(code) == ([], 1)  # throttled: the card is not read
