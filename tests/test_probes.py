"""/health and /ready: unauthenticated, cheap, and /ready turns red when the store cannot run the ledger."""

import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from giftcard_provider import create_app
from giftcard_provider.ledger_library import RELEASE, Library, installed_libraries, prune_libraries
from giftcard_provider.money import Amount

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
    assert real_redis.fcall_ro(RELEASE.function("gc_ping"), 0) == RELEASE.digest  # the library is back


def test_two_releases_share_one_redis_each_running_its_own_library(real_redis):
    """A rolling deploy: processes of two releases side by side on one Redis. Each calls only its own
    release's functions (named by the digest of its library), so neither runs the other's code,
    neither replaces the other's library, and both stay ready while their calls interleave."""
    older = Library(RELEASE.source + "\n-- an older release\n")
    assert older.digest != RELEASE.digest
    apps = {lib.digest: create_app(make_settings(), redis_client=real_redis) for lib in (older, RELEASE)}
    stores = {}
    for lib in (older, RELEASE):
        store = apps[lib.digest].extensions["giftcard_provider"]["store"]
        store.library = lib
        stores[lib.digest] = store
    card, _ = stores[older.digest].create_card(
        relation_name="r", caption="c", profile_id="p@example.com", currency="USD", restricted_to_owner=False,
        multiple_redemptions=True, multiple_credits=True, emission_ms=None, expiring_ms=None,
    )  # fmt: skip
    loads_before = _function_loads(real_redis)
    for i in range(10):  # interleaved writes and reads, one release after the other
        for digest, store in stores.items():
            store.authorize(card.id, operation="Credit", amount=Amount(1, 0), request_id=f"{digest}-{i}", token="")
            assert store.card(card.id) is not None
            assert apps[digest].test_client().get("/ready").json == {"status": "ready"}
            assert store.library.ping(real_redis) == {digest}  # its own gc_ping answers its own digest
    assert _function_loads(real_redis) - loads_before <= 1  # the newer one loaded once; no swapping back and forth
    assert installed_libraries(real_redis) == sorted([older.name, RELEASE.name])
    assert stores[RELEASE.digest].card(card.id).balance == 2000  # 20 credits of 1 USD


def test_pruning_other_releases_libraries_is_safe_while_they_run(real_redis):
    older = Library(RELEASE.source + "\n-- an older release\n")
    old_app = create_app(make_settings(), redis_client=real_redis)
    old_store = old_app.extensions["giftcard_provider"]["store"]
    old_store.library = older
    assert old_app.test_client().get("/ready").status_code == 200
    create_app(make_settings(), redis_client=real_redis).test_client().get("/ready")
    legacy = "#!lua name=giftcard_ledger_v1\nredis.register_function('gc_ping', function() return 1 end)"
    real_redis.function_load(legacy)  # the library of the releases before functions carried their digest
    assert prune_libraries(real_redis, keep=RELEASE) == sorted([older.name, "giftcard_ledger_v1"])
    assert installed_libraries(real_redis) == [RELEASE.name]
    assert old_app.test_client().get("/ready").status_code == 200  # the older process loads its own again
    assert installed_libraries(real_redis) == sorted([older.name, RELEASE.name])


def _function_loads(client) -> int:
    return client.info("commandstats").get("cmdstat_function|load", {}).get("calls", 0)


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
