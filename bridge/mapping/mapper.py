"""``map_record``: one consumed record → one Kard item, or a ``RecordError`` saying precisely why not.

The steps, each owned by its module: decode the bytes (:mod:`bridge.mapping.decode`), let the
optional issuer hook adapt the event (:mod:`bridge.mapping.context`), then validate and map it by
the topic's event kind (``transactions``, ``eligibility``, ``attributions``). The function is pure
and deterministic: the same record bytes always give an equal ``MappedItem``, which is what makes
retries and replays send the same ids. It never raises anything but a ``RecordError`` subclass, so
one poison record can never fail its neighbours (``tests/unit/test_mapping_properties.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.errors import MappingError, RecordError
from bridge.events.common import EventKind
from bridge.mapping.attributions import map_attribution
from bridge.mapping.context import MappingContext, MappingHook
from bridge.mapping.decode import decode_value
from bridge.mapping.eligibility import map_eligibility
from bridge.mapping.transactions import map_card_transaction
from bridge.records import SourceRecord
from bridge.routes import MappedItem

__all__ = ["map_record"]

_MAPPERS: dict[EventKind, Callable[[dict[str, Any], SourceRecord, MappingContext], MappedItem]] = {
    EventKind.CARD_TRANSACTION: map_card_transaction,
    EventKind.ELIGIBILITY: map_eligibility,
    EventKind.ATTRIBUTION: map_attribution,
}


def _run_hook(hook: MappingHook, event: dict[str, Any], record: SourceRecord) -> dict[str, Any]:
    """Call the issuer hook; only RecordError subclasses leave this function."""
    try:
        result = hook(event, record)
    except RecordError:
        raise
    except Exception as exc:  # noqa: BLE001 - the hook is foreign code; this is its translation edge
        # ``from None``: the hook's exception text may quote the event (card data); only its type
        # name travels on, into the failure record.
        raise MappingError("hook_failed", f"the mapping hook raised {type(exc).__name__}") from None
    if not isinstance(result, dict):
        raise MappingError("hook_invalid_result", "the mapping hook must return a dict")
    return result if type(result) is dict else dict(result)


def map_record(record: SourceRecord, ctx: MappingContext) -> MappedItem:
    """Map one record of an input topic to the Kard item it stands for.

    Args:
        record: the consumed record; its value is decoded, its topic selects the event kind.
        ctx: topic kinds, default organization, attribution mode, limits and the optional hook.

    Returns:
        The item with its route, deterministic ``item_id``, ``ordering_key`` and encoded bytes.

    Raises:
        DecodeError: the value is not a JSON object the bridge accepts (``tombstone``,
            ``malformed_json``, ``duplicate_key``, ``too_large``...).
        SchemaError: the object is not a valid event of the topic (``missing_field``,
            ``invalid_amount``, ``naive_datetime``, ``unknown_event_type``...), with a pointer.
        MappingError: a valid event cannot become an item (``unsafe_path_id``,
            ``missing_organization_id``, ``unknown_topic``, ``hook_failed``...).
    """
    kind = ctx.kind_by_topic.get(record.topic)
    if kind is None:
        raise MappingError("unknown_topic", "the record's topic has no event kind in the topic catalogue")
    event = decode_value(record.value, max_bytes=ctx.max_value_bytes, max_depth=ctx.max_depth)
    if ctx.hook is not None:
        event = _run_hook(ctx.hook, event, record)
    return _MAPPERS[kind](event, record, ctx)
