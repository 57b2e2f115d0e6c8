"""Marshmallow schemas for every Gift Card Provider Protocol payload.

Request schemas ignore unknown fields (the Hub sends more than the spec
lists); response schemas shape what we answer. No Flask or Redis here.
"""
