"""Core value types that cross module boundaries: where a record came from, and what it carried.

These are plain frozen dataclasses so that the sans-I/O core (``pipeline/``), the mapping and the
outputs can all speak about records without importing aiokafka.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Header", "RecordRef", "SourceRecord", "TopicPartition"]

Header = tuple[str, bytes]


@dataclass(frozen=True, slots=True)
class TopicPartition:
    """A Kafka topic partition (our own type, so that only ``bridge/kafka`` imports aiokafka)."""

    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}[{self.partition}]"


@dataclass(frozen=True, slots=True)
class RecordRef:
    """Coordinates of one input record: enough to find it again and to track its offset."""

    topic: str
    partition: int
    offset: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)


@dataclass(frozen=True, slots=True)
class SourceRecord:
    """One consumed Kafka record, bytes untouched (the failure record must keep them byte for byte)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[Header, ...]
    timestamp_ms: int

    @property
    def ref(self) -> RecordRef:
        return RecordRef(self.topic, self.partition, self.offset)

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)
