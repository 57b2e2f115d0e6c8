"""Liveness and readiness probes: unauthenticated, cheap, outside the protocol's OpenAPI."""

from __future__ import annotations

from flask import Blueprint, jsonify

from ..errors import StoreUnavailable
from . import ledger

blp = Blueprint("probes", __name__)


@blp.get("/health")
def health():
    """The process is up and serving requests."""
    return jsonify(status="ok")


@blp.get("/ready")
def ready():
    """Redis answers and runs our Lua library (a PING alone would miss a lost library)."""
    try:
        current = ledger().ping()
    except StoreUnavailable as exc:
        return jsonify(status="unavailable", reason=exc.message), 503
    if not current:  # a primary answered another digest under this release's function name
        return jsonify(status="unavailable", reason="Redis does not run this release's ledger library"), 503
    return jsonify(status="ready")
