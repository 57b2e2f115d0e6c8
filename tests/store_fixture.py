"""The committed store of release v1 (tests/fixtures/store-v1.json): read a store into it, load it back.

tests/fixtures/make_store_v1.py made the fixture once, through the API of release v1 (see
tests/fixtures/README.md); a migration is tested by loading it into an empty Redis with
`load_store_v1` and migrating that. The file holds every key of the store, read with its
type's own command (as tests/snapshot.py does), and metadata: the settings that made it
(`fixture_settings()` gives them back, so the code index, made with CODE_HASH_SECRET, finds its
cards), the release, and every card with its state, redemption code and balances as the API
reported them.

Loading writes key by key, each key with single-key commands only (a card's keys share a hash
tag, the code, owner and limits keys are each on their own slot): the same load works on one
server and on a Redis Cluster.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import redis

from giftcard_provider.config import Settings

from .hub import Hub, body

FIXTURE = Path(__file__).parent / "fixtures" / "store-v1.json"

# Public, test-only values: the fixture's code index is HMAC-SHA256(CODE_HASH_SECRET, code), so a
# loader must run the app with this very secret for the recorded codes to find their cards.
APP_KEY = "store-v1-app-key"
APP_TOKEN = "store-v1-app-token"
CODE_HASH_SECRET = "store-v1-fixture-code-hash-secret-do-not-use-in-production"
PROVIDER_ID = "store-v1-provider"

# Holds that must still be open whenever the fixture is loaded, and cards valid as long: the
# fixture's times are those of the day it was made, and a 7-day hold would be due a week later.
LONG_HOLD_SECONDS = 100 * 365 * 24 * 3600
CARD_VALIDITY_DAYS = 100 * 365


def fixture_settings(**overrides) -> Settings:
    """The development Settings the fixture was made with (also recorded in its metadata)."""
    base = Settings(
        app_env="development",
        credentials=((APP_KEY, APP_TOKEN),),
        provider_id=PROVIDER_ID,
        code_hash_secret=CODE_HASH_SECRET,
        default_currency="USD",
        key_prefix="gc",
        hold_lifetime_seconds=LONG_HOLD_SECONDS,
        card_validity_days=CARD_VALIDITY_DAYS,
    )
    return Settings(**{**base.__dict__, **overrides})


def hub_headers() -> dict[str, str]:
    return {"X-PROVIDER-API-AppKey": APP_KEY, "X-PROVIDER-API-AppToken": APP_TOKEN}


# -- what the API says about a card ----------------------------------------------


def canon(value):
    """An API answer with every number as its exact decimal text ("12.5", "80") and without its links
    (hrefs follow from the ids): what the fixture records, and what a test compares with it."""
    if isinstance(value, dict):
        return {k: canon(v) for k, v in value.items() if not (isinstance(v, dict) and set(v) == {"href"})}
    if isinstance(value, list):
        return [canon(v) for v in value]
    if isinstance(value, (int, Decimal)) and not isinstance(value, bool):
        return str(value)
    return value


def api_view(hub: Hub, card_id: str) -> dict:
    """GET card, and per transaction (oldest first) GET transaction, its settlements and cancellations."""
    card = hub.get(f"/giftcards/{card_id}")
    assert card.status_code == 200, card.get_data(as_text=True)
    listing = hub.get(f"/giftcards/{card_id}/transactions")
    assert listing.status_code == 200, listing.get_data(as_text=True)
    transactions = []
    for ref in body(listing):
        path = f"/giftcards/{card_id}/transactions/{ref['id']}"
        views = {"transaction": hub.get(path), "settlements": hub.get(path + "/settlements")}
        views["cancellations"] = hub.get(path + "/cancellations")
        for name, response in views.items():
            assert response.status_code == 200, response.get_data(as_text=True)
            views[name] = canon(body(response))
        transactions.append(views)
    return {"card": canon(body(card)), "transactions": transactions}


def operator_view(app, card_id: str) -> dict:
    """`flask cards show --json`: the card as an operator sees it (held, due holds, status reason)."""
    result = app.test_cli_runner().invoke(args=["cards", "show", card_id, "--json", "--entries", "0"])
    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    del view["journal"]
    return view


# -- reading a store ------------------------------------------------------------


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _value(client: redis.Redis, key: str, kind: str):
    """A key's value as JSON: exact (zset scores and stream ids as Redis's own text) and in a fixed order."""
    if kind == "string":
        return client.get(key)
    if kind == "hash":
        return dict(sorted(client.hgetall(key).items()))
    if kind == "list":
        return client.lrange(key, 0, -1)
    if kind == "set":
        return sorted(client.smembers(key))
    if kind == "zset":
        # Redis's own text of each score (redis-py hands score_cast_func the raw reply, bytes).
        scores = client.zrange(key, 0, -1, withscores=True, score_cast_func=_text)
        return [[member, score] for member, score in scores]
    if kind == "stream":
        # Field order is part of an entry: a list of pairs, not an object (redis-py's dict keeps the order).
        return [
            {"id": entry_id, "fields": [list(pair) for pair in fields.items()]}
            for entry_id, fields in client.xrange(key)
        ]
    raise ValueError(f"unknown Redis type {kind!r} (key {key!r})")


def dump_store(client: redis.Redis) -> list[dict]:
    """Every key of a (decode_responses=True) client's store, sorted by name: {key, type, ttl_ms, value}.

    ttl_ms is the remaining PTTL in milliseconds, or null for a key without one.
    """
    rows = []
    for key in sorted(set(client.scan_iter(count=1000))):
        kind = client.type(key)
        if kind == "none":
            continue
        ttl = client.pttl(key)
        row = {"key": key, "type": kind, "ttl_ms": ttl if ttl >= 0 else None, "value": _value(client, key, kind)}
        if kind == "stream":
            # XADD with explicit ids restores the entries; the stream's last id must match too.
            info = client.xinfo_stream(key)
            row["last_id"] = info["last-generated-id"]
        rows.append(row)
    return rows


def read_fixture(path: Path = FIXTURE) -> dict:
    return json.loads(path.read_text())


# -- loading it -----------------------------------------------------------------


def _write(pipe, row: dict) -> None:
    key, kind, value = row["key"], row["type"], row["value"]
    if kind == "string":
        pipe.set(key, value)
    elif kind == "hash":
        pipe.hset(key, mapping=value)
    elif kind == "list":
        pipe.rpush(key, *value)
    elif kind == "set":
        pipe.sadd(key, *value)
    elif kind == "zset":
        pipe.zadd(key, {member: score for member, score in value})  # scores sent as Redis's own text
    elif kind == "stream":
        for entry in value:
            pipe.execute_command("XADD", key, entry["id"], *(part for pair in entry["fields"] for part in pair))
        if row.get("last_id") and row["last_id"] != value[-1]["id"]:
            pipe.execute_command("XSETID", key, row["last_id"])
    else:
        raise ValueError(f"unknown Redis type {kind!r} (key {key!r})")
    if row["ttl_ms"] is not None:
        pipe.pexpire(key, row["ttl_ms"])


def load_store_v1(client: redis.Redis, path: Path = FIXTURE) -> dict:
    """Write the fixture's keys into an empty Redis (one server or a cluster); return its metadata.

    Only data is written: the app loads its own ledger library on its first call. A key whose TTL
    was running when the fixture was made (the code-lookup throttle's window) gets that TTL again.
    """
    if next(iter(client.scan_iter(count=1000)), None) is not None:  # SCAN: on a cluster, every primary
        raise RuntimeError("load_store_v1 needs an empty Redis: this one has keys")
    fixture = read_fixture(path)
    write_keys(client, fixture["keys"])
    return fixture["metadata"]


def write_keys(client: redis.Redis, rows: list[dict]) -> None:
    """Write rows of the fixture's "keys" (a test writes some of them late, as a v1 process would)."""
    pipe = client.pipeline(transaction=False)  # on a cluster, single-key commands sent to each key's node
    for row in rows:
        _write(pipe, row)
    pipe.execute()
