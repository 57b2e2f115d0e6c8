"""Transaction payloads: create, read, settle, cancel, authorization."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from .common import MAX_EMAIL, MAX_ID, MAX_NAME, EpochMs, HrefSchema, MoneyField, RequestSchema, ignored, non_empty

REQUEST_ID = [validate.Length(min=1, max=128), non_empty]


class ClientProfileSchema(RequestSchema):
    email = fields.String(allow_none=True, validate=validate.Length(max=MAX_EMAIL))
    document = fields.String(allow_none=True, validate=validate.Length(max=MAX_ID))
    firstName = fields.String(allow_none=True, validate=validate.Length(max=MAX_NAME))
    lastName = fields.String(allow_none=True, validate=validate.Length(max=MAX_NAME))
    phone = ignored("string")
    birthDate = ignored("string")
    isCorporate = ignored("boolean")


class OrderInfoSchema(RequestSchema):
    orderId = fields.String(allow_none=True, validate=validate.Length(max=128))
    sequence = fields.Integer(strict=False, allow_none=True)
    clientProfile = fields.Nested(ClientProfileSchema, allow_none=True)
    cart = ignored("object")
    shipping = ignored("object")


class TransactionRequestSchema(RequestSchema):
    """POST /giftcards/{id}/transactions: a Debit holds `value`, a Credit loads it."""

    operation = fields.String(required=True, validate=validate.OneOf(["Debit", "Credit"]))
    value = MoneyField(required=True)
    requestId = fields.String(required=True, validate=REQUEST_ID)
    description = fields.String(allow_none=True, validate=validate.Length(max=500))
    # May arrive masked ("***ASDQ") or null: never used to find the card.
    redemptionCode = fields.String(allow_none=True)
    redemptionToken = fields.String(allow_none=True, validate=validate.Length(max=128))
    orderInfo = fields.Nested(OrderInfoSchema, allow_none=True)


class TransactionRefSchema(Schema):
    cardId = fields.String(required=True)
    id = fields.String(required=True)
    _self = fields.Nested(HrefSchema, required=True, data_key="_self")


class TransactionSchema(Schema):
    id = fields.String()
    cardId = fields.String()
    operation = fields.String()
    value = MoneyField()
    date = EpochMs()
    requestId = fields.String()
    orderId = fields.String()
    description = fields.String()
    settlement = fields.Nested(HrefSchema)
    cancellation = fields.Nested(HrefSchema)
    authorization = fields.Nested(HrefSchema)
    _self = fields.Nested(HrefSchema, data_key="_self")


class OperationRequestSchema(RequestSchema):
    """POST .../settlements and .../cancellations: `value` is this operation's amount."""

    value = MoneyField(required=True)
    requestId = fields.String(required=True, validate=REQUEST_ID)


class OperationSchema(Schema):
    """{oid, value, date}: a settlement, cancellation or the authorization."""

    oid = fields.String(required=True)
    value = MoneyField(required=True)
    date = EpochMs(required=True)
