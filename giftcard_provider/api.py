"""Project-wide API choices, made once: body parsing, validation status, error shape.

* Any JSON media type is accepted (the Hub sends application/json and
  application/vnd.vtex.giftcards.v1+json); the body is parsed by jsonio, so
  amounts stay Decimal.
* Invalid payloads answer 400 (webargs defaults to 422, which the protocol
  reserves for ledger refusals).
* Every error is JSON {"code", "message"} plus "errors" for field errors.
"""

from __future__ import annotations

import logging

import flask_smorest
from flask import jsonify
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException, InternalServerError

from . import jsonio
from .errors import ProviderError

log = logging.getLogger(__name__)


class BodyParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        # Whatever the Content-Type says, a non-empty body must be JSON.
        data = req.get_data(cache=True)
        if not data.strip():
            return core.missing
        try:
            return jsonio.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            self._handle_invalid_json_error(exc, req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BodyParser()


def _code(error: HTTPException) -> str:
    return (error.name or "error").lower().replace(" ", "_").replace("'", "")


class Api(flask_smorest.Api):
    def handle_http_exception(self, error: HTTPException):
        if isinstance(error, InternalServerError):
            return error_response(ProviderError("internal error"))
        payload = {"code": _code(error), "message": error.description}
        data = getattr(error, "data", None) or {}
        if "messages" in data:
            payload = {
                "code": "invalid_request",
                "message": "the request is invalid: see errors",
                "errors": data["messages"],
            }
        response = jsonify(payload)
        response.status_code = error.code
        for name, value in (data.get("headers") or {}).items():
            response.headers[name] = value
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response


def error_response(error: ProviderError):
    if error.status >= 500 and error.status != 503:
        log.error("internal error: %s", error.message)
    response = jsonify(error.body())
    response.status_code = error.status
    if error.status == 503:
        response.headers["Retry-After"] = "1"
    return response
