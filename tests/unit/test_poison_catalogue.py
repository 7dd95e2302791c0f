"""Every poison kind of ``tests/poison_catalogue.py`` through the bridge's own record path, without Kafka.

The path is the one ``Bridge._ingest`` runs: ``map_record`` (decode, validate, map), and for a refused record
the failure headers its DLQ record carries. A kind passes only when that path raises the bridge's own
``RecordError`` with the catalogued reason: any other exception would fail the test (and, in the pump, the
records around it).
"""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime

import pytest

from bridge.errors import RecordError
from bridge.events.common import EventKind
from bridge.events.outcomes import FailureHeaders, ReasonClass, build_failure_headers, failure_headers_for
from bridge.mapping import MappingContext, map_record
from bridge.mapping.decode import __doc__ as decode_doc
from bridge.records import SourceRecord
from bridge.routes import MappedItem
from tests.poison_catalogue import MAX_VALUE_BYTES, POISON, TOLERATED, PoisonKind, ToleratedKind, neighbour

TOPICS = {
    EventKind.CARD_TRANSACTION: "kard.card-transactions",
    EventKind.ELIGIBILITY: "kard.eligibility",
    EventKind.ATTRIBUTION: "kard.attributions",
}
# What bridge.app.mapping_context builds from the default settings, with the catalogue's value limit.
CTX = MappingContext(
    kind_by_topic={topic: kind for kind, topic in TOPICS.items()},
    organization_id="org-demo",
    attribution_mode="per_user",
    max_value_bytes=MAX_VALUE_BYTES,
)
NOW = datetime(2025, 6, 1, tzinfo=UTC)


def _record(kind: PoisonKind | ToleratedKind, offset: int = 41) -> SourceRecord:
    return SourceRecord(TOPICS[kind.topic], 2, offset, kind.key, kind.value, kind.headers, 1_700_000_000_000)  # type: ignore[arg-type]


def _decode_reasons() -> set[str]:
    """The refusal reasons ``bridge.mapping.decode`` documents (its docstring's table)."""
    assert decode_doc
    table = decode_doc.split("=====\n")[1]  # the rows between the table's two rulers
    reasons = set(re.findall(r"^``([a-z_]+)``", table, re.MULTILINE))
    assert len(reasons) >= 10, "the table of decode.py's docstring moved"
    return reasons


def test_the_catalogue_has_at_least_25_distinct_kinds() -> None:
    """Issue 5 asks for 25; names are unique across both lists, and tolerated kinds do not count."""
    names = [kind.name for kind in POISON]
    assert len(set(names)) == len(names) >= 25
    tolerated = [kind.name for kind in TOLERATED]
    assert len(set(tolerated)) == len(tolerated)
    assert not set(names) & set(tolerated)
    assert len({(kind.value, kind.headers) for kind in POISON}) == len(POISON), "two kinds are the same record"


def test_the_catalogue_covers_every_refusal_the_issue_names() -> None:
    """Every decode refusal reason, every topic kind, and each reason class of the pump has a kind."""
    reasons = Counter(kind.reason for kind in POISON)
    assert _decode_reasons() <= set(reasons), _decode_reasons() - set(reasons)
    wanted = {
        "missing_field",
        "wrong_type",
        "unknown_schema_version",
        "unknown_event_type",
        "unknown_field",
        "naive_datetime",
        "invalid_datetime",
        "invalid_amount",
        "invalid_enum",
        "invalid_field",
        "field_not_allowed",
        "unsafe_path_id",
    }
    assert wanted <= set(reasons), wanted - set(reasons)
    assert {kind.topic for kind in POISON} == set(EventKind)
    assert {kind.reason_class for kind in POISON} == {"decode", "schema", "mapping"}


@pytest.mark.parametrize("topic", list(EventKind))
def test_neighbours_are_valid_and_distinct(topic: EventKind) -> None:
    """The valid events that surround each poison record in the end-to-end test map to distinct items."""
    items = [map_record(SourceRecord(TOPICS[topic], 0, n, b"k", neighbour(topic, n), (), 0), CTX) for n in range(3)]
    assert len({item.encoded for item in items}) == 3


@pytest.mark.parametrize("kind", POISON, ids=[kind.name for kind in POISON])
def test_poison_kind_becomes_its_failure(kind: PoisonKind) -> None:
    """The record path raises the bridge's RecordError with the catalogued reason; its failure headers build."""
    record = _record(kind)
    with pytest.raises(RecordError) as caught:
        map_record(record, CTX)
    error = caught.value
    assert (error.reason_class, error.reason, error.pointer) == (kind.reason_class, kind.reason, kind.pointer)
    if kind.message is not None:
        assert kind.message in error.message
    assert "4111111111111111" not in f"{error.message} {error.pointer}", "card data leaked into the failure"

    failure = failure_headers_for(
        record, error, attempts=0, first_failure_at=NOW, last_failure_at=NOW, bridge_version="test"
    )
    assert (failure.reason_class, failure.reason, failure.pointer) == (
        ReasonClass(kind.reason_class),
        kind.reason,
        kind.pointer,
    )
    assert (failure.source_topic, failure.source_partition, failure.source_offset) == (record.topic, 2, 41)
    headers = build_failure_headers(record, failure)
    assert headers[: len(record.headers)] == record.headers  # the input's own headers first, byte for byte
    assert FailureHeaders.from_headers(headers[len(record.headers) :]) == failure


@pytest.mark.parametrize("kind", TOLERATED, ids=[kind.name for kind in TOLERATED])
def test_tolerated_kind_is_mapped(kind: ToleratedKind) -> None:
    """Valid per the contract, however odd it looks: the record path yields an item, never an error."""
    item = map_record(_record(kind), CTX)
    assert isinstance(item, MappedItem)
    assert item.event_id.startswith("tolerated-")
