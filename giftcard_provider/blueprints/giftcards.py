"""Gift cards: POST /giftcards/_search, GET /giftcards/{id}, POST /giftcards."""

from __future__ import annotations

from flask.views import MethodView

from schemas.common import epoch_ms, iso_ms
from schemas.giftcards import CardSchema, CreateCardRequestSchema, SearchRequestSchema, SearchResultSchema

from ..api import Blueprint
from ..codes import mask
from ..errors import NotFound
from ..identity import identities as identities_of
from ..identity import normalise as normalise_identity
from ..money import to_major
from ..records import Card
from ..throttle import code_lookups
from . import answer, content_range, ledger, links, requested_range, settings

blp = Blueprint("giftcards", __name__, url_prefix="/giftcards", description="Search, read and create gift cards.")


def search_result(card: Card) -> dict:
    return {
        "id": card.id,
        "provider": settings().provider_id,
        "balance": to_major(card.balance, card.exponent),
        "_self": {"href": links().card(card.id)},
        "caption": card.caption,
        "relationName": card.relation_name,
        "emissionDate": iso_ms(card.emission_ms),
        "expiringDate": iso_ms(card.expiring_ms),
    }


def card_body(card: Card, full_code: str | None = None) -> dict:
    transactions = {"href": links().transactions(card.id)}
    return {
        "id": card.id,
        "redemptionToken": card.token,
        "redemptionCode": full_code or mask(card.code_last4),
        "balance": to_major(card.balance, card.exponent),
        "emissionDate": iso_ms(card.emission_ms),
        "expiringDate": iso_ms(card.expiring_ms),
        "currencyCode": card.currency,
        "discount": False,
        **card.terms(),
        "status": card.status,
        # The endpoint's schema says "transactions", the shared one and the guide "transaction".
        "transactions": transactions,
        "transaction": transactions,
        "_self": {"href": links().card(card.id)},
    }


@blp.route("/_search")
class Search(MethodView):
    @blp.arguments(SearchRequestSchema())  # an instance: webargs would build one per request from a class
    @blp.response(200, SearchResultSchema(many=True))
    def post(self, body):
        """Find the card a redemption code names, or the client's own cards.

        Only usable cards are listed (active, in their validity window, with a
        positive balance); a code that names no usable card gives [] and no hint.
        """
        client, cart = body["client"], body["cart"]
        identities = identities_of(client.get("id"), client.get("email"), client.get("document"))
        code = cart.get("redemptionCode")
        if code and code.strip():
            # Failed look-ups are limited per shopper (the whole identity sent); a throttled one finds nothing.
            who = (normalise_identity(client.get(part)) for part in ("id", "email", "document"))
            lookup = code_lookups().begin(*who)
            counts, card = ledger().find_by_code_unless(code, lookup.counters, lookup.over_limit)
            if lookup.over_limit(counts):
                lookup.refuse(counts)
            cards = [card] if card and card.visible_to(identities) and card.usable else []
            lookup.finish(found=bool(cards))
        else:
            cards = ledger().cards_of(identities) if identities else []
            if cart.get("relationName"):
                cards = [c for c in cards if c.relation_name == cart["relationName"]]
        cards = [c for c in cards if c.usable]
        start, stop = requested_range(default_last=49)
        page = cards[start : stop + 1]
        return answer([search_result(c) for c in page], content_range(start, len(page), len(cards)))


@blp.route("")
class GiftCards(MethodView):
    @blp.arguments(CreateCardRequestSchema())  # an instance: webargs would build one per request from a class
    @blp.response(200, CardSchema)
    def post(self, body):
        """Create a card with balance 0; money arrives through Credit transactions.

        The response is the only place the full redemption code is ever shown.
        """
        emission, expiring = body.get("emissionDate"), body.get("expiringDate")
        card, code = ledger().create_card(
            relation_name=body["relationName"],
            caption=body["caption"],
            profile_id=normalise_identity(body["profileId"]),
            currency=body["currencyCode"] or settings().default_currency,
            restricted_to_owner=body["restrictedToOwner"],
            multiple_redemptions=body["multipleRedemptions"],
            multiple_credits=body["multipleCredits"],
            emission_ms=epoch_ms(emission) if emission else None,
            expiring_ms=epoch_ms(expiring) if expiring else None,
        )
        return answer(card_body(card, full_code=code))


@blp.route("/<giftCardId>")
class GiftCard(MethodView):
    @blp.response(200, CardSchema)
    def get(self, giftCardId):
        """A card: balance (available now), validity window, masked code, links."""
        card = ledger().card(giftCardId)
        if card is None:
            raise NotFound("gift card not found")
        return answer(card_body(card))
