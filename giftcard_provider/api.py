"""Project-wide API choices, made once: body parsing, validation status, error shape.

* Any JSON media type is accepted (the Hub sends application/json and
  application/vnd.vtex.giftcards.v1+json); the body is parsed by jsonio, so
  amounts stay Decimal.
* Invalid payloads answer 400 (webargs defaults to 422, which the protocol
  reserves for ledger refusals); so does a body that cannot be read at all (a
  malformed chunked encoding, or a body cut short).
* Every error is JSON {"code", "message"} plus "errors" for field errors,
  declared in the OpenAPI document as the "Error" schema, with the error
  statuses each protocol operation can answer.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

import flask_smorest
import marshmallow as ma
from flask import jsonify
from gunicorn.http.errors import ParseException as ServerParseError
from webargs import core
from webargs.flaskparser import FlaskParser, abort
from werkzeug.exceptions import ClientDisconnected, HTTPException, InternalServerError, RequestEntityTooLarge

from . import jsonio
from .errors import ProviderError

log = logging.getLogger(__name__)

# What reading wsgi.input raises when the client sent a body that cannot be read: gunicorn's chunk
# parse errors (bad chunk size, terminator or extension; IOError subclasses in older gunicorn),
# NoMoreData (an IOError: the client stopped sending), a socket error, and werkzeug's
# ClientDisconnected (fewer bytes than Content-Length). Bad input, not a fault of ours: 400.
UNREADABLE_BODY = (ServerParseError, OSError, ClientDisconnected)


class BodyParser(FlaskParser):
    DEFAULT_VALIDATION_STATUS = 400

    def _raw_load_json(self, req):
        # Whatever the Content-Type says, a non-empty body must be JSON.
        try:
            data = req.get_data(cache=True)
            # Werkzeug stops reading a streamed (chunked) body at the limit without a word: if more follows, 413.
            limit = req.max_content_length
            streamed = req.environ.get("wsgi.input_terminated")
            if streamed and limit is not None and len(data) >= limit and req.environ["wsgi.input"].read(1):
                raise RequestEntityTooLarge()
        except UNREADABLE_BODY as exc:
            # The error's text may quote body bytes: only its type is logged.
            log.info("request body unreadable (%s): answered 400", type(exc).__name__)
            abort(
                400,
                exc=exc,
                messages={"json": ["The body could not be read (malformed chunked encoding or cut short)."]},
            )
        if not data.strip():
            return core.missing
        try:
            return jsonio.loads(data)
        except (ValueError, UnicodeDecodeError) as exc:
            self._handle_invalid_json_error(exc, req)


class ErrorSchema(ma.Schema):
    """Every error body (401 and 403 excepted: VTEX wants those empty)."""

    code = ma.fields.String(required=True, metadata={"description": "Stable machine code, e.g. insufficient_balance"})
    message = ma.fields.String(required=True, metadata={"description": "Human-readable explanation"})
    errors = ma.fields.Dict(metadata={"description": "Field errors, by location and field (400 only)"})
    field = ma.fields.String(metadata={"description": "The field that differs from the original request (409 only)"})


def error_responses(rule: str, method: str) -> dict:
    """The errors a protocol operation can answer besides 400 (documented by @arguments) and 500."""
    responses = {
        401: {"description": "X-PROVIDER-API-AppKey or X-PROVIDER-API-AppToken missing (empty body)"},
        403: {"description": "Wrong credentials (empty body)"},
        503: HTTPStatus(503).name,
    }
    if "<giftCardId>" in rule:
        responses[404] = HTTPStatus(404).name
        if method == "post":
            responses.update({409: HTTPStatus(409).name, 422: HTTPStatus(422).name})
    return responses


class _SpecWithErrors:
    """Stands in for the APISpec while a blueprint documents its views, adding error_responses()."""

    def __init__(self, spec):
        self._spec = spec

    def __getattr__(self, name):
        return getattr(self._spec, name)

    def path(self, *, rule, operations, **kwargs):
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            for status, response in error_responses(rule.rule, method).items():
                responses.setdefault(status, response)
        return self._spec.path(rule=rule, operations=operations, **kwargs)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BodyParser()

    def register_views_in_doc(self, api, app, spec, **kwargs):
        super().register_views_in_doc(api, app, _SpecWithErrors(spec), **kwargs)


def _code(error: HTTPException) -> str:
    return (error.name or "error").lower().replace(" ", "_").replace("'", "")


class Api(flask_smorest.Api):
    ERROR_SCHEMA = ErrorSchema

    def __init__(self, app=None, **kwargs):
        super().__init__(None, **kwargs)
        # Imported here, as create_app imports the blueprints: schemas/ imports giftcard_provider.money,
        # whose package imports this module, so a module-level import would be circular whenever
        # schemas/ is imported first.
        from schemas.common import EpochMs, MoneyField

        # Our own fields, documented with the types the protocol gives them.
        self.register_field(MoneyField, "number", None)
        self.register_field(EpochMs, "string", "date-time")
        if app is not None:
            self.init_app(app)

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
