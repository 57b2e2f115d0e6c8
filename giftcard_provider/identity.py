"""Who a request says the shopper is, normalised one way for cards, searches and transactions.

A card's owner (``profileId``) is a VTEX client id, an e-mail address or a B2B
document; a search names the client by ``client.id``, ``client.email`` and
``client.document``, a transaction by ``orderInfo.clientProfile.email`` and
``.document``. They are compared after the same normalisation (e-mail addresses
case-insensitively), here for the search and in ledger.lua for a Debit, which
gets the identities already normalised. Every identity is the caller's word.
"""

from __future__ import annotations


def normalise(value: str | None) -> str:
    """Surrounding space dropped; e-mail addresses lower-cased (ids and documents kept as they are)."""
    value = (value or "").strip()
    return value.lower() if "@" in value else value


def identities(*values: str | None) -> set[str]:
    """The non-empty normalised identities among `values`."""
    return {n for n in map(normalise, values) if n}
