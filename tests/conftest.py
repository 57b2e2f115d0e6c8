"""Fixtures: an app per test on fakeredis, a private redis-server, or a private Redis Cluster.

Every Lua path must run on real Redis (Lua 5.1) and not only on fakeredis
(lupa), and every call must work when a card's keys live on one shard of
three, so `backend` parametrises the store-level and HTTP tests over all three.
"""

from __future__ import annotations

import fakeredis
import pytest
import redis
from redis.cluster import RedisCluster

from giftcard_provider import create_app
from giftcard_provider.config import Settings
from giftcard_provider.keys import Keys
from giftcard_provider.verify import verify_all

from .hub import Hub
from .redis_server import LocalCluster, RedisServer

APP_KEY, APP_TOKEN = "test-app-key", "test-app-token"


@pytest.fixture(scope="session")
def redis_server():
    server = RedisServer().start()
    yield server
    server.close()


@pytest.fixture
def real_redis(redis_server):
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture(scope="session")
def redis_cluster():
    cluster = LocalCluster(primaries=3).start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def _cluster_client(redis_cluster):
    # One client for the session: making one asks the cluster for its slots and command table.
    client = RedisCluster.from_url(redis_cluster.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def cluster_redis(_cluster_client):
    """A client of the 3-primary cluster, emptied (FLUSHALL runs on every primary)."""
    _cluster_client.flushall()
    return _cluster_client


@pytest.fixture(params=["fakeredis", "redis", "cluster"])
def backend(request, settings):
    """A clean Redis client of each kind. Whatever a test did, the ledger must verify afterwards."""
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis(decode_responses=True)
    elif request.param == "redis":
        client = request.getfixturevalue("real_redis")
    else:
        client = request.getfixturevalue("cluster_redis")
    yield client
    checked, problems = verify_all(client, Keys(settings.key_prefix))
    assert problems == [], f"ledger verification failed after the test ({checked} cards)"


def make_settings(**overrides) -> Settings:
    base = Settings(credentials=((APP_KEY, APP_TOKEN), ("old-key", "old-token")), provider_id="test-provider")
    return Settings(**{**base.__dict__, **overrides})


@pytest.fixture
def settings():
    return make_settings()


@pytest.fixture
def app(backend, settings):
    app = create_app(settings, redis_client=backend)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def hub(client):
    """A client that plays VTEX's Gift Card Hub, with valid credentials."""
    return Hub(client, {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})


@pytest.fixture
def store(app):
    return app.extensions["giftcard_provider"]["store"]
