"""Validation against VTEX's Gift Card Provider Protocol: the reference OpenAPI 3.0 spec.

The spec (``reference/giftcard-provider-protocol.openapi.json``, VTEX's file
unchanged) is loaded once, its local ``$ref``s are inlined, and bodies are
checked with openapi-schema-validator's OAS 3.0 validators (``nullable``,
draft-4 types), which is what openapi-core uses underneath.

Bodies are validated as parsed exactly: JSON numbers with a fraction are
Decimal (tests/hub.py ``body()``), never float. The type checker follows
draft 4: "number" is an int or a finite Decimal, "integer" only an int (a JSON
number written with a fraction or exponent, even ``1.0``, is not an integer).
A float anywhere in a body is refused outright: it means someone parsed the
JSON through binary floats.

Use :func:`conforms` on a test-client response (method and path are taken from
the request), or :func:`assert_valid_response` / :func:`assert_valid_request`
on a parsed body and a spec path template.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import cache
from pathlib import Path

from jsonschema.validators import extend
from openapi_schema_validator import OAS30ReadValidator, OAS30WriteValidator

from giftcard_provider import jsonio

SPEC_FILE = Path(__file__).resolve().parents[1] / "reference" / "giftcard-provider-protocol.openapi.json"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


def _is_number(checker, instance) -> bool:
    if isinstance(instance, bool):
        return False
    return isinstance(instance, int) or (isinstance(instance, Decimal) and instance.is_finite())


def _is_integer(checker, instance) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


def _exact(validator_class):
    checker = validator_class.TYPE_CHECKER.redefine_many({"number": _is_number, "integer": _is_integer})
    return extend(validator_class, type_checker=checker)


ResponseValidator = _exact(OAS30ReadValidator)
RequestValidator = _exact(OAS30WriteValidator)


@cache
def spec() -> dict:
    """The reference spec, numbers as Decimal (its examples are validated too)."""
    return jsonio.loads(SPEC_FILE.read_bytes())


def _pointer(document: dict, ref: str):
    if not ref.startswith("#/"):
        raise ValueError(f"only local $refs are supported, got {ref!r}")
    node = document
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def resolve(node, document: dict | None = None, trail: tuple[str, ...] = ()):
    """A copy of `node` with every local $ref inlined (refuses cycles rather than looping)."""
    document = spec() if document is None else document
    if isinstance(node, dict):
        if "$ref" in node:
            ref = node["$ref"]
            if ref in trail:
                raise ValueError(f"recursive $ref {ref!r}: cannot inline")
            return resolve(_pointer(document, ref), document, (*trail, ref))
        return {key: resolve(value, document, trail) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(item, document, trail) for item in node]
    return node


def operations() -> list[tuple[str, str]]:
    """Every (METHOD, path template) the spec defines."""
    return [(method.upper(), path) for path, item in spec()["paths"].items() for method in METHODS if method in item]


def operation(method: str, path_template: str) -> dict:
    try:
        return resolve(spec()["paths"][path_template][method.lower()])
    except KeyError:
        raise AssertionError(f"the spec defines no operation {method.upper()} {path_template}") from None


@cache
def _template_patterns() -> list[tuple[re.Pattern, str]]:
    patterns = []
    for template in spec()["paths"]:
        regex = "".join(
            "[^/]+" if part.startswith("{") else re.escape(part) for part in re.split(r"(\{[^}]+\})", template)
        )
        patterns.append((re.compile(regex), template))
    # Concrete paths win over templated ones (/giftcards/_search before /giftcards/{giftCardId}).
    return sorted(patterns, key=lambda pattern: pattern[1].count("{"))


def template_for(method: str, path: str) -> str:
    """The spec's path template for a concrete request path, e.g. /giftcards/abc -> /giftcards/{giftCardId}."""
    for regex, template in _template_patterns():
        if regex.fullmatch(path) and method.lower() in spec()["paths"][template]:
            return template
    raise AssertionError(f"{method.upper()} {path} matches no operation of the spec")


def _no_floats(instance, where: str = "body") -> None:
    if isinstance(instance, float):
        raise TypeError(f"{where} is a float ({instance!r}): parse JSON with tests.hub.body(), never via float")
    if isinstance(instance, dict):
        for key, value in instance.items():
            _no_floats(value, f"{where}.{key}")
    elif isinstance(instance, list):
        for index, value in enumerate(instance):
            _no_floats(value, f"{where}[{index}]")


def _validate(validator_class, schema: dict, instance, what: str) -> None:
    _no_floats(instance)
    errors = sorted(validator_class(schema).iter_errors(instance), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  at {'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}" for e in errors]
        raise AssertionError(f"{what} does not match the spec:\n" + "\n".join(lines))


def response_schema(method: str, path_template: str, status: int, media_type: str = "application/json") -> dict:
    responses = operation(method, path_template)["responses"]
    if str(status) not in responses:
        raise AssertionError(
            f"{method.upper()} {path_template}: status {status} is not documented (only {sorted(responses)})"
        )
    content = responses[str(status)].get("content", {})
    if media_type not in content:
        raise AssertionError(
            f"{method.upper()} {path_template} {status}: media type {media_type!r} not in {sorted(content)}"
        )
    return content[media_type]["schema"]


def assert_valid_response(
    method: str, path_template: str, status: int, body, media_type: str = "application/json"
) -> None:
    """`body` (parsed exactly) is what the spec allows for that operation, status and media type."""
    schema = response_schema(method, path_template, status, media_type)
    _validate(ResponseValidator, schema, body, f"{method.upper()} {path_template} {status} response")


def request_schema(method: str, path_template: str) -> dict:
    body = operation(method, path_template).get("requestBody")
    if body is None:
        raise AssertionError(f"{method.upper()} {path_template} takes no request body")
    (schema,) = (media["schema"] for media in body["content"].values())
    return schema


def assert_valid_request(method: str, path_template: str, body) -> None:
    """`body` is a request the spec allows: what a conforming Hub could send."""
    schema = request_schema(method, path_template)
    _validate(RequestValidator, schema, body, f"{method.upper()} {path_template} request")


def assert_valid_schema(name: str, instance, *, response: bool = True) -> None:
    """`instance` matches the shared schema #/components/schemas/<name>."""
    schema = resolve({"$ref": f"#/components/schemas/{name}"})
    _validate(ResponseValidator if response else RequestValidator, schema, instance, f"components/schemas/{name}")


def conforms(response, seen: set[tuple[str, str]] | None = None):
    """Check a Flask test-client response against the spec; return its body, parsed exactly.

    The status must be one the operation documents, the media type one it lists,
    and the body must match the schema. `seen` collects (METHOD, template) pairs.
    """
    method, path = response.request.method, response.request.path
    template = template_for(method, path)
    assert str(response.status_code) in operation(method, template)["responses"], (
        f"{method} {path} answered {response.status_code}: {response.get_data(as_text=True)}"
    )
    body = jsonio.loads(response.get_data())
    assert_valid_response(method, template, response.status_code, body, response.mimetype)
    if seen is not None:
        seen.add((method, template))
    return body
