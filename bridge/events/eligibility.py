"""Events of the eligibility topic (default ``kard.eligibility``), schema version 1.

One event type, ``segment_user``: a user joined (``ACTIVE``) or left (``INACTIVE``) a Kard segment.
It becomes a ``segmentUser`` item on ``POST internal/eligibility-broker/ingest`` (no ``v2/``). The
item's ``issuerId`` is the organization id (from the event or the bridge's default).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, ClassVar, Literal, get_args

from pydantic import Field

from bridge.events.common import EventKind, EventModel, Identifier, Timestamp, enum_leaf

__all__ = ["ELIGIBILITY_EVENTS", "EligibilityEvent", "SegmentUserEvent"]

SegmentStatusValue = Literal["ACTIVE", "INACTIVE"]
SegmentStatus = Annotated[SegmentStatusValue, enum_leaf(get_args(SegmentStatusValue))]


class SegmentUserEvent(EventModel):
    """A user's status in a segment changed: Kard ``segmentUser`` eligibility item."""

    kind: ClassVar[EventKind] = EventKind.ELIGIBILITY

    event_type: Literal["segment_user"]
    user_id: Identifier = Field(description="The user's id on the issuer's system.")
    segment_id: Identifier = Field(description="The segment's id on Kard's system.")
    status: SegmentStatus = Field(description="The user's status in the segment.")
    event_time: Timestamp = Field(description="When the change happened.")


#: The topic's event union (one member today; a second event type would make it a discriminated union).
EligibilityEvent = SegmentUserEvent

#: ``event_type`` → model, for the eligibility topic.
ELIGIBILITY_EVENTS: Mapping[str, type[EventModel]] = {"segment_user": SegmentUserEvent}
