"""Domain errors, their HTTP status, and the one mapping from ledger reply codes."""

from __future__ import annotations


class ProviderError(Exception):
    """An error with a stable machine code, answered as JSON {code, message}."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, **details):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.details = details

    def body(self) -> dict:
        return {"code": self.code, "message": self.message, **self.details}


class InvalidRequest(ProviderError):
    status, code = 400, "invalid_request"


class NotFound(ProviderError):
    status, code = 404, "not_found"


class Conflict(ProviderError):
    status, code = 409, "request_id_conflict"


class Refused(ProviderError):
    """A valid request the ledger refuses: nothing changed."""

    status, code = 422, "refused"


class StoreUnavailable(ProviderError):
    status, code = 503, "store_unavailable"


_REFUSALS = {
    "card_blocked": "the card is blocked",
    "card_inactive": "the card is deactivated",
    "card_expired": "the card is past its expiring date",
    "card_not_yet_valid": "the card is not valid before its emission date",
    "owner_mismatch": "the card is restricted to its owner: a Debit must name the owner in "
    "orderInfo.clientProfile (email or document)",
    "token_required": "a Debit must carry the card's redemptionToken (from GET /giftcards/{giftCardId})",
    "token_mismatch": "redemptionToken does not match the card",
    "redemption_used": "the card allows a single redemption and it has been used",
    "credit_used": "the card allows a single credit and it has been used",
    "insufficient_balance": "the card's available balance is lower than the value",
    "balance_limit": "the credit would take the card above its balance limit",
    "exceeds_settleable": "the value is more than the transaction has left to settle",
    "exceeds_cancellable": "the value is more than the transaction has left to cancel",
}


def _text(value) -> str:
    """A ledger reply element as text (replies are str with decode_responses, bytes without)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def decimals_message(currency: str, exponent: int) -> str:
    """Why an amount is too precise for a currency: "USD amounts have at most 2 decimals"."""
    if exponent == 0:
        return f"{currency} amounts have no decimals"
    return f"{currency} amounts have at most {exponent} decimal{'s' if exponent > 1 else ''}"


def raise_for_reply(reply: list, what: str = "gift card") -> tuple[bool, list]:
    """Turn a ledger.lua reply into (replayed, payload) or raise its domain error."""
    status = _text(reply[0])
    if status in ("ok", "replay"):
        return status == "replay", reply[1:]
    if status == "not_found":
        raise NotFound(f"{what} not found")
    if status == "card_moving":
        raise StoreUnavailable("the card is being moved by an upgrade of the ledger; retry", code="card_moving")
    if status == "conflict":
        field = _text(reply[1])
        raise Conflict(f"requestId was already used with a different {field}", field=field)
    if status == "invalid_amount_precision":
        currency, exponent = (_text(v) for v in reply[1:3])
        message = decimals_message(currency, int(exponent)) if exponent.isdigit() else "value is too precise"
        raise InvalidRequest(message, code="invalid_amount", errors={"json": {"value": [message + "."]}})
    if status == "invalid_amount":
        raise InvalidRequest(
            "value must be a positive amount",
            code="invalid_amount",
            errors={"json": {"value": ["Must be a positive amount."]}},
        )
    if status == "invalid_operation":
        raise InvalidRequest(
            "operation must be Debit or Credit",
            errors={"json": {"operation": ["Must be one of: Debit, Credit."]}},
        )
    if status in _REFUSALS:
        raise Refused(_REFUSALS[status], code=status)
    raise ProviderError(f"unexpected ledger reply {status!r}")
