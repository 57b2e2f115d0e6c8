"""A request schema's load, compiled from its fields for the bodies that pass.

Loading the Hub's Debit through marshmallow walked every field of the body and its nested
`orderInfo` through marshmallow's generic machinery (error stores, getters, per-field hooks): about a
fifth of the request's CPU (issue 12). Most bodies are valid, and for a valid body the work is small:
check each value's type, run the field's validators, copy it. A plan does that from the schema's own
fields and validators (nothing is restated here), and whenever it meets anything it does not handle
the way marshmallow would, it answers UNDECIDED and the caller runs marshmallow's load, which decides
and words the errors. So a plan can only agree with marshmallow or step aside:
tests/test_fast_load.py checks that on generated bodies of every request schema.

What a plan handles: a dict body of a schema with no hooks, unknown fields excluded, and fields of
the kinds below, without per-field pre/post-load functions or dotted attributes. A field value it
decides: missing (left out, or its load_default), None where allowed, a `str` for String, an `int`
(not a bool) for Integer, anything for Raw, a dict for Nested, a list for List, and whatever
MoneyField's own _deserialize accepts. The rest (a string "12" for an Integer, a missing required
field, a validator that refuses) is marshmallow's to decide.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields
from marshmallow.utils import missing

UNDECIDED = object()

Loader = Callable[[Any], Any]  # a value -> its loaded value, or UNDECIDED


def plan_for(schema: Schema) -> Loader | None:
    """The compiled load of `schema` (None: marshmallow must load every body of it)."""
    if schema.many or schema.partial or schema.unknown != EXCLUDE or any(schema._hooks.values()):
        return None
    if schema.dict_class is not dict:  # the plan answers plain dicts
        return None
    steps = []
    for attr_name, field in schema.load_fields.items():
        output_key = field.attribute or attr_name
        value_loader = _field_loader(field)
        if value_loader is None or "." in output_key:
            return None
        input_key = field.data_key if field.data_key is not None else attr_name
        steps.append((input_key, output_key, field.required, field.load_default, value_loader))

    def load(data):
        if type(data) is not dict:
            return UNDECIDED
        result = {}
        for input_key, output_key, required, load_default, value_loader in steps:
            value = data.get(input_key, missing)
            if value is missing:
                if required:
                    return UNDECIDED
                if load_default is not missing:
                    result[output_key] = load_default() if callable(load_default) else load_default
                continue
            loaded = value_loader(value)
            if loaded is UNDECIDED:
                return UNDECIDED
            result[output_key] = loaded
        return result

    return load


def _field_loader(field: fields.Field) -> Loader | None:
    """How to load one present value of `field`: its type check, then its validators."""
    if field.pre_load or field.post_load:
        return None
    convert = _converter(field)
    if convert is None:
        return None
    allow_none, validators = field.allow_none, tuple(field.validators)

    def load(value):
        if value is None:
            return None if allow_none else UNDECIDED
        loaded = convert(value)
        if loaded is UNDECIDED:
            return UNDECIDED
        try:
            for validator in validators:
                if validator(loaded) is False:  # marshmallow's to judge (4.x accepts it; 3.x refused)
                    return UNDECIDED
        except ValidationError:
            return UNDECIDED
        return loaded

    return load


def _converter(field: fields.Field) -> Loader | None:
    """A non-None value -> the field's deserialized value, or UNDECIDED."""
    kind = type(field)
    if kind is fields.String:
        return lambda value: value if type(value) is str else UNDECIDED
    if kind is fields.Integer:
        return lambda value: value if type(value) is int else UNDECIDED
    if kind is fields.Raw:
        return lambda value: value
    if kind is fields.Nested:
        if field.many or field.unknown is not None:
            return None
        nested = plan_for(field.schema)
        return None if nested is None else nested  # it answers UNDECIDED for a non-dict itself
    if kind is fields.List:
        inner = _field_loader(field.inner)
        if inner is None:
            return None

        def each(value):
            if type(value) is not list:
                return UNDECIDED
            loaded = [inner(item) for item in value]
            return UNDECIDED if any(item is UNDECIDED for item in loaded) else loaded

        return each
    if kind.__dict__.get("fast_load"):  # a field class whose _deserialize is its whole load (not inherited)
        return _own_deserialize(field)
    return None


def _own_deserialize(field: fields.Field) -> Loader:
    def convert(value):
        try:
            return field._deserialize(value, None, None)
        except ValidationError:
            return UNDECIDED

    return convert
