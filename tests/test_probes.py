"""/health and /ready: unauthenticated, cheap, and /ready turns red when the store cannot run the ledger."""

import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from giftcard_provider import create_app
from giftcard_provider.store import LIBRARY, LIBRARY_DIGEST

from .conftest import make_settings
from .redis_server import free_port


def test_probes_need_no_credentials(client):
    assert client.get("/health").json == {"status": "ok"}
    assert client.get("/ready").json == {"status": "ready"}


def test_ready_is_503_quickly_when_redis_is_unreachable():
    dead = redis.Redis(port=free_port(), socket_connect_timeout=0.2, decode_responses=True, retry=Retry(NoBackoff(), 0))
    client = create_app(make_settings(), redis_client=dead).test_client()
    started = time.monotonic()
    response = client.get("/ready")
    assert response.status_code == 503 and response.json["status"] == "unavailable"
    assert time.monotonic() - started < 1
    assert client.get("/health").status_code == 200  # the process itself is fine


def test_ready_reloads_a_flushed_library(real_redis):
    client = create_app(make_settings(), redis_client=real_redis).test_client()
    assert client.get("/ready").status_code == 200
    real_redis.function_flush()
    assert real_redis.function_list() == []
    assert client.get("/ready").status_code == 200
    assert real_redis.fcall_ro("gc_ping", 0) == LIBRARY_DIGEST  # the library is back


def test_an_older_release_s_library_is_replaced_once_per_process_and_never_swapped_back(real_redis):
    """Redis keeps a loaded library across restarts: an upgrade must not run the previous release's functions."""
    older = LIBRARY.replace(LIBRARY_DIGEST, "older-release")
    real_redis.function_load(older, replace=True)
    app = create_app(make_settings(), redis_client=real_redis)
    client = app.test_client()
    assert client.get("/ready").json == {"status": "ready"}  # the first call of the process loads its own
    assert real_redis.fcall_ro("gc_ping", 0) == LIBRARY_DIGEST

    real_redis.function_load(older, replace=True)  # an older process, still running, did the same
    response = client.get("/ready")
    assert response.status_code == 503 and "another release" in response.json["reason"]
    assert real_redis.fcall_ro("gc_ping", 0) == "older-release"  # not swapped back by a probe


def test_an_older_caller_of_gc_create_card_is_refused_not_left_unfindable(real_redis):
    create_app(make_settings(), redis_client=real_redis).test_client().get("/ready")
    keys = ["gc:{c1}:card", "gc:code:abc", "gc:owner:someone"]  # how the previous release called it
    assert real_redis.fcall("gc_create_card", 3, *keys, "c1", "", "", "1000", "currency", "USD") == ["wrong_keys"]
    assert real_redis.keys("gc:*") == []


def test_search_by_client_reloads_a_flushed_library(real_redis):
    """The owner search reads cards with a pipeline of FCALL_RO: it heals a lost library like every call."""
    hub_app = create_app(make_settings(), redis_client=real_redis)
    store = hub_app.extensions["giftcard_provider"]["store"]
    card, _ = store.create_card(
        relation_name="r", caption="c", profile_id="p@example.com", currency="USD", restricted_to_owner=False,
        multiple_redemptions=True, multiple_credits=True, emission_ms=None, expiring_ms=None,
    )  # fmt: skip
    real_redis.function_flush()
    assert [c.id for c in store.cards_of({"p@example.com"})] == [card.id]
