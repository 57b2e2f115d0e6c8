"""The whole content of a Redis database, to prove that a refused request changed nothing.

Usage::

    with unchanged(store.redis):
        assert hub.post(...).status_code == 422

or compare ``snapshot(r)`` before and after by hand. Every key is read with its
type's own command (no DUMP: its encoding may change without the value changing),
so two snapshots are equal exactly when every key holds the same value.
"""

from __future__ import annotations

import contextlib

import redis

from .hub import body


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def _value(client: redis.Redis, key, kind: str):
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return client.hgetall(key)
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return frozenset(client.smembers(key))
    if kind == "zset":
        return client.zrange(key, 0, -1, withscores=True)
    if kind == "stream":
        return client.xrange(key)
    raise AssertionError(f"snapshot does not know Redis type {kind!r} (key {key!r})")


def snapshot(client: redis.Redis) -> dict:
    """{key: (type, value, has_ttl)} for every key of the client's database."""
    result = {}
    for key in client.scan_iter(count=1000):
        kind = _text(client.type(key))
        if kind == "none":  # vanished between SCAN and TYPE
            continue
        result[_text(key)] = (kind, _value(client, key, kind), client.pttl(key) >= 0)
    return result


@contextlib.contextmanager
def unchanged(client: redis.Redis):
    """Assert that the block leaves every key exactly as it found it."""
    before = snapshot(client)
    yield before
    after = snapshot(client)
    assert after == before, _diff(before, after)


def _diff(before: dict, after: dict) -> str:
    lines = ["Redis changed:"]
    for key in sorted(before.keys() | after.keys()):
        if before.get(key) != after.get(key):
            lines.append(f"  {key}: {before.get(key)!r} -> {after.get(key)!r}")
    return "\n".join(lines)


def assert_rejected(client: redis.Redis, call, status: int, code: str | None = None) -> dict:
    """Make the request `call()`; it must answer `status` with JSON {code, message} and change no key.

    Returns the parsed error body (numbers as Decimal) for further checks.
    """
    with unchanged(client):
        response = call()
    text = response.get_data(as_text=True)
    assert response.status_code == status, text
    assert response.mimetype == "application/json", response.mimetype
    assert "Traceback" not in text
    error = body(response)
    assert isinstance(error["code"], str) and error["code"], error
    assert isinstance(error["message"], str) and error["message"], error
    if code is not None:
        assert error["code"] == code, error
    return error
