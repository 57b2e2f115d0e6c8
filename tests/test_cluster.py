"""Redis Cluster specifics, on a real local 3-primary cluster (tests/redis_server.LocalCluster).

The protocol suite itself already runs on the cluster (the `cluster` backend in
conftest.py); these tests cover what only a cluster has: routing, several
shards, a primary without the library, a cluster that cannot be reached.
"""

from __future__ import annotations

import time
from decimal import Decimal

import pytest
from redis.cluster import RedisCluster

from giftcard_provider import create_app
from giftcard_provider.config import ConfigError, Settings
from giftcard_provider.ledger_library import RELEASE, Library

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub
from .redis_server import free_cluster_port

pytestmark = pytest.mark.slow


@pytest.fixture
def app(cluster_redis):
    return create_app(make_settings(hold_lifetime_seconds=0.2), redis_client=cluster_redis)


@pytest.fixture
def hub(app):
    return Hub(app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})


@pytest.fixture
def store(app):
    return app.extensions["giftcard_provider"]["store"]


def socket_reads(client: RedisCluster) -> int:
    """Read events on client sockets, summed over the primaries: one per command or pipeline sent
    (the INFO that reads the counter counts itself too, one per primary)."""
    return sum(client.get_redis_connection(n).info("stats")["total_reads_processed"] for n in client.get_primaries())


def commands(client: RedisCluster) -> set[str]:
    """Every command the primaries ran (including inside functions), from INFO commandstats."""
    return {name for n in client.get_primaries() for name in client.get_redis_connection(n).info("commandstats")}


def node_of(store, card_id: str) -> str:
    return store.redis.get_node_from_key(store.keys.card(card_id)).name


def test_a_ledger_call_is_one_round_trip_to_its_shard(cluster_redis, hub):
    """redis-py would ask a node for FCALL's keys first (COMMAND GETKEYS); we read them from the call."""
    card = hub.funded_card(Decimal("10"))
    before = socket_reads(cluster_redis)
    tx = hub.debit(card["id"], Decimal("3"))
    hub.get(f"/giftcards/{card['id']}")
    hub.get(f"/giftcards/{card['id']}/transactions/{tx}/cancellations")
    assert socket_reads(cluster_redis) - before - len(cluster_redis.get_primaries()) == 3
    assert "cmdstat_command|getkeys" not in commands(cluster_redis)


def cards_on_every_shard(store, hub, at_least: int = 12) -> list[dict]:
    """Funded cards, at least `at_least` and on every primary. Ids are random: 12 cards miss one of
    three shards about 2% of the time, so the test makes more until each shard has one."""
    cards = []
    while len(cards) < at_least or len({node_of(store, c["id"]) for c in cards}) < 3:
        assert len(cards) < 200, "card ids do not spread over the shards"
        cards.append(hub.funded_card(Decimal("10")))
    return cards


def test_cards_spread_over_the_shards_and_each_stays_whole(store, hub):
    cards = cards_on_every_shard(store, hub)
    for card in cards:
        tx = hub.debit(card["id"], Decimal("4"))
        hub.settle(card["id"], tx, Decimal("1"))
    assert all(hub.balance(c["id"]) == 6 for c in cards)


def test_the_sweeper_releases_due_holds_on_every_shard(store, hub):
    cards = cards_on_every_shard(store, hub)
    for card in cards:
        hub.debit(card["id"], Decimal("4"))
    time.sleep(0.25)
    buckets = {card["id"][:2] for card in cards}
    result = store.expire_all_holds()
    assert (result["bucketsWithDueHolds"], result["holdsReleased"], result["errors"]) == (
        len(buckets),
        len(cards),
        {},
    )
    assert all(hub.balance(card["id"]) == 10 for card in cards)
    assert store.expire_all_holds()["bucketsWithDueHolds"] == 0


def test_search_by_client_gathers_cards_from_every_shard(store, hub):
    ids = {hub.funded_card(Decimal("1"), profileId="many@example.com")["id"] for _ in range(9)}
    assert len({node_of(store, i) for i in ids}) > 1
    found = hub.post("/giftcards/_search", {"client": {"email": "many@example.com"}, "cart": {}}).json
    assert {c["id"] for c in found} == ids


def test_ready_checks_every_primary_and_reloads_a_lost_library(cluster_redis, app):
    client = app.test_client()
    assert client.get("/ready").json == {"status": "ready"}
    one = cluster_redis.get_primaries()[1]
    cluster_redis.get_redis_connection(one).function_flush()
    assert client.get("/ready").json == {"status": "ready"}
    assert cluster_redis.get_redis_connection(one).fcall_ro(RELEASE.function("gc_ping"), 0) == RELEASE.digest


def test_an_unreachable_cluster_is_a_quick_503_and_the_app_still_starts():
    settings = make_settings(redis_url=f"redis://127.0.0.1:{free_cluster_port()}/0", redis_cluster=True)
    app = create_app(settings)  # connects on first use, not here
    client = app.test_client()
    started = time.monotonic()
    response = client.get("/ready")
    assert response.status_code == 503 and response.json["status"] == "unavailable"
    headers = {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}
    assert client.get(f"/giftcards/{'a' * 32}", headers=headers).status_code == 503
    assert time.monotonic() - started < 2


def test_a_single_server_behind_redis_cluster_1_is_a_503_with_the_reason_logged(redis_server, caplog):
    app = create_app(make_settings(redis_url=redis_server.url, redis_cluster=True))
    response = app.test_client().get("/ready")
    assert response.status_code == 503
    assert any("Cluster mode is not enabled" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("0", False), ("", False)])
def test_redis_cluster_switch(value, expected):
    assert Settings.from_env({"APP_ENV": "development", "REDIS_CLUSTER": value}).redis_cluster is expected


@pytest.mark.parametrize("env", [{"REDIS_CLUSTER": "maybe"}, {"REDIS_CLUSTER": "1", "REDIS_WAIT_REPLICAS": "1"}])
def test_cluster_settings_that_cannot_work_are_refused(env):
    with pytest.raises(ConfigError, match="REDIS_CLUSTER"):
        Settings.from_env({"APP_ENV": "development", **env})


def test_pruning_reaches_each_primary_that_has_an_old_library(cluster_redis, app):
    """A primary restarted without persistence lost an old release's library that the others kept:
    prune deletes it where it is, and does not stumble where it is not."""
    store = app.extensions["giftcard_provider"]["store"]
    older = Library(RELEASE.source + "\n-- an older release\n")
    one = cluster_redis.get_primaries()[0]
    cluster_redis.get_redis_connection(one).function_load(older.code)
    assert store.libraries() == (sorted([older.name, RELEASE.name]), [])
    assert store.libraries(prune=True) == ([RELEASE.name], [older.name])
