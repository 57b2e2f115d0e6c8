"""Redis key layout. Every key name is built here and nowhere else.

All keys of one card carry the card id as a hash tag (``{C}``), so every Lua
call on a card touches one slot and works unchanged on Redis Cluster::

    gc:{C}:card                   hash    the card: currency, exponent, available and held
                                          balances (integer minor units), status, owner,
                                          validity window, journal sequence, counters,
                                          codeDigest (its code index entry: see below),
                                          movedTo once a layout migration has taken it
    gc:{C}:txs                    list    transaction ids, oldest first
    gc:{C}:tx:T                   hash    transaction T: operation, value, requestId, date, description,
                                          held / settled / released / refunded (Debit) or
                                          settled / cancelled (Credit), hold deadline
    gc:{C}:tx:T:settlements       list    "oid|minor|dateMs|requestId|" per settlement, oldest first
    gc:{C}:tx:T:cancellations     list    "oid|minor|dateMs|requestId|reason" per cancellation
                                          (reason "expired" for a hold released by its deadline)
    gc:{C}:tx:T:requests          hash    "settlement:<requestId>" / "cancellation:<requestId>"
                                          -> "oid|minor|dateMs" (idempotency of T's operations)
    gc:{C}:requests               hash    requestId -> "txId|operation|minor" (idempotency)
    gc:{C}:holds                  zset    Debit transaction ids still holding money, by
                                          hold deadline (epoch ms, Redis clock)
    gc:{C}:journal                stream  one entry per money movement: seq, kind, tx, ref,
                                          amount, available and held after it, at

Global indexes (outside any card's slot: on a cluster they live on any shard; written
only when a card is created, after the card, so they never name a missing card)::

    gc:code:<hmac>                string  card id, by HMAC-SHA256 of the normalised
                                          redemption code (a dump leaks no spendable code)
    gc:owner:<profileId>          set     ids of the cards owned by a profile (id or email)
    gc:layout                     string  the layout version of the store, written by a layout
                                          migration; absent means v1, this one
    gc:limits:<scope>:<seconds>:<n>
                                  hash    failed code look-ups in window n (epoch seconds // seconds)
                                          of a limit of that length, scope client (a shopper's whole
                                          identity) or address: field = 16-hex HMAC of the subject,
                                          value = its failures. At most CODE_LOOKUP_MAX_TRACKED fields;
                                          expires at the end of window n + 1 (throttle.py)

``gc`` is the configurable ``REDIS_KEY_PREFIX``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Ids we generate are hex; anything else in a path can never name a record, and
# must not reach a key name (":" or "}" would point into another key).
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


@dataclass(frozen=True)
class Keys:
    prefix: str = "gc"

    def card(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:card"

    def transactions(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:txs"

    def transaction(self, card_id: str, tx_id: str) -> str:
        # ledger.lua derives this same name from card() when it expires holds.
        return f"{self.prefix}:{{{card_id}}}:tx:{tx_id}"

    def settlements(self, card_id: str, tx_id: str) -> str:
        return f"{self.transaction(card_id, tx_id)}:settlements"

    def cancellations(self, card_id: str, tx_id: str) -> str:
        return f"{self.transaction(card_id, tx_id)}:cancellations"

    def operation_requests(self, card_id: str, tx_id: str) -> str:
        return f"{self.transaction(card_id, tx_id)}:requests"

    def requests(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:requests"

    def holds(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:holds"

    def journal(self, card_id: str) -> str:
        return f"{self.prefix}:{{{card_id}}}:journal"

    def code_index(self, code_digest: str) -> str:
        return f"{self.prefix}:code:{code_digest}"

    def owner_index(self, profile_id: str) -> str:
        return f"{self.prefix}:owner:{profile_id}"

    def code_lookup_failures(self, scope: str, seconds: int, window: int) -> str:
        """Failed code look-ups per subject in one fixed window of one limit length (throttle.py)."""
        return f"{self.prefix}:limits:{scope}:{seconds}:{window}"

    def layout(self) -> str:
        """The store's layout version, written by the release that migrated it; absent means v1."""
        return f"{self.prefix}:layout"

    def all_cards_pattern(self) -> str:
        """For operators' SCAN (verify, export): never used on a request path."""
        return f"{self.prefix}:{{*}}:card"

    def code_index_pattern(self) -> str:
        """For `flask cards verify`'s SCAN of the code index."""
        return self.code_index("*")

    def owner_index_pattern(self) -> str:
        """For `flask cards verify`'s SCAN of the owner index."""
        return self.owner_index("*")

    def holds_pattern(self) -> str:
        """For the hold-expiry sweeper's SCAN: the hold deadlines of every card with open holds."""
        return f"{self.prefix}:{{*}}:holds"

    def card_id_in(self, key: str) -> str | None:
        """The card id of a per-card key found by SCAN ("gc:{C}:holds" -> "C"), or None."""
        head = f"{self.prefix}:{{"
        card_id = key[len(head) : key.find("}", len(head))] if key.startswith(head) else ""
        return card_id if is_valid_id(card_id) else None
