"""Eligibility events → Kard ``segmentUser`` items for ``POST internal/eligibility-broker/ingest``.

Pure function over validated values. The item has no ``id`` (CONTRACT.md §6.6), so the
``MappedItem.item_id`` is a digest of the item (see :func:`bridge.mapping.context.build_item`).
``issuerId`` is the organization id: the event's, else the configured default. It is not part of
the path here, but it is checked like one anyway: an org id with ``/`` in it is wrong everywhere.
The route still carries the organization, so that one request never mixes issuers.
"""

from __future__ import annotations

from typing import Any

from bridge.events.common import EventKind, format_utc
from bridge.events.validation import TOPIC_VALIDATORS, make_plan
from bridge.mapping.context import MappingContext, build_item, resolve_organization, route_for
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem

__all__ = ["map_eligibility"]

_VALIDATOR = TOPIC_VALIDATORS[EventKind.ELIGIBILITY]
_PLAN = make_plan(
    (
        ("user_id", "userId", None),
        ("segment_id", "segmentId", None),
        ("status", "status", None),
        ("event_time", "eventTime", format_utc),
    )
)


def map_eligibility(event: dict[str, Any], record: SourceRecord, ctx: MappingContext) -> MappedItem:
    """Validate one eligibility event and map it to its ``segmentUser`` item.

    Raises:
        SchemaError: the event does not match its schema.
        MappingError: ``missing_organization_id`` or ``unsafe_path_id``.
    """
    _event_type, validator = _VALIDATOR.model_for(event)
    attributes = validator.project(event, _PLAN)
    org = resolve_organization(event, ctx)
    attributes["issuerId"] = org
    item = {"type": "segmentUser", "attributes": attributes}
    route = route_for(Endpoint.ELIGIBILITY, org)
    return build_item(route=route, item=item, item_id=None, values=event, record=record, ctx=ctx)
