"""The mapping context: its validation, the record routing of map_record, and the issuer mapping hook."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.errors import ConfigError, MappingError, SchemaError
from bridge.mapping import MappingContext
from bridge.records import SourceRecord
from tests.unit.mapping_helpers import context, failure, map_event, minimal


def dollars_hook(event: dict[str, Any], record: SourceRecord) -> dict[str, Any]:
    """An issuer adapter: their events say ``amount_usd`` and have no envelope."""
    if "explode" in event:
        raise SchemaError("issuer_rule", "the issuer's own rule refused it", pointer="/explode")
    amount = event.pop("amount_usd")
    return minimal("transaction", event_id=f"{record.topic}-{record.offset}", amount_cents=round(amount * 100))


def failing_hook(event: dict[str, Any], record: SourceRecord) -> dict[str, Any]:
    """A broken adapter whose error text quotes the event."""
    raise KeyError(f"card 4111111111111111 in {event}")


not_callable = 42


def test_hook_adapts_foreign_events() -> None:
    """A hook named in config is loaded and turns the issuer's shape into ours before validation."""
    hook = MappingContext.load_hook("tests.unit.test_mapping_hook:dollars_hook")
    item = map_event({"amount_usd": 12.34}, context(hook=hook), topic="kard.card-transactions")
    assert item.item["attributes"]["amount"] == 1234
    assert item.item_id == "kard.card-transactions-7"


def test_hook_errors_are_translated_without_their_text() -> None:
    """An exception from the hook becomes MappingError hook_failed naming only the exception type."""
    try:
        map_event({"a": 1}, context(hook=failing_hook), topic="kard.card-transactions")
    except MappingError as exc:
        assert exc.reason == "hook_failed"
        assert "KeyError" in exc.message
        assert "4111" not in str(exc)
        assert exc.__cause__ is None
        assert exc.__suppress_context__
    else:
        raise AssertionError("the hook's failure was not reported")


def test_hook_record_errors_pass_through() -> None:
    """A hook may refuse a record itself with a SchemaError and its own reason."""
    hook = MappingContext.load_hook("tests.unit.test_mapping_hook:dollars_hook")
    assert failure({"explode": 1}, context(hook=hook), topic="kard.card-transactions") == (
        "schema",
        "issuer_rule",
        "/explode",
    )


@pytest.mark.parametrize("result", [None, [], "event", 1])
def test_hook_must_return_a_dict(result: Any) -> None:
    """A hook returning anything but a dict fails the record with hook_invalid_result."""
    ctx = context(hook=lambda event, record: result)
    assert failure({"a": 1}, ctx, topic="kard.card-transactions") == ("mapping", "hook_invalid_result", None)


def test_hook_output_is_validated_like_a_native_event() -> None:
    """What a hook returns passes the same schema checks as an event read from Kafka."""
    ctx = context(hook=lambda event, record: {**minimal("transaction"), "amount_cents": "10"})
    assert failure({"a": 1}, ctx, topic="kard.card-transactions") == ("schema", "invalid_amount", "/amount_cents")


def test_hook_output_with_lone_surrogates_is_refused() -> None:
    """A hook that smuggles a lone surrogate into a text field yields a mapping error, not a crash."""
    ctx = context(hook=lambda event, record: minimal("transaction", description="bad \ud800"))
    assert failure({"a": 1}, ctx, topic="kard.card-transactions") == ("mapping", "invalid_unicode", None)


@pytest.mark.parametrize(
    "spec",
    [
        "no_colon",
        ":function",
        "module:",
        "tests.unit.does_not_exist:hook",
        "tests.unit.test_mapping_hook:missing",
        "tests.unit.test_mapping_hook:not_callable",
    ],
)
def test_bad_hook_specs_are_config_errors(spec: str) -> None:
    """A malformed, unimportable, missing or non-callable hook is refused at start."""
    with pytest.raises(ConfigError):
        MappingContext.load_hook(spec)


@pytest.mark.parametrize(
    "overrides",
    [
        {"organization_id": "org/1"},
        {"organization_id": ""},
        {"max_value_bytes": 0},
        {"max_depth": 0},
        {"max_depth": 1000},
        {"attribution_mode": "batch"},
        {"ordering": "random"},
        {"kind_by_topic": {"t": "card_transaction"}},
    ],
)
def test_invalid_contexts_are_config_errors(overrides: dict[str, Any]) -> None:
    """A context with an unsafe default org, impossible limits or unknown modes is refused when built."""
    with pytest.raises(ConfigError):
        context(**overrides)


def test_records_of_unknown_topics_fail() -> None:
    """A record from a topic the context does not know is a mapping error, not a crash."""
    assert failure(minimal("transaction"), topic="other.topic") == ("mapping", "unknown_topic", None)


def test_oversize_values_are_refused_before_parsing() -> None:
    """A value over max_value_bytes is refused as too_large."""
    assert failure(b"{" + b" " * 100 + b"}", context(max_value_bytes=100)) == ("decode", "too_large", None)
