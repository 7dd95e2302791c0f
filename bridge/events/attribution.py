"""Events of the attribution topic (default ``kard.attributions``), schema version 1.

Two event types: ``offer_attribution`` (a user saw or viewed an offer) and
``notification_attribution`` (a user saw or viewed a push notification). They become
``offerAttribution`` / ``notificationAttribution`` items, sent either to the per-user endpoint
``POST v2/issuers/{org}/users/{user}/attributions`` (default) or to the bulk internal endpoint
``POST v2/internal/attributions`` (``attribution_mode = "bulk"``). ``entity_id`` is the offer id or
the notification id respectively.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field

from bridge.events.common import EventKind, EventModel, Identifier, Timestamp, enum_leaf

__all__ = ["ATTRIBUTION_EVENTS", "AttributionEvent", "NotificationAttributionEvent", "OfferAttributionEvent"]

EventCodeValue = Literal["IMPRESSION", "VIEW"]
EventCode = Annotated[EventCodeValue, enum_leaf(get_args(EventCodeValue))]
OfferMediumValue = Literal["BROWSE", "EMAIL", "MAP", "SEARCH"]
OfferMedium = Annotated[OfferMediumValue, enum_leaf(get_args(OfferMediumValue))]
NotificationMediumValue = Literal["PUSH"]
NotificationMedium = Annotated[NotificationMediumValue, enum_leaf(get_args(NotificationMediumValue))]


class OfferAttributionEvent(EventModel):
    """A user saw (``IMPRESSION``) or opened (``VIEW``) an offer: Kard ``offerAttribution`` item."""

    kind: ClassVar[EventKind] = EventKind.ATTRIBUTION

    event_type: Literal["offer_attribution"]
    user_id: Identifier = Field(description="The user's id on the issuer's system.")
    entity_id: Identifier = Field(description="The Kard offer id.")
    event_code: EventCode
    medium: OfferMedium = Field(description="Where the user met the offer.")
    event_date: Timestamp = Field(description="When it happened.")


class NotificationAttributionEvent(EventModel):
    """A user saw or opened a push notification: Kard ``notificationAttribution`` item."""

    kind: ClassVar[EventKind] = EventKind.ATTRIBUTION

    event_type: Literal["notification_attribution"]
    user_id: Identifier = Field(description="The user's id on the issuer's system.")
    entity_id: Identifier = Field(description="The Kard notification id.")
    event_code: EventCode
    medium: NotificationMedium = Field(default="PUSH", description="Always PUSH.")
    event_date: Timestamp = Field(description="When it happened.")


AttributionEvent = Annotated[OfferAttributionEvent | NotificationAttributionEvent, Field(discriminator="event_type")]

#: ``event_type`` → model, for the attribution topic.
ATTRIBUTION_EVENTS: Mapping[str, type[EventModel]] = {
    "offer_attribution": OfferAttributionEvent,
    "notification_attribution": NotificationAttributionEvent,
}
