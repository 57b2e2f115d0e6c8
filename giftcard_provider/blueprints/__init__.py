"""One flask-smorest blueprint per protocol resource, plus the helpers they share."""

from __future__ import annotations

import re

from flask import Response, current_app, request

from ..config import Settings
from ..links import Links
from ..store import LedgerStore

# At most 15 ASCII digits each: a longer number is no page (and 10**5000 would break int() and LRANGE).
_RANGE = re.compile(r"^\s*\w*\s*=?\s*([0-9]{1,15})\s*-\s*([0-9]{1,15})\s*$")
MAX_PAGE = 1000


def answer(body: dict | list | str, headers: dict[str, str] | None = None) -> Response:
    """A 200 with `body` already in its final JSON form (dates as ISO 8601 strings, amounts exact), or
    already JSON text.

    The views' @blp.response schemas document these bodies in the OpenAPI document, but a Response
    passes through flask-smorest without a marshmallow dump: dumping a document the view has just
    built was up to 15% of a request's CPU on the hot endpoints (issue 12). tests/test_openapi_docs.py
    checks that every answer has exactly the fields its schema documents, and tests/test_contract.py
    checks every answer against VTEX's spec.
    """
    app = current_app._get_current_object()
    if isinstance(body, str):
        response = app.response_class(body, mimetype="application/json")
    else:
        response = app.json.response(body)
    if headers:
        response.headers.update(headers)
    return response


def ledger() -> LedgerStore:
    return current_app.extensions["giftcard_provider"]["store"]


def links() -> Links:
    return current_app.extensions["giftcard_provider"]["links"]


def settings() -> Settings:
    return current_app.config["SETTINGS"]


def requested_range(default_last: int) -> tuple[int, int]:
    """REST-Range: resources=FROM-TO (inclusive), leniently parsed; at most MAX_PAGE items."""
    match = _RANGE.match(request.headers.get("REST-Range", ""))
    start, stop = (int(match[1]), int(match[2])) if match else (0, default_last)
    stop = max(start, min(stop, start + MAX_PAGE - 1))
    return start, stop


def content_range(start: int, shown: int, total: int) -> dict[str, str]:
    """VTEX's REST-Content-Range: "resources FROM-TO/TOTAL"."""
    last = start + shown - 1 if shown else start
    return {"REST-Content-Range": f"resources {start}-{last}/{total}"}
