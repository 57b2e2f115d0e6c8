"""Redis key layout (v2). Every key name is built here and nowhere else.

Cards live in 256 **buckets**, named by the first two hex digits of the card id. Every key of a
bucket carries the hash tag ``{b<bb>}``, so on a Redis Cluster a bucket is one slot and one
function call writes a card together with its bucket's indexes, books and events::

    gc:{b<bb>}:c:<id>           hash    one card and everything that happened to it (fields below);
                                        "c", not "card": a key name of 44 bytes or less keeps its
                                        allocation in jemalloc's 48-byte class, 16 B a card
    gc:{b<bb>}:cards:<nn>       hash    card id -> created ms: the bucket's cards, in 64 sub-shards
                                        (nn = the id's 3rd-4th hex digits mod 64, so each stays a
                                        compact listpack); verify and the breakage and expiring
                                        reports walk these (export reads the events)
    gc:{b<bb>}:codes:<nn>       hash    code digest -> card id: the code index (digest = the first
                                        32 hex of HMAC-SHA256 of the normalised code; bucket and
                                        nn from its first four digits; a new card's id starts with
                                        its code's bucket, so both are written by one call)
    gc:{b<bb>}:holds            zset    "<cardId>:<txId>" -> hold deadline (epoch ms, Redis clock):
                                        the bucket's open holds (a card keeps no list of its own),
                                        the sweeper's work list, one small read per bucket
    gc:{b<bb>}:events           stream  the bucket's journal and outbox: one entry per money
                                        movement, status change, creation and import (events.py)
    gc:{b<bb>}:books            hash    "<CUR>:<total>" -> integer minor units: running totals per
                                        currency (records.Books)

Owners are indexed apart, because one owner's cards live in many buckets::

    gc:{o<ooo>}:owners          zset    "<profileId>|<cardId>", all scored 0 and read by lex range;
                                        ooo = the first 3 hex of SHA-256 of the profile id (4,096 shards)
    gc:layout                   string  "v2": the layout of this store; "migrating:..." while the
                                        v1 -> v2 migration runs (migration.py)
    gc:layout:migrated          string  when `flask cards migrate` last finished and verified (epoch
                                        ms): later release phases return at once (migration.py)
    gc:consumers:<name>         hash    bucket -> the last event stream id consumer <name> handled
                                        (`flask cards events --consumer`, events.py)
    gc:batches                  hash    the batches of `flask cards issue-batch`: per batch id its
                                        definition, progress, wrapped secret until its codes are
                                        written, and what was written (records.py: batch_fields)
    gc:limits:<scope>:<seconds>:<n>
                                hash    failed code look-ups in window n (epoch seconds // seconds) of a
                                        limit of that length, scope client (a shopper's whole identity)
                                        or address: field = 16-hex HMAC of the subject, value = its
                                        failures. At most CODE_LOOKUP_MAX_TRACKED fields; expires at the
                                        end of window n + 1 (throttle.py)

A card hash's fields (short names: each byte is paid once per card; records.py reads them)::

    cur exp      currency, its ISO 4217 exponent      av hd        available, held (minor units;
                                                                   absent until money first moves: 0)
    st sr sc     status, its reason, its change ms    own          profileId (the owner)
    rel cap      relationName, caption                ro mr mc     restrictedToOwner,
    at from to   created, emission, expiring ms                    multipleRedemptions, multipleCredits
                 (from left out when it equals at)                 ("1"/"0", each left out at its
                                                                   default: ro 0, mr 1, mc 1)
    l4 tk        the code's last 4, redemption token  lim          balance limit (minor units)
    seq          events written for the card          od cr ntx    open Debits, Credits, transactions
    x:<n>        the id of the card's n-th transaction (n from 1: the order of the transaction list)
    t:<tx>       Debit  "D|value|dateMs|deadlineMs|held|settled|released|refunded|records"
                 Credit "C|value|dateMs|settled|cancelled|records"
    q:<tx>       its requestId; n:<tx> its orderId and d:<tx> its description, when given
    r:<rid>      "txId|operation|minor": the transaction a requestId made (idempotency)
    o:<tx>:<k>   its k-th settlement or cancellation "s|oid|minor|dateMs|" / "c|oid|minor|dateMs|reason"
                 (reason "expired" for a hold released by its deadline)
    p:<tx>:<k>   the requestId of record k (idempotency of settlements and cancellations)

Webhook endpoints (webhooks.py): each endpoint's keys share the hash tag ``{w<id>}``, so one script
checks a lane's lease and moves its cursor atomically, also on a cluster::

    gc:webhooks                 set     the endpoint ids
    gc:webhooks:workers         zset    worker id -> when its heartbeat expires (epoch ms, Redis clock):
                                        the live workers, who share the lanes between them
    gc:{w<id>}:endpoint         hash    url, secret, types, paused, paused_reason, description, created,
                                        previous_secret, previous_until (records.Endpoint); <id> is the
                                        endpoint id, "we_..."
    gc:{w<id>}:cursor           hash    bucket -> "<last stream id handled>|<its ordinal in the bucket's
                                        stream, or empty>": the endpoint's durable position
    gc:{w<id>}:leases           hash    bucket -> "<worker id>|<expires ms>": who delivers that lane
    gc:{w<id>}:retry            hash    bucket -> "<stream id>|<attempts>|<next attempt ms>|<last error>":
                                        the lane's head event, failing
    gc:{w<id>}:dead             stream  dead letters: events given up after WEBHOOK_MAX_ATTEMPTS
    gc:{w<id>}:stats            hash    delivery counters and latency histogram, for /metrics

``gc`` is the configurable ``REDIS_KEY_PREFIX``. The v1 layout (one hash tag per card, global
code and owner keys) is `V1Keys`, kept for the migration only.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

# Ids we generate are hex; anything else in a path can never name a record, and
# must not reach a key name (":" or "}" would point into another key).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_CARD_ID = re.compile(r"[0-9a-f]{32}")

BUCKETS = 256  # the first two hex digits of a card id
SUB_SHARDS = 64  # card lists and code indexes per bucket
OWNER_SHARDS = 4096


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def is_valid_card_id(value: str) -> bool:
    """Card ids are 32 lowercase hex digits: the first two name the bucket."""
    return _CARD_ID.fullmatch(value) is not None


def buckets() -> list[str]:
    return [f"{n:02x}" for n in range(BUCKETS)]


def _sub_shard(hex_id: str) -> int:
    return int(hex_id[2:4], 16) % SUB_SHARDS


@dataclass(frozen=True)
class Keys:
    prefix: str = "gc"

    def bucket(self, bucket: str) -> str:
        """The prefix every key of a bucket starts with: gc:{b<bb>}."""
        return f"{self.prefix}:{{b{bucket}}}"

    def card(self, card_id: str) -> str:
        # ledger.lua derives this same name from a bucket key and a hold's card id (CARD).
        return f"{self.bucket(card_id[:2])}:c:{card_id}"

    def card_list(self, card_id: str) -> str:
        return self.card_list_shard(card_id[:2], _sub_shard(card_id))

    def card_list_shard(self, bucket: str, n: int) -> str:
        return f"{self.bucket(bucket)}:cards:{n:02d}"

    def card_lists(self, bucket: str) -> list[str]:
        return [self.card_list_shard(bucket, n) for n in range(SUB_SHARDS)]

    def code_index(self, code_digest: str) -> str:
        return self.code_index_shard(code_digest[:2], _sub_shard(code_digest))

    def code_index_shard(self, bucket: str, n: int) -> str:
        return f"{self.bucket(bucket)}:codes:{n:02d}"

    def code_indexes(self, bucket: str) -> list[str]:
        return [self.code_index_shard(bucket, n) for n in range(SUB_SHARDS)]

    def holds(self, bucket: str) -> str:
        return f"{self.bucket(bucket)}:holds"

    def events(self, bucket: str) -> str:
        return f"{self.bucket(bucket)}:events"

    def books(self, bucket: str) -> str:
        return f"{self.bucket(bucket)}:books"

    def card_keys(self, card_id: str) -> list[str]:
        """The keys a money call on a card passes to ledger.lua: card, holds, events, books."""
        bucket = card_id[:2]
        return [self.card(card_id), self.holds(bucket), self.events(bucket), self.books(bucket)]

    def owner_index(self, profile_id: str) -> str:
        shard = hashlib.sha256(profile_id.encode()).hexdigest()[:3]
        return f"{self.prefix}:{{o{shard}}}:owners"

    def owner_indexes(self) -> list[str]:
        return [f"{self.prefix}:{{o{n:03x}}}:owners" for n in range(OWNER_SHARDS)]

    def code_lookup_failures(self, scope: str, seconds: int, window: int) -> str:
        """Failed code look-ups per subject in one fixed window of one limit length (throttle.py)."""
        return f"{self.prefix}:limits:{scope}:{seconds}:{window}"

    def consumer(self, name: str) -> str:
        """An event consumer's cursor: bucket -> the last stream id it handled (events.py)."""
        return f"{self.prefix}:consumers:{name}"

    # -- webhooks (webhooks.py) --

    def webhook_endpoints(self) -> str:
        return f"{self.prefix}:webhooks"

    def webhook_workers(self) -> str:
        return f"{self.prefix}:webhooks:workers"

    def webhook(self, endpoint_id: str) -> dict[str, str]:
        """One endpoint's keys, all in its slot: endpoint, cursor, leases, retry, dead, stats."""
        tag = f"{self.prefix}:{{w{endpoint_id}}}"
        return {part: f"{tag}:{part}" for part in ("endpoint", "cursor", "leases", "retry", "dead", "stats")}

    def batches(self) -> str:
        """Every bulk issuance batch, one hash (records.batch_fields names a batch's fields: bulk_issue.py)."""
        return f"{self.prefix}:batches"

    def layout(self) -> str:
        """The store's layout version: "v2"; absent on a v1 store (migration.py)."""
        return f"{self.prefix}:layout"

    def migrated(self) -> str:
        """When the v1 -> v2 migration finished, verified (epoch ms): later release phases skip it."""
        return f"{self.prefix}:layout:migrated"


def owner_member(profile_id: str, card_id: str) -> str:
    """An owner index entry; card ids hold no "|", so the last one splits it."""
    return f"{profile_id}|{card_id}"


def hold_member(card_id: str, tx_id: str) -> str:
    """A bucket's holds entry (ledger.lua writes the same); card ids hold no ":", so the first one splits it."""
    return f"{card_id}:{tx_id}"


@dataclass(frozen=True)
class V1Keys:
    """The v1 layout, read by the migration only: every key of a card under its own hash tag
    {C}, and global code and owner keys (docs/ledger-v2.md, "Migration")."""

    prefix: str = "gc"

    def card(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:card"

    def transactions(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:txs"

    def requests(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:requests"

    def holds(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:holds"

    def journal(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:journal"

    def transaction(self, card_id: str, tx_id: str) -> str:
        # ledger.lua's gc_v1_take derives this same name (and the three below) from card().
        return f"{self.prefix}:{{{card_id}}}:tx:{tx_id}"

    def transaction_keys(self, card_id: str, tx_id: str) -> list[str]:
        """A transaction's hash, its settlements and cancellations lists and its operation requestIds."""
        tx = self.transaction(card_id, tx_id)
        return [tx, f"{tx}:settlements", f"{tx}:cancellations", f"{tx}:requests"]

    def code_index(self, code_digest: str) -> str:
        """A code's index entry, a string key: card id, by the 64-hex HMAC-SHA256 of the code."""
        return f"{self.prefix}:code:{code_digest}"

    def owner_index(self, profile_id: str) -> str:
        """A profile's cards: a set of card ids."""
        return f"{self.prefix}:owner:{profile_id}"

    def ledger_keys(self, card_id: str) -> list[str]:
        """What gc_v1_take reads: card, transaction ids, requests, journal, holds."""
        c = card_id
        return [self.card(c), self.transactions(c), self.requests(c), self.journal(c), self.holds(c)]

    def all_cards_pattern(self) -> str:
        return f"{self.prefix}:{{*}}:card"

    def code_index_pattern(self) -> str:
        return self.code_index("*")

    def owner_index_pattern(self) -> str:
        return self.owner_index("*")

    def card_id_in(self, key: str) -> str | None:
        """The card id of a v1 per-card key found by SCAN ("gc:{C}:card" -> "C"), or None."""
        head = f"{self.prefix}:{{"
        card_id = key[len(head) : key.find("}", len(head))] if key.startswith(head) else ""
        return card_id if is_valid_id(card_id) else None

    def card_of(self, key: str) -> str | None:
        """The card id of a v1 card hash found by SCAN of all_cards_pattern(), or None for any other key
        (the pattern's * also matches ids a v1 card never had)."""
        card_id = self.card_id_in(key)
        return card_id if card_id and key == self.card(card_id) else None

    def code_digest_in(self, key: str) -> str | None:
        """The code digest (64 hex) of a v1 code index key found by SCAN, or None."""
        head = self.code_index("")
        digest = key[len(head) :] if key.startswith(head) else ""
        return digest if re.fullmatch(r"[0-9a-f]{64}", digest) else None

    def owner_in(self, key: str) -> str | None:
        """The profile id of a v1 owner index key found by SCAN, or None."""
        head = self.owner_index("")
        return key[len(head) :] if key.startswith(head) else None
