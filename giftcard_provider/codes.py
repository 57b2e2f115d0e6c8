"""Redemption codes and tokens: generation, normalisation, masking, hashing."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

# No 0/O, 1/I/L or U: nothing a shopper can misread or mistype.
ALPHABET = "ABCDEFGHJKMNPQRSTVWXYZ23456789"
CODE_LENGTH = 20  # 20 symbols of 30: about 98 bits, hopeless to guess
GROUP = 4
DIGEST_HEX = 32
_SEPARATORS = re.compile(r"[\s\-]+")


def new_code() -> str:
    """A fresh code, grouped for reading: "ABCD-EFGH-JKMN-PQRS-TVWX"."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + GROUP] for i in range(0, CODE_LENGTH, GROUP))


def new_token() -> str:
    """A card's redemptionToken: 128 random bits, 22 characters (stored in the card's hash: keys.py)."""
    return secrets.token_urlsafe(16)


def new_id() -> str:
    """A card id: 32 hex digits (store.py replaces the first two with its code's bucket)."""
    return secrets.token_hex(16)


def new_short_id() -> str:
    """A transaction, settlement or cancellation id: 16 hex digits, unique within its card. Short,
    because it is written into the card's hash several times (keys.py)."""
    return secrets.token_hex(8)


def normalise(code: str) -> str:
    """What a shopper typed -> the canonical code: case, spaces and dashes do not matter."""
    return _SEPARATORS.sub("", code).upper()


def mask(last4: str) -> str:
    return "*" * (CODE_LENGTH - len(last4)) + last4


class CodeHasher:
    """Keyed hash of a code: the index key that finds a card without storing its code."""

    def __init__(self, secret: str):
        self._secret = secret.encode()

    def digest(self, code: str) -> str:
        """The code index field: the first 32 hex digits (128 bits) of HMAC-SHA256 of the normalised
        code. (The v1 layout keyed its index by all 64; the migration keeps their first 32.)"""
        return hmac.new(self._secret, normalise(code).encode(), hashlib.sha256).hexdigest()[:DIGEST_HEX]
