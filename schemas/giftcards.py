"""Gift card payloads: search, read, create."""

from __future__ import annotations

from datetime import UTC

from marshmallow import Schema, ValidationError, fields, validate, validates, validates_schema

from giftcard_provider.money import UnknownCurrency, exponent_of

from .common import MAX_EMAIL, MAX_ID, EpochMs, HrefSchema, MoneyField, RequestSchema, non_empty, owner_length


class SearchClientSchema(RequestSchema):
    id = fields.String(allow_none=True, validate=validate.Length(max=MAX_ID))
    email = fields.String(allow_none=True, validate=validate.Length(max=MAX_EMAIL))
    document = fields.String(allow_none=True, validate=validate.Length(max=MAX_ID))


class SearchItemSchema(RequestSchema):
    productId = fields.String(allow_none=True)
    id = fields.String(allow_none=True)
    refId = fields.String(allow_none=True)
    name = fields.String(allow_none=True)
    price = fields.Integer(strict=False, allow_none=True)
    quantity = fields.Integer(strict=False, allow_none=True)


class SearchCartSchema(RequestSchema):
    redemptionCode = fields.String(allow_none=True, validate=validate.Length(max=128))
    relationName = fields.String(allow_none=True)
    grandTotal = fields.Integer(strict=False, allow_none=True)
    discounts = fields.Integer(strict=False, allow_none=True)
    shipping = fields.Integer(strict=False, allow_none=True)
    taxes = fields.Integer(strict=False, allow_none=True)
    itemsTotal = fields.Integer(strict=False, allow_none=True)
    items = fields.List(fields.Nested(SearchItemSchema), allow_none=True)


class SearchRequestSchema(RequestSchema):
    """POST /giftcards/_search. A code finds one card; no code lists the client's cards."""

    client = fields.Nested(SearchClientSchema, required=True)
    cart = fields.Nested(SearchCartSchema, required=True)


class SearchResultSchema(Schema):
    id = fields.String(required=True)
    provider = fields.String(required=True)
    balance = MoneyField(required=True)
    _self = fields.Nested(HrefSchema, required=True, data_key="_self")
    caption = fields.String()
    relationName = fields.String()
    emissionDate = EpochMs()
    expiringDate = EpochMs()


class CreateCardRequestSchema(RequestSchema):
    """POST /giftcards. The card starts at balance 0; money arrives by Credit."""

    relationName = fields.String(required=True, validate=[validate.Length(max=100), non_empty])
    caption = fields.String(required=True, validate=validate.Length(max=200))
    profileId = fields.String(required=True, validate=[owner_length, non_empty])
    emissionDate = fields.AwareDateTime(default_timezone=UTC)
    expiringDate = fields.AwareDateTime(default_timezone=UTC)
    restrictedToOwner = fields.Boolean(load_default=False)
    multipleRedemptions = fields.Boolean(load_default=True)
    multipleCredits = fields.Boolean(load_default=True)
    currencyCode = fields.String(load_default=None)

    @validates("currencyCode")
    def _known_currency(self, value, **kwargs):
        if value is not None:
            try:
                exponent_of(value)
            except UnknownCurrency as exc:
                raise ValidationError(str(exc)) from None

    @validates_schema
    def _window(self, data, **kwargs):
        start, end = data.get("emissionDate"), data.get("expiringDate")
        if start and end and end <= start:
            raise ValidationError("Must be later than emissionDate.", "expiringDate")


class CardSchema(Schema):
    """GET /giftcards/{id}, and the body of POST /giftcards (which adds the full code)."""

    id = fields.String(required=True)
    redemptionToken = fields.String()
    redemptionCode = fields.String()
    balance = MoneyField()
    emissionDate = EpochMs()
    expiringDate = EpochMs()
    currencyCode = fields.String()
    discount = fields.Boolean()
    relationName = fields.String()
    caption = fields.String()
    profileId = fields.String()
    restrictedToOwner = fields.Boolean()
    multipleRedemptions = fields.Boolean()
    multipleCredits = fields.Boolean()
    status = fields.String()
    transactions = fields.Nested(HrefSchema)
    transaction = fields.Nested(HrefSchema)
    _self = fields.Nested(HrefSchema, data_key="_self")
