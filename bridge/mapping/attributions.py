"""Attribution events → Kard ``offerAttribution`` / ``notificationAttribution`` items.

Pure function over validated values. Two destinations, chosen by ``MappingContext.attribution_mode``:

* ``per_user`` (default): ``POST v2/issuers/{org}/users/{user}/attributions`` (CONTRACT.md §6.4). The
  user is in the path, so the item carries only ``entityId``, ``eventCode``, ``medium`` and
  ``eventDate``, and the user id must be path-safe (``unsafe_path_id`` otherwise).
* ``bulk``: ``POST v2/internal/attributions`` (§6.5). Each item names ``issuerId`` and ``userId``
  itself; the route still carries the organization so that one request never mixes issuers.

Items have no client-supplied id; ``MappedItem.item_id`` is a digest of route path and item.
"""

from __future__ import annotations

from typing import Any

from bridge.events.common import EventKind, format_utc
from bridge.events.validation import TOPIC_VALIDATORS, make_plan
from bridge.mapping.context import (
    MappingContext,
    build_item,
    require_path_safe,
    resolve_organization,
    route_for,
)
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem

__all__ = ["map_attribution"]

_VALIDATOR = TOPIC_VALIDATORS[EventKind.ATTRIBUTION]
_WIRE_TYPE = {"offer_attribution": "offerAttribution", "notification_attribution": "notificationAttribution"}
_COMMON = (
    ("entity_id", "entityId", None),
    ("event_code", "eventCode", None),
    ("medium", "medium", None),
    ("event_date", "eventDate", format_utc),
)
_PER_USER_PLAN = make_plan(_COMMON)
_BULK_PLAN = make_plan((("user_id", "userId", None), *_COMMON))


def map_attribution(event: dict[str, Any], record: SourceRecord, ctx: MappingContext) -> MappedItem:
    """Validate one attribution event and map it to its item and route.

    Raises:
        SchemaError: the event does not match its schema.
        MappingError: ``missing_organization_id`` or ``unsafe_path_id``.
    """
    event_type, validator = _VALIDATOR.model_for(event)
    bulk = ctx.attribution_mode == "bulk"
    attributes = validator.project(event, _BULK_PLAN if bulk else _PER_USER_PLAN)
    org = resolve_organization(event, ctx)
    if bulk:
        attributes = {"issuerId": org, **attributes}
        route = route_for(Endpoint.BULK_ATTRIBUTIONS, org)
    else:
        route = route_for(Endpoint.USER_ATTRIBUTIONS, org, require_path_safe(event["user_id"], "/user_id"))
    item = {"type": _WIRE_TYPE[event_type], "attributes": attributes}
    return build_item(route=route, item=item, item_id=None, values=event, record=record, ctx=ctx)
