"""A request schema's compiled load (schemas/fast_load.py) agrees with marshmallow or steps aside.

For every request schema, generated bodies (valid ones, values at and past each limit, wrong types,
nulls, unknown fields) are loaded by the plan and by marshmallow alone: wherever the plan decides,
marshmallow must accept the body and load the same values of the same types. The Hub's own bodies
must be decided by the plan, or it would save nothing.
"""

from __future__ import annotations

import contextlib
from decimal import Decimal

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError, fields, validate

import giftcard_provider  # noqa: F401  (schemas/ imports the money module through the package)
from schemas import giftcards, transactions
from schemas.common import MoneyField, RequestSchema
from schemas.fast_load import UNDECIDED, plan_for


def subclasses(cls) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *subclasses(sub))]


# Every request schema with a plan, the nested ones too (an error deep in a body is then as likely
# as one on top). test_a_schema_the_plan_cannot_follow_has_none names those without.
OURS = sorted((c for c in subclasses(RequestSchema) if c.__module__.startswith("schemas.")), key=lambda c: c.__name__)
REQUEST_SCHEMAS = [c for c in OURS if plan_for(c())]


@contextlib.contextmanager
def marshmallow_alone():
    """Every RequestSchema, nested ones included, loads through marshmallow only."""
    own = RequestSchema.__dict__["load"]  # the plan first
    RequestSchema.load = Schema.load
    try:
        yield
    finally:
        RequestSchema.load = own


def reference(schema: Schema, data):
    with marshmallow_alone():
        try:
            return "ok", schema.load(data)
        except ValidationError as exc:
            return "invalid", exc.messages


def typed(value):
    """A value with the types of everything in it spelled out: 1, True and Decimal(1) all differ."""
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(typed(v) for v in value))
    return (type(value).__name__, repr(value))


junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=6,
)


def lengths(field: fields.Field) -> list[int]:
    found = [0, 1]
    for validator in field.validators:
        if isinstance(validator, validate.Length):
            found += [n + d for n in (validator.min, validator.max) if n is not None for d in (-1, 0, 1) if n + d >= 0]
    return found


def valid_values(field: fields.Field) -> st.SearchStrategy:
    """Values one would expect a field to accept (the plan and marshmallow still decide)."""
    for validator in field.validators:
        if isinstance(validator, validate.OneOf):
            return st.sampled_from(list(validator.choices))
    if isinstance(field, fields.String):
        return st.text(alphabet="ab", min_size=1, max_size=8)
    if isinstance(field, fields.Integer):
        return st.integers()
    if isinstance(field, MoneyField):
        return st.decimals(min_value=0, max_value=10**6, places=2, allow_nan=False) | st.integers(0, 10**6)
    if isinstance(field, fields.Nested):
        return bodies(field.schema, valid_values)
    if isinstance(field, fields.List):
        return st.lists(valid_values(field.inner), max_size=3)
    return junk


def any_values(field: fields.Field) -> st.SearchStrategy:
    """Values for one field: valid, at and past its limits, of other kinds, or null."""
    own = [st.none(), st.booleans(), junk, valid_values(field)]
    if isinstance(field, fields.String):
        own.append(
            st.sampled_from(lengths(field)).flatmap(lambda n: st.text(alphabet="ab @\t", min_size=n, max_size=n))
        )
    elif isinstance(field, fields.Integer):
        own.append(st.integers().map(str))
    elif isinstance(field, MoneyField):
        own.append(st.decimals(min_value=-10, max_value=10**6, places=3, allow_nan=False))
    elif isinstance(field, fields.Nested):
        own.append(bodies(field.schema, any_values))
    elif isinstance(field, fields.List):
        own += [st.lists(any_values(field.inner), max_size=3), st.text(max_size=3)]
    return st.one_of(*own)


def bodies(schema: Schema, values) -> st.SearchStrategy:
    """Dicts with the schema's required fields and any of the others, values drawn by `values`, and
    maybe an unknown field."""
    members = {(f.data_key or name): (f.required, values(f)) for name, f in schema.load_fields.items()}
    required = {k: v for k, (needed, v) in members.items() if needed}
    optional = {k: v for k, (needed, v) in members.items() if not needed}
    known = st.fixed_dictionaries(required, optional=optional)
    return st.tuples(known, st.dictionaries(st.sampled_from(["zz", "extra"]), junk, max_size=1)).map(
        lambda pair: {**pair[1], **pair[0]}
    )


def changed(schema: Schema, body: dict) -> st.SearchStrategy:
    """`body` with one field, at any depth, changed to anything or left out."""
    fields_by_key = {(f.data_key or name): f for name, f in schema.load_fields.items()}

    def change(key):
        field = fields_by_key[key]
        options = [
            any_values(field).map(lambda v: {**body, key: v}),
            st.just({n: v for n, v in body.items() if n != key}),
        ]
        if isinstance(field, fields.Nested) and isinstance(body.get(key), dict):
            options.append(changed(field.schema, body[key]).map(lambda inner: {**body, key: inner}))
        return st.one_of(*options)

    return st.sampled_from(sorted(fields_by_key)).flatmap(change)


def generated(schema: Schema) -> st.SearchStrategy:
    """Valid bodies, valid bodies with one field changed, wild bodies, junk."""
    valid = bodies(schema, valid_values)
    return st.one_of(valid, valid.flatmap(lambda body: changed(schema, body)), bodies(schema, any_values), junk)


@pytest.mark.parametrize("schema_class", REQUEST_SCHEMAS, ids=lambda c: c.__name__)
def test_where_the_plan_decides_marshmallow_agrees(schema_class):
    schema = schema_class()
    plan = plan_for(schema)
    decided = []

    @settings(max_examples=400, deadline=None)
    @given(generated(schema))
    def check(data):
        fast = plan(data)
        if fast is UNDECIDED:
            return
        decided.append(data)
        outcome, loaded = reference(schema, data)
        assert outcome == "ok", f"the plan accepted {data!r}, marshmallow refused it: {loaded}"
        assert typed(fast) == typed(loaded)

    check()
    assert decided, "the plan decided none of the generated bodies"


TRICKY = [None, True, False, 0, 1, -1, 10**30, "", " ", "12", "1.5", "Debit", "x" * 600, [], [None], [{}], {}, {"a": 1}]
TRICKY += [Decimal("1.5"), Decimal("0.001"), Decimal("-0"), Decimal("1E+3"), 1.5]


@pytest.mark.parametrize("schema_class", REQUEST_SCHEMAS, ids=lambda c: c.__name__)
def test_each_field_with_each_tricky_value_or_left_out(schema_class):
    # Rare for the generator to combine, so every one of them on every field of a body the plan takes.
    schema = schema_class()
    plan = plan_for(schema)
    every = st.fixed_dictionaries({(f.data_key or n): valid_values(f) for n, f in schema.load_fields.items()})
    base = find(every, lambda body: plan(body) is not UNDECIDED, settings=settings(database=None))
    for key in base:
        for body in [{k: v for k, v in base.items() if k != key}, *({**base, key: v} for v in TRICKY)]:
            fast = plan(body)
            if fast is not UNDECIDED:
                outcome, loaded = reference(schema, body)
                assert outcome == "ok", f"the plan accepted {body!r}, marshmallow refused it: {loaded}"
                assert typed(fast) == typed(loaded)


def test_the_hub_bodies_are_decided_by_the_plan():
    debit = {
        "operation": "Debit",
        "value": Decimal("12.34"),
        "requestId": "req-1",
        "description": "order 1",
        "redemptionToken": "t" * 32,
        "redemptionCode": "***ABCD",
        "orderInfo": {
            "orderId": "v1-01",
            "sequence": 1,
            "clientProfile": {"email": "shopper@example.com", "document": "123", "phone": "+55", "isCorporate": False},
            "cart": {"grandTotal": 1234, "items": []},
            "shipping": None,
        },
        "somethingNew": 1,
    }
    search = {
        "client": {"id": "c1", "email": "shopper@example.com", "document": None},
        "cart": {"redemptionCode": "ABCD", "relationName": None, "grandTotal": 1, "items": [{"id": "1", "price": 1}]},
    }
    settle = {"value": 10, "requestId": "req-2"}
    for schema, body in [
        (transactions.TransactionRequestSchema(), debit),
        (giftcards.SearchRequestSchema(), search),
        (transactions.OperationRequestSchema(), settle),
    ]:
        fast = plan_for(schema)(body)
        assert fast is not UNDECIDED, body
        assert reference(schema, body)[0] == "ok"
        assert typed(fast) == typed(reference(schema, body)[1]) == typed(schema.load(body))
    assert "load" in RequestSchema.__dict__  # the app's load (the plan first) is in place again


def test_a_schema_the_plan_cannot_follow_has_none():
    # Hooks (here @validates and @validates_schema) and fields of other kinds are marshmallow's to run.
    without = {c.__name__ for c in OURS if not plan_for(c())}
    assert without == {"CreateCardRequestSchema"}
