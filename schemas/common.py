"""Fields and bases shared by the protocol schemas."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from marshmallow import EXCLUDE, Schema, ValidationError, fields

from giftcard_provider.money import Amount

from .fast_load import UNDECIDED, plan_for

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Caps on the shopper identity fields a body may carry (longer: 400): they are hashed, compared
# and, for owners, stored, so none may be unbounded. 254 is the longest address SMTP can carry.
MAX_EMAIL = 254
MAX_ID = 128  # client ids and documents (CPF/CNPJ, tax ids)
MAX_NAME = 200


def owner_length(value: str) -> None:
    """A card's owner is an e-mail address or a client id / document: the same caps as the identities
    a search or a transaction names, so every owner can be named by one."""
    limit = MAX_EMAIL if "@" in value else MAX_ID
    if len(value.strip()) > limit:
        raise ValidationError(f"Longer than {limit} characters.")


class RequestSchema(Schema):
    """Base of every request body: unknown fields are dropped, not refused.

    A body is loaded by the schema's compiled plan first (schemas/fast_load.py), and by marshmallow
    whenever the plan steps aside: whatever the plan accepts, marshmallow accepts the same way."""

    class Meta:
        unknown = EXCLUDE

    _plan = None  # compiled on the first load: False when this schema has none

    def load(self, data, *, many=None, partial=None, unknown=None):
        if many is None and partial is None and unknown is None:
            plan = self._plan
            if plan is None:
                plan = self._plan = plan_for(self) or False
            if plan:
                result = plan(data)
                if result is not UNDECIDED:
                    return result
        return super().load(data, many=many, partial=partial, unknown=unknown)


class MoneyField(fields.Field):
    """A JSON number in major units, kept exact.

    Loads into :class:`~giftcard_provider.money.Amount` (the body parser hands
    us a Decimal, never a float). Dumps an int or Decimal as a JSON number.
    """

    fast_load = True  # _deserialize is its whole load (schemas/fast_load.py may call it directly)
    default_error_messages = {
        "invalid": "Must be a JSON number.",
        "amount": "{reason}.",
    }

    def _deserialize(self, value, attr, data, **kwargs) -> Amount:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise self.make_error("invalid")
        try:
            return Amount.from_decimal(Decimal(value))
        except ValueError as exc:
            raise self.make_error("amount", reason=str(exc).capitalize()) from None

    def _serialize(self, value, attr, obj, **kwargs):
        return value


class EpochMs(fields.Field):
    """Epoch milliseconds out as ISO 8601 UTC: 1700000000123 -> "2023-11-14T22:13:20.123Z"."""

    def _serialize(self, value, attr, obj, **kwargs):
        return None if value is None else iso_ms(value)


def iso_ms(epoch_milliseconds: int | str) -> str:
    """Epoch milliseconds -> ISO 8601 UTC with milliseconds: "2023-11-14T22:13:20.123Z"."""
    moment = _EPOCH + timedelta(milliseconds=int(epoch_milliseconds))
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def epoch_ms(moment: datetime) -> int:
    """An aware datetime -> epoch milliseconds, exactly (no float on the way)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def ignored(openapi_type: str) -> fields.Raw:
    """A field the protocol lists and we never read: documented with its type, accepted whatever it
    holds (a Hub request must never be refused over a field we ignore)."""
    return fields.Raw(allow_none=True, metadata={"type": openapi_type, "description": "Accepted and ignored."})


def non_empty(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be blank.")


class HrefSchema(Schema):
    href = fields.String(required=True)
