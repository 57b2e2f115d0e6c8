"""X-PROVIDER-API-AppKey / AppToken check, run before anything else on protocol routes.

VTEX's rule: missing credentials -> 401, wrong -> 403, both with an empty body,
sent without a Content-Type (an empty body is of no media type; Flask would call it text/html).
VTEX probes providers with wrong credentials; a 2xx there gets payments cancelled.
"""

from __future__ import annotations

import hmac

from flask import Response, current_app, request

APP_KEY_HEADER = "X-PROVIDER-API-AppKey"
APP_TOKEN_HEADER = "X-PROVIDER-API-AppToken"

# Endpoints outside the protocol need no app credentials: probes, the API docs, and metrics (which
# check their own bearer token, see observability.py).
PUBLIC_ENDPOINTS = frozenset(
    {
        "probes.health",
        "probes.ready",
        "observability.metrics",
        "api-docs.openapi_json",
        "docs.page",
        "docs.init",
        "docs.asset",
    }
)


def _matches(given: bytes, expected: str) -> bool:
    return hmac.compare_digest(given, expected.encode())


def _refused(status: int) -> Response:
    response = Response(status=status)
    del response.headers["Content-Type"]
    return response


def check_credentials() -> Response | None:
    req = request._get_current_object()  # once: every read through the proxy is a context lookup
    if req.endpoint in PUBLIC_ENDPOINTS:
        return None
    headers = req.headers
    key = headers.get(APP_KEY_HEADER, "")
    token = headers.get(APP_TOKEN_HEADER, "")
    if not key or not token:
        return _refused(401)
    given_key, given_token = key.encode(errors="replace"), token.encode(errors="replace")
    # Compare against every pair, without stopping early: timing says nothing.
    valid = False
    for app_key, app_token in current_app.config["SETTINGS"].credentials:
        valid |= _matches(given_key, app_key) & _matches(given_token, app_token)
    return None if valid else _refused(403)
