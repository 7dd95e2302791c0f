"""The example records in ``topics/examples/``: every valid line maps, every invalid line fails as recorded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from bridge.errors import RecordError
from bridge.mapping import MappingContext, map_record
from bridge.records import SourceRecord
from bridge.topics import load_catalogue

EXAMPLES = Path(__file__).resolve().parents[2] / "topics" / "examples"
CATALOGUE = load_catalogue()
TOPICS = CATALOGUE.input_names()


def _context(mode: Any = "per_user") -> MappingContext:
    """A context for the catalogue's topics with default org ``org-demo``."""
    return MappingContext(kind_by_topic=CATALOGUE.kind_by_topic(), organization_id="org-demo", attribution_mode=mode)


def _lines(path: Path) -> list[bytes]:
    """The non-empty lines of a JSON Lines file, as bytes."""
    return [line for line in path.read_bytes().split(b"\n") if line]


def _record(topic: str, value: bytes, offset: int = 0) -> SourceRecord:
    """A record of ``topic`` carrying ``value``."""
    return SourceRecord(topic=topic, partition=0, offset=offset, key=b"k", value=value, headers=(), timestamp_ms=0)


def _reasons(topic: str) -> list[tuple[str, str, str | None]]:
    """The expected (class, reason, pointer) per line of a topic's invalid examples."""
    rows = []
    for line in (EXAMPLES / f"{topic}.invalid.reasons.txt").read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        reason_class, reason, pointer = line.split(" ")
        rows.append((reason_class, reason, None if pointer == "-" else pointer))
    return rows


def test_every_input_topic_has_example_files() -> None:
    """Each catalogue input topic has valid, invalid and reasons example files."""
    for topic in TOPICS:
        for suffix in ("valid.jsonl", "invalid.jsonl", "invalid.reasons.txt"):
            assert (EXAMPLES / f"{topic}.{suffix}").is_file(), f"{topic}.{suffix}"


@pytest.mark.parametrize("mode", ["per_user", "bulk"])
@pytest.mark.parametrize("topic", TOPICS)
def test_valid_examples_map(topic: str, mode: str) -> None:
    """Every valid example line maps to an item whose encoding is its canonical JSON, in both attribution modes."""
    ctx = _context(mode)
    lines = _lines(EXAMPLES / f"{topic}.valid.jsonl")
    assert len(lines) >= 5
    for offset, line in enumerate(lines):
        item = map_record(_record(topic, line, offset), ctx)
        assert item.encoded == orjson.dumps(item.item)
        assert item.route.path
        assert item.item_id


@pytest.mark.parametrize("topic", TOPICS)
def test_valid_examples_cover_every_event_type(topic: str) -> None:
    """The valid examples of a topic use every event type its schema defines."""
    from bridge.events import EVENTS_BY_KIND

    kind = CATALOGUE.input(topic).kind
    seen = {orjson.loads(line)["event_type"] for line in _lines(EXAMPLES / f"{topic}.valid.jsonl")}
    assert seen == set(EVENTS_BY_KIND[kind])


@pytest.mark.parametrize("topic", TOPICS)
def test_invalid_examples_fail_with_recorded_reason(topic: str) -> None:
    """Every invalid example line raises a RecordError with the class, reason and pointer recorded beside it."""
    ctx = _context()
    lines = _lines(EXAMPLES / f"{topic}.invalid.jsonl")
    expected = _reasons(topic)
    assert len(lines) == len(expected)
    assert len(lines) >= 10
    for offset, (line, (reason_class, reason, pointer)) in enumerate(zip(lines, expected, strict=True)):
        with pytest.raises(RecordError) as caught:
            map_record(_record(topic, line, offset), ctx)
        got = (caught.value.reason_class, caught.value.reason, caught.value.pointer)
        assert got == (reason_class, reason, pointer), f"line {offset + 1}"


@pytest.mark.parametrize("topic", TOPICS)
def test_invalid_examples_are_each_wrong_in_a_different_way(topic: str) -> None:
    """No two invalid example lines of a topic are the same bytes, and they cover at least 8 distinct reasons."""
    lines = _lines(EXAMPLES / f"{topic}.invalid.jsonl")
    assert len(set(lines)) == len(lines)
    assert len({reason for _, reason, _ in _reasons(topic)}) >= 8
