"""The live API docs (/openapi.json, /docs) against VTEX's Gift Card Provider Protocol spec.

Compatible means: the same paths and methods; every property the spec gives a
request body exists in ours with a type that accepts the spec's values, and we
require nothing the spec does not; our 200 responses have every property the
spec lists, with the spec's type, and always carry the ones it requires; errors
are declared with their schema; the credentials are declared as security schemes.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import fakeredis
import pytest
import swagger_ui_bundle

from giftcard_provider import create_app

from .conftest import make_settings

NAME = "giftcard-provider-protocol.openapi.json"
ROOT = Path(__file__).resolve().parent.parent
REFERENCE = next(p for p in (ROOT / "reference" / NAME, ROOT.parent / "shared" / "reference" / NAME) if p.exists())
SPEC = json.loads(REFERENCE.read_text())
METHODS = {"get", "post", "put", "patch", "delete"}


@pytest.fixture(scope="module")
def ours() -> dict:
    app = create_app(make_settings(), redis_client=fakeredis.FakeRedis(decode_responses=True))
    response = app.test_client().get("/openapi.json")  # no credentials: the docs are public
    assert response.status_code == 200
    return response.json


def operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {
        (path, method): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


OPERATIONS = sorted(operations(SPEC))


def resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = spec["components"][kind][name]
    return node


def flatten(spec: dict, node: dict) -> dict:
    """A schema with its $ref resolved and any anyOf/oneOf/allOf merged (marshmallow documents a
    nullable nested schema as anyOf [{nullable object}, {$ref}]): the modelled branch, nullable if any is."""
    node = resolve(spec, node)
    for key in ("anyOf", "oneOf", "allOf"):
        if key in node:
            branches = sorted((flatten(spec, b) for b in node[key]), key=lambda b: "properties" in b)
            merged = {k: v for branch in branches for k, v in branch.items()}
            merged["nullable"] = bool(node.get("nullable")) or any(b.get("nullable") for b in branches)
            return merged
    return node


def json_schema(spec: dict, holder: dict) -> dict:
    """The schema of a request body or response, whatever JSON media type it is declared under."""
    content = resolve(spec, holder)["content"]
    (media,) = [m for m in content if "json" in m]
    return resolve(spec, content[media]["schema"])


def test_the_same_paths_and_methods(ours):
    assert sorted(operations(ours)) == OPERATIONS


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_path_parameters_have_the_spec_names(ours, path, method):
    def path_parameters(spec, path, method):
        item = spec["paths"][path]
        declared = item.get("parameters", []) + item[method].get("parameters", [])
        return {p["name"] for p in map(lambda p: resolve(spec, p), declared) if p["in"] == "path"}

    assert path_parameters(ours, path, method) == path_parameters(SPEC, path, method)


# -- request bodies and 200 responses ----------------------------------------------------


def accepts(ours_type: str | None, spec_type: str | None) -> bool:
    """Does a field of ours_type accept the values the spec sends as spec_type?"""
    return ours_type is None or ours_type == spec_type or (ours_type == "number" and spec_type == "integer")


class Compare:
    """Walks a schema of the spec and one of ours side by side, collecting the problems."""

    def __init__(self, ours: dict):
        self.ours = ours
        self.problems: list[str] = []

    def request(self, theirs: dict, mine: dict, where: str) -> list[str]:
        theirs, mine = flatten(SPEC, theirs), flatten(self.ours, mine)
        if not accepts(mine.get("type"), theirs.get("type")):
            self.problems.append(f"{where}: spec sends {theirs.get('type')}, we accept {mine.get('type')}")
            return self.problems
        if theirs.get("nullable") and mine.get("type") and not mine.get("nullable"):
            self.problems.append(f"{where}: spec sends null, we refuse it")
        if theirs.get("type") == "array" and "items" in mine:
            self.request(theirs["items"], mine["items"], f"{where}[]")
        if theirs.get("type") == "object":
            if mine.get("additionalProperties") is False:
                self.problems.append(f"{where}: unknown fields would be refused")
            if "properties" not in mine:
                return self.problems  # a free-form object of ours accepts whatever the spec describes
            for name, prop in theirs.get("properties", {}).items():
                if name not in mine["properties"]:
                    self.problems.append(f"{where}.{name}: missing from our schema")
                else:
                    self.request(prop, mine["properties"][name], f"{where}.{name}")
            extra = set(mine.get("required", [])) - set(theirs.get("required", []))
            if extra:
                self.problems.append(f"{where}: we require {sorted(extra)}, which the spec does not")
        return self.problems

    def response(self, theirs: dict, mine: dict, where: str) -> list[str]:
        theirs, mine = flatten(SPEC, theirs), flatten(self.ours, mine)
        spec_type, our_type = theirs.get("type"), mine.get("type")
        if spec_type and spec_type != our_type and not (spec_type == "number" and our_type == "integer"):
            self.problems.append(f"{where}: spec says {spec_type}, we say {our_type}")
            return self.problems
        if spec_type == "array":
            items = dict(flatten(SPEC, theirs["items"]))
            if "required" in theirs:  # the settlements list puts its items' "required" on the array
                items["required"] = theirs["required"]
            self.response(items, mine["items"], f"{where}[]")
        if spec_type == "object" or "properties" in theirs:
            for name, prop in theirs.get("properties", {}).items():
                if name not in mine.get("properties", {}):
                    self.problems.append(f"{where}.{name}: missing from our response")
                else:
                    self.response(prop, mine["properties"][name], f"{where}.{name}")
            missing = set(theirs.get("required", [])) - set(mine.get("required", []))
            if missing:
                self.problems.append(f"{where}: spec requires {sorted(missing)}, we do not promise them")
        return self.problems


BODIES = [op for op in OPERATIONS if "requestBody" in SPEC["paths"][op[0]][op[1]]]


@pytest.mark.parametrize(("path", "method"), BODIES)
def test_request_bodies_accept_what_the_spec_sends(ours, path, method):
    theirs = json_schema(SPEC, SPEC["paths"][path][method]["requestBody"])
    mine = json_schema(ours, ours["paths"][path][method]["requestBody"])
    assert Compare(ours).request(theirs, mine, f"{method.upper()} {path}") == []


# Optional properties of the spec we do not answer yet, each with its reason. Remove an entry when it is fixed.
KNOWN_GAPS: set[str] = set()


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_200_responses_cover_the_spec(ours, path, method):
    theirs = json_schema(SPEC, SPEC["paths"][path][method]["responses"]["200"])
    mine = json_schema(ours, ours["paths"][path][method]["responses"]["200"])
    where = f"{method.upper()} {path} 200"
    expected = sorted(gap for gap in KNOWN_GAPS if gap.startswith(where + "."))
    assert Compare(ours).response(theirs, mine, where) == expected


def test_known_gaps_are_optional_in_the_spec():
    """Only properties the spec does not require may be listed as gaps."""
    for gap in KNOWN_GAPS:
        method, path, rest = gap.split(" ", 2)
        name = rest.split(":")[0].removeprefix("200.")
        theirs = json_schema(SPEC, SPEC["paths"][path][method.lower()]["responses"]["200"])
        assert name in theirs["properties"] and name not in theirs.get("required", [])


def test_the_checkers_catch_mismatches():
    """Not vacuous: a missing field, a narrower type, a refused null, an extra requirement all show."""
    theirs = {
        "type": "object",
        "required": ["a"],
        "properties": {"a": {"type": "number"}, "b": {"type": "string"}, "c": {"type": "string", "nullable": True}},
    }
    mine = {"type": "object", "required": ["a", "c"], "properties": {"a": {"type": "integer"}, "c": {"type": "string"}}}
    assert Compare({}).request(theirs, mine, "X") == [
        "X.a: spec sends number, we accept integer",
        "X.b: missing from our schema",
        "X.c: spec sends null, we refuse it",
        "X: we require ['c'], which the spec does not",
    ]
    theirs = {
        "type": "object",
        "required": ["id", "when"],
        "properties": {"id": {"type": "string"}, "when": {"type": "string"}, "n": {"type": "number"}},
    }
    mine = {"type": "object", "required": ["id"], "properties": {"id": {"type": "integer"}, "when": {}}}
    assert Compare({}).response(theirs, mine, "X") == [
        "X.id: spec says string, we say integer",
        "X.when: spec says string, we say None",
        "X.n: missing from our response",
        "X: spec requires ['when'], we do not promise them",
    ]


# -- errors and security --------------------------------------------------------------


def test_the_error_schema_is_declared(ours):
    error = ours["components"]["schemas"]["Error"]
    assert {name: prop["type"] for name, prop in error["properties"].items()} == {
        "code": "string",
        "message": "string",
        "errors": "object",
        "field": "string",
    }
    assert sorted(error["required"]) == ["code", "message"]


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_error_responses_are_declared_with_the_error_schema(ours, path, method):
    responses = ours["paths"][path][method]["responses"]
    expected = {"401", "403", "503", "default"}
    if "requestBody" in ours["paths"][path][method]:
        expected.add("400")
    if "{giftCardId}" in path:
        expected.add("404")
        if method == "post":
            expected |= {"409", "422"}
    declared = {status for status in responses if status == "default" or int(status) >= 400}
    assert declared == expected
    for status in declared:
        response = resolve(ours, responses[status])
        if status in ("401", "403"):
            assert "content" not in response  # VTEX's rule: empty bodies
        else:
            assert response["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}


def test_error_bodies_match_the_declared_schema(ours, hub):
    error = ours["components"]["schemas"]["Error"]
    card = hub.funded_card(Decimal("5"))
    tx = hub.debit(card["id"], Decimal("1"), rid="doc-1")
    bodies = [
        hub.get("/giftcards/0123456789abcdef").json,  # 404
        hub.post("/giftcards", {"caption": 1}).json,  # 400 with field errors
        hub.transaction(card["id"], "Credit", Decimal("1"), rid="doc-1").json,  # 409 with the field
        hub.settle(card["id"], tx, Decimal("9")).json,  # 422
    ]
    for body in bodies:
        assert set(error["required"]) <= set(body) <= set(error["properties"]), body
        assert all(isinstance(body[k], str) for k in ("code", "message"))


def test_credentials_are_declared_as_the_spec_declares_them(ours):
    def schemes(spec):
        return {
            name: {k: scheme[k] for k in ("type", "in", "name")}
            for name, scheme in spec["components"]["securitySchemes"].items()
        }

    assert schemes(ours) == schemes(SPEC)
    assert ours["security"] == SPEC["security"]


def _docs_client(**settings):
    return create_app(make_settings(**settings), redis_client=fakeredis.FakeRedis(decode_responses=True)).test_client()


def test_swagger_ui_is_served_from_our_origin_without_credentials(ours):
    client = _docs_client()
    page = client.get("/docs")
    assert page.status_code == 200 and page.content_type.startswith("text/html")
    html = page.get_data(as_text=True)
    assert 'data-spec-url="/openapi.json"' in html
    # Every asset is ours, at the pinned package's version: no CDN, no other origin, no inline script.
    assert "//" not in html.replace("<!DOCTYPE html>", "") and "<script>" not in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = ("swagger-ui.css", "favicon-32x32.png", "swagger-ui-bundle.js", "swagger-ui-standalone-preset.js")
    assert sorted(sources) == sorted([*(f"/docs/{name}" for name in assets), "/docs/init.js"])
    bundle_dir = Path(swagger_ui_bundle.swagger_ui_path)
    for source in sources:
        with client.get(source) as asset:  # a file response: closed, or its file would be left open
            assert asset.status_code == 200, source
            if source != "/docs/init.js":
                assert asset.get_data() == (bundle_dir / source.removeprefix("/docs/")).read_bytes()
            assert asset.headers["Content-Security-Policy"] == page.headers["Content-Security-Policy"]
    init = client.get("/docs/init.js").get_data(as_text=True)
    assert "dataset.specUrl" in init and "validatorUrl: null" in init  # no spec URL sent to swagger.io
    assert client.get("/docs/swagger-ui.js.map").status_code == 404  # only the listed assets
    assert client.get("/docs/..%2f..%2fswagger_ui_bundle%2f__init__.py").status_code in (401, 404)  # no route


def test_the_docs_page_allows_only_its_own_origin():
    policy = _docs_client().get("/docs").headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["default-src"] == "'self'"  # scripts, styles, connections: this origin only
    assert directives["img-src"] == "'self' data:"  # Swagger UI's stylesheet draws its icons from data: URLs
    assert directives["frame-ancestors"] == "'none'" and directives["object-src"] == "'none'"
    assert "unsafe" not in policy and "http" not in policy


@pytest.mark.parametrize(
    "app_env, api_docs, served", [("development", True, True), ("production", False, False), ("production", True, True)]
)
def test_swagger_ui_is_off_in_production_unless_asked_for(app_env, api_docs, served):
    client = _docs_client(app_env=app_env, api_docs=api_docs)
    assert (client.get("/docs").status_code == 200) is served
    with client.get("/docs/swagger-ui-bundle.js") as asset:
        assert (asset.status_code == 200) is served
    assert client.get("/openapi.json").status_code == 200  # the document itself is always served


def test_answers_carry_exactly_what_our_document_declares(ours, hub):
    """The views write their 200 bodies directly (blueprints.answer: no marshmallow dump on the way out),
    so nothing but this test ties a body to the schema that documents it: every field a body carries is
    declared, with its type, and every declared field is there (a string date, a number amount, an
    object for a link)."""
    card = hub.funded_card(Decimal("5"), profileId="owner@example.com")
    tx = hub.debit(card["id"], Decimal("3"), rid="doc-debit")
    hub.settle(card["id"], tx, Decimal("1"), rid="doc-settle")
    hub.cancel(card["id"], tx, Decimal("0.5"), rid="doc-cancel")
    base = f"/giftcards/{card['id']}/transactions/{tx}"
    answers = [
        ("/giftcards", "post", hub.post("/giftcards", {"relationName": "doc", "caption": "c", "profileId": "x@y.z"})),
        ("/giftcards/_search", "post", hub.search(client={"email": "owner@example.com"})),
        ("/giftcards/{giftCardId}", "get", hub.get(f"/giftcards/{card['id']}")),
        ("/giftcards/{giftCardId}/transactions", "post", hub.transaction(card["id"], "Debit", Decimal("1"))),
        ("/giftcards/{giftCardId}/transactions", "get", hub.get(f"/giftcards/{card['id']}/transactions")),
        ("/giftcards/{giftCardId}/transactions/{transactionId}", "get", hub.get(base)),
        ("/giftcards/{giftCardId}/transactions/{transactionId}/authorization", "get", hub.get(f"{base}/authorization")),
        ("/giftcards/{giftCardId}/transactions/{tId}/settlements", "get", hub.get(f"{base}/settlements")),
        ("/giftcards/{giftCardId}/transactions/{tId}/settlements", "post", hub.settle(card["id"], tx, Decimal("1"))),
        ("/giftcards/{giftCardId}/transactions/{transactionId}/cancellations", "get", hub.get(f"{base}/cancellations")),
        (
            "/giftcards/{giftCardId}/transactions/{transactionId}/cancellations",
            "post",
            hub.cancel(card["id"], tx, Decimal("0.5")),
        ),
    ]
    assert {(path, method) for path, method, _ in answers} == set(OPERATIONS)
    json_types = {"string": str, "number": (int, Decimal), "integer": int, "boolean": bool, "object": dict}
    for path, method, response in answers:
        assert response.status_code == 200, (path, method, response.json)
        schema = flatten(ours, json_schema(ours, ours["paths"][path][method]["responses"]["200"]))
        documents = response.json if schema.get("type") == "array" else [response.json]
        if schema.get("type") == "array":
            schema = flatten(ours, schema["items"])
        assert documents, (path, method)
        for document in documents:
            assert set(document) == set(schema["properties"]), (path, method)
            for name, value in document.items():
                declared = flatten(ours, schema["properties"][name])
                if value is None:
                    assert declared.get("nullable"), (path, method, name)
                elif "type" in declared:
                    assert isinstance(value, json_types[declared["type"]]), (path, method, name, value)
                    if declared.get("format") == "date-time":
                        datetime.fromisoformat(value)
