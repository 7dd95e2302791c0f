"""Small builders shared by the mapping unit tests (records, contexts, a minimal event per type)."""

from __future__ import annotations

from typing import Any

import orjson

from bridge.errors import RecordError
from bridge.events.common import EventKind
from bridge.mapping import MappingContext, map_record
from bridge.records import SourceRecord
from bridge.routes import MappedItem

__all__ = ["TOPIC", "context", "failure", "map_event", "minimal", "record"]

TOPIC = {
    EventKind.CARD_TRANSACTION: "kard.card-transactions",
    EventKind.ELIGIBILITY: "kard.eligibility",
    EventKind.ATTRIBUTION: "kard.attributions",
}
_KIND_BY_EVENT = {
    "transaction": EventKind.CARD_TRANSACTION,
    "matched_transaction": EventKind.CARD_TRANSACTION,
    "fraud_marker": EventKind.CARD_TRANSACTION,
    "segment_user": EventKind.ELIGIBILITY,
    "offer_attribution": EventKind.ATTRIBUTION,
    "notification_attribution": EventKind.ATTRIBUTION,
}


def context(**overrides: Any) -> MappingContext:
    """A context for the default topics with default org ``org-demo``."""
    values: dict[str, Any] = {"kind_by_topic": {t: k for k, t in TOPIC.items()}, "organization_id": "org-demo"}
    values.update(overrides)
    return MappingContext(**values)


def record(event: Any, *, topic: str | None = None, key: bytes | None = b"key", partition: int = 0) -> SourceRecord:
    """A record carrying ``event`` (dicts are JSON-encoded, bytes passed through)."""
    value = event if isinstance(event, bytes) or event is None else orjson.dumps(event)
    if topic is None:
        topic = (
            TOPIC[_KIND_BY_EVENT[event["event_type"]]] if isinstance(event, dict) else TOPIC[EventKind.CARD_TRANSACTION]
        )
    return SourceRecord(topic, partition, 7, key, value, (), 0)


def map_event(event: Any, ctx: MappingContext | None = None, **record_kwargs: Any) -> MappedItem:
    """Map one event with the default context."""
    return map_record(record(event, **record_kwargs), ctx or context())


def failure(event: Any, ctx: MappingContext | None = None, **record_kwargs: Any) -> tuple[str, str, str | None]:
    """(reason_class, reason, pointer) of the RecordError mapping ``event`` raises."""
    try:
        map_event(event, ctx, **record_kwargs)
    except RecordError as exc:
        return exc.reason_class, exc.reason, exc.pointer
    raise AssertionError("the event mapped")


def minimal(event_type: str, /, **fields: Any) -> dict[str, Any]:
    """The smallest valid event of a type, with ``fields`` overriding or adding (``None`` removes)."""
    base: dict[str, Any] = {"schema_version": 1, "event_type": event_type, "event_id": "evt-1", "user_id": "user-1"}
    templates: dict[str, dict[str, Any]] = {
        "transaction": {
            "transaction_id": "txn-1",
            "status": "APPROVED",
            "amount_cents": 1000,
            "currency": "USD",
            "description": "SHOP",
            "card_bin": "411111",
            "card_last_four": "1111",
            "direction": "DEBIT",
            "authorization_date": "2025-01-02T03:04:05Z",
        },
        "matched_transaction": {
            "transaction_id": "txn-1",
            "amount_cents": 1000,
            "description": "SHOP",
            "authorization_date": "2025-01-02T03:04:05Z",
            "payment_type": "CARD",
            "direction": "DEBIT",
        },
        "fraud_marker": {"transaction_id": "txn-1"},
        "segment_user": {"segment_id": "seg-1", "status": "ACTIVE", "event_time": "2025-01-02T03:04:05Z"},
        "offer_attribution": {
            "entity_id": "offer-1",
            "event_code": "VIEW",
            "medium": "EMAIL",
            "event_date": "2025-01-02T03:04:05Z",
        },
        "notification_attribution": {
            "entity_id": "note-1",
            "event_code": "IMPRESSION",
            "event_date": "2025-01-02T03:04:05Z",
        },
    }
    base.update(templates[event_type])
    for name, value in fields.items():
        if value is None:
            base.pop(name, None)
        else:
            base[name] = value
    return base
