"""Properties of ``map_record``: total, deterministic, sendable, and silent about values (PITFALLS §7.2).

Totality is asserted explicitly by :func:`_outcome`: every call either returns a sendable ``MappedItem``
or raises one of the mapper's own error types (``DecodeError``, ``SchemaError``, ``MappingError``) with a
snake_case reason; any other exception fails the property with an ``AssertionError`` naming it.

Budgets are CI-sized; ``KARD_BRIDGE_HYPOTHESIS_LONG=1`` runs each property with 1,000,000 examples
(command in :mod:`tests.event_strategies`).
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import DecodeError, MappingError, RecordError, SchemaError
from bridge.events.common import EventKind
from bridge.mapping import MappingContext, map_record
from bridge.records import SourceRecord
from bridge.routes import MappedItem
from bridge.topics import load_catalogue
from tests.event_strategies import EXAMPLES, LONG_RUN_MARKS, events, json_values, mutated, render

pytestmark = LONG_RUN_MARKS

CATALOGUE = load_catalogue()
KINDS = st.sampled_from(list(EventKind))
MODES = st.sampled_from(["per_user", "bulk"])
PAN = "4111111111111111"
#: The mapper's own error types: the only exceptions ``map_record`` may raise.
OWN_ERRORS = (DecodeError, SchemaError, MappingError)
REASON = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
SETTINGS = settings(
    deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
)


def budget(ci_examples: int) -> settings:
    """The shared settings with a CI-sized example budget (1M under KARD_BRIDGE_HYPOTHESIS_LONG)."""
    return settings(SETTINGS, max_examples=EXAMPLES(ci_examples))


def _ctx(mode: Any = "per_user", hook: Any = None) -> MappingContext:
    """A context for the catalogue's topics with default org ``org-demo``."""
    return MappingContext(
        kind_by_topic=CATALOGUE.kind_by_topic(), organization_id="org-demo", attribution_mode=mode, hook=hook
    )


def _record(kind: EventKind, value: bytes | None) -> SourceRecord:
    """A record of the topic of ``kind`` carrying ``value``."""
    return SourceRecord(CATALOGUE.by_kind(kind).name, 3, 42, b"key", value, (("h", b"v"),), 1_700_000_000_000)


def _sendable(item: MappedItem) -> None:
    """``item`` is what httpx would send: its bytes are strict UTF-8 JSON equal to the item (PITFALLS H7)."""
    assert isinstance(item.item, dict)
    assert item.encoded == orjson.dumps(item.item)
    # httpx's encode_json: allow_nan=False, then .encode("utf-8") (raises on NaN or a lone surrogate).
    wire = json.dumps(item.item, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
    assert json.loads(wire) == json.loads(item.encoded.decode("utf-8")) == item.item


def _outcome(kind: EventKind, value: bytes | None, ctx: MappingContext) -> MappedItem | RecordError:
    """The sendable item, or the mapper's own error; anything else raised fails the property explicitly."""
    try:
        item = map_record(_record(kind, value), ctx)
    except OWN_ERRORS as exc:
        assert REASON.fullmatch(exc.reason), f"reason {exc.reason!r} is not a stable snake_case code"
        assert exc.reason_class in ("decode", "schema", "mapping")
        assert isinstance(exc.message, str) and exc.message
        return exc
    except Exception as exc:  # the property under test: nothing else may escape the mapper
        raise AssertionError(
            f"map_record raised {type(exc).__module__}.{type(exc).__qualname__}, not one of its own error types"
        ) from exc
    assert isinstance(item, MappedItem), f"map_record returned {type(item).__name__}"
    _sendable(item)
    return item


def test_outcome_fails_on_a_foreign_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    """The totality check itself can fail: a mapper that leaks a ValueError is reported, not ignored."""

    def leaky(record: SourceRecord, ctx: MappingContext) -> MappedItem:
        raise ValueError("boom")

    monkeypatch.setattr(f"{__name__}.map_record", leaky)
    with pytest.raises(AssertionError, match=r"builtins\.ValueError"):
        _outcome(EventKind.ELIGIBILITY, b"{}", _ctx())


@budget(1000)
@given(kind=KINDS, value=st.one_of(st.none(), st.binary(max_size=512)))
def test_arbitrary_bytes_give_an_item_or_a_record_error(kind: EventKind, value: bytes | None) -> None:
    """Any bytes at all (invalid UTF-8 included) map or raise a RecordError, nothing else."""
    _outcome(kind, value, _ctx())


@budget(1000)
@given(kind=KINDS, data=st.data())
def test_arbitrary_json_gives_an_item_or_a_record_error(kind: EventKind, data: st.DataObject) -> None:
    """Any JSON document, in any producer style, maps or raises a RecordError."""
    value = data.draw(st.one_of(json_values, st.dictionaries(st.text(max_size=10), json_values, max_size=8)))
    _outcome(kind, data.draw(render(value)), _ctx())


@budget(600)
@given(kind=KINDS, mode=MODES, data=st.data())
def test_valid_events_map_deterministically_to_sendable_items(kind: EventKind, mode: str, data: st.DataObject) -> None:
    """A valid event maps; mapping the same bytes again gives an equal item; the item survives httpx's JSON encoding."""
    event = data.draw(events(kind))
    raw = data.draw(render(event))
    ctx = _ctx(mode)
    item = map_record(_record(kind, raw), ctx)
    assert map_record(_record(kind, raw), ctx) == item
    _sendable(item)
    assert item.event_id == event["event_id"]
    assert item.ordering_key == event["user_id"]
    assert item.route.organization_id == (event.get("organization_id") or "org-demo")


@budget(300)
@given(kind=KINDS, data=st.data())
def test_valid_event_maps_the_same_in_every_producer_style(kind: EventKind, data: st.DataObject) -> None:
    """Compact, spaced, indented and ASCII-escaped renderings of one event give equal items."""
    event = data.draw(events(kind))
    first, *others = [
        map_record(_record(kind, raw), _ctx())
        for raw in (
            orjson.dumps(event),
            json.dumps(event).encode(),
            json.dumps(event, indent=2, ensure_ascii=False).encode(),
        )
    ]
    assert all(other == first for other in others)


@budget(1000)
@given(kind=KINDS, data=st.data())
def test_mutated_events_give_an_item_or_a_record_error(kind: EventKind, data: st.DataObject) -> None:
    """Valid events with dropped, retyped, added, nested or surrogate-corrupted fields map or raise a RecordError."""
    event = data.draw(mutated(data.draw(events(kind))))
    _outcome(kind, data.draw(render(event)), _ctx(data.draw(MODES)))


@budget(300)
@given(kind=KINDS, data=st.data())
def test_errors_never_quote_values(kind: EventKind, data: st.DataObject) -> None:
    """A card number planted as any field's value, or as a key, never appears in the error message or pointer."""
    event = data.draw(events(kind))
    where = data.draw(st.sampled_from([*sorted(event), "as_key", "nested"]))
    if where == "as_key":
        event[PAN] = 1
    elif where == "nested":
        event["merchant"] = {"name": PAN, "addr_state": PAN}
    else:
        event[where] = data.draw(st.sampled_from([PAN, PAN + "\ud800", int(PAN), [PAN], {"x": PAN}]))
    outcome = _outcome(kind, data.draw(render(event)), _ctx())
    if isinstance(outcome, RecordError):
        assert PAN not in str(outcome)
        assert PAN not in (outcome.pointer or "")


@budget(300)
@given(kind=KINDS, result=json_values, raises=st.booleans())
def test_any_hook_behaviour_gives_an_item_or_a_record_error(kind: EventKind, result: Any, raises: bool) -> None:
    """Whatever a mapping hook returns or raises, map_record still only raises RecordError subclasses."""

    def hook(event: dict[str, Any], record: SourceRecord) -> Any:
        """Raise with a card number in the text, or return the drawn result."""
        if raises:
            raise ValueError(PAN)
        return result

    outcome = _outcome(kind, b'{"a": 1}', _ctx(hook=hook))
    if raises:
        assert isinstance(outcome, RecordError)
        assert PAN not in str(outcome)


def test_encoded_items_are_right_sized() -> None:
    """A mapped item's bytes do not keep orjson's >= 4 KiB output allocation (they live while the record is
    buffered): 1,000 encodings of a ~100-byte item hold well under 1 KiB each."""
    import tracemalloc

    from bridge.mapping.context import _encode

    item = {"type": "transaction", "id": "evt-1", "attributes": {"amount": 1250, "currency": "USD"}}
    assert _encode(item) == orjson.dumps(item)
    tracemalloc.start()
    try:
        kept = [_encode(item) for _ in range(1000)]
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(kept) == 1000
    assert held / 1000 < 1024, f"{held / 1000:.0f} bytes held per encoded item"
