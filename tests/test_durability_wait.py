"""REDIS_WAIT_REPLICAS / REDIS_WAIT_LOCAL_AOF: a committed write is answered, and an unconfirmed one is logged."""

import logging
from decimal import Decimal

from giftcard_provider import create_app

from .conftest import APP_KEY, APP_TOKEN, make_settings
from .hub import Hub


def hub_for(real_redis, **settings) -> Hub:
    app = create_app(make_settings(**settings), redis_client=real_redis)
    return Hub(app.test_client(), {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN})


def test_write_waits_for_replicas_and_logs_when_none_confirm(real_redis, caplog):
    hub = hub_for(real_redis, redis_wait_replicas=1, redis_wait_timeout_ms=20)
    with caplog.at_level(logging.WARNING, logger="giftcard_provider.store"):
        card = hub.funded_card(Decimal("5"))
    assert hub.balance(card["id"]) == 5
    assert "gc_authorize not confirmed durable" in caplog.text


def test_wait_failure_never_turns_a_committed_write_into_an_error(real_redis, caplog):
    # The test server runs without AOF (and Redis < 7.2 has no WAITAOF at all), so WAITAOF
    # fails: the write still stands, is answered, and the failure is logged.
    hub = hub_for(real_redis, redis_wait_local_aof=1, redis_wait_timeout_ms=20)
    with caplog.at_level(logging.WARNING, logger="giftcard_provider.store"):
        card = hub.funded_card(Decimal("5"))
    assert hub.balance(card["id"]) == 5
    assert "gc_authorize not confirmed durable" in caplog.text
