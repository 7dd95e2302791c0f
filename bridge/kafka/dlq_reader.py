"""The DLQ side of a replay run: read a failures topic up to a fixed end, commit to the replay group.

Why not :class:`bridge.kafka.BridgeConsumer`: a replay needs the end offsets *seen at start* (so a
run terminates even while the bridge keeps dead-lettering) and a position per partition, which that
façade does not expose. This module is the replay's only aiokafka user and returns
``bridge.records`` types; it belongs in ``bridge/kafka/`` by the import rule (STYLE, "only
``kafka/`` imports aiokafka") and should move there as ``bridge/kafka/dlq_reader.py`` unchanged.

Design: the consumer is *manually assigned* every partition of the DLQ topic and uses the replay
group only to store offsets (no group membership, no rebalances: a run reads all partitions, start
to end). Consequently two runs with the same group at the same time would both replay the same
records; run one replay per group at a time. A new group starts at the earliest offset whatever
``KAFKA_AUTO_OFFSET_RESET`` says. Topics are looked up with a full topic listing, never by a
metadata request that could auto-create a mistyped topic name.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, NamedTuple

from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as _KTP
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.structs import OffsetAndMetadata

from bridge.errors import ConfigError, OutputError
from bridge.records import SourceRecord

__all__ = ["DlqReader", "PartitionSpan"]


class PartitionSpan(NamedTuple):
    """What a run reads from one DLQ partition: offsets ``start`` (the group's position) to ``end`` (exclusive)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


class DlqReader:
    """Reads one failures topic for a replay group; an async context manager (enter once).

    Call :meth:`open` first: it assigns the partitions and freezes the end offsets. :meth:`fetch`
    then returns only records below those ends, and :attr:`finished` tells when all were returned.
    """

    def __init__(
        self,
        topic: str,
        *,
        group_id: str,
        consumer_kwargs: Mapping[str, Any],
        common_kwargs: Mapping[str, Any],
        request_timeout: float = 30.0,
    ) -> None:
        kwargs = dict(consumer_kwargs)
        kwargs.pop("group_instance_id", None)  # no membership: static membership has no meaning here
        # read_committed: with exactly-once outputs an aborted transaction's failure records must not be replayed
        # (it costs nothing when the bridge writes without transactions).
        kwargs.update(auto_offset_reset="earliest", enable_auto_commit=False, isolation_level="read_committed")
        self.topic = topic
        self.group_id = group_id
        self._consumer = AIOKafkaConsumer(group_id=group_id, **kwargs)
        self._admin = AIOKafkaAdminClient(**common_kwargs, request_timeout_ms=int(request_timeout * 1000))
        self._spans: dict[int, PartitionSpan] = {}
        self._done: set[int] = set()
        self._known_topics: set[str] = set()
        self._state = "new"

    async def __aenter__(self) -> DlqReader:
        if self._state != "new":
            raise RuntimeError("DlqReader entered twice")
        self._state = "started"
        try:
            await self._admin.start()
            await self._consumer.start()
        except KafkaError as exc:
            await self.aclose()
            raise OutputError(f"cannot connect to Kafka: {type(exc).__name__}") from exc
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the consumer and the admin client (idempotent); offsets are committed by the caller first."""
        if self._state == "started":
            self._state = "closed"
            try:
                async with asyncio.timeout(30):  # aiokafka#773: stop() can hang
                    await self._consumer.stop()
            finally:
                await self._admin.close()

    async def open(self) -> dict[int, PartitionSpan]:
        """Assign every partition, read the group's positions and freeze the end offsets.

        Raises:
            ConfigError: the topic does not exist.
            OutputError: Kafka did not answer.
        """
        try:
            if not await self.topic_exists(self.topic):
                raise ConfigError(f"topic {self.topic!r} does not exist")
            described = await self._admin.describe_topics([self.topic])
            partitions = sorted(p["partition"] for p in described[0]["partitions"])
            tps = [_KTP(self.topic, p) for p in partitions]
            self._consumer.assign(tps)
            ends = await self._consumer.end_offsets(tps)
            for tp in tps:
                position: int = await self._consumer.position(tp)
                self._spans[tp.partition] = PartitionSpan(position, int(ends[tp]))
        except KafkaError as exc:
            raise OutputError(f"cannot read {self.topic!r}: {type(exc).__name__}") from exc
        for partition, span in self._spans.items():
            if span.start >= span.end:
                self._finish(partition)
        return dict(self._spans)

    @property
    def finished(self) -> bool:
        """Every partition has returned all its records below the end offsets seen at :meth:`open`."""
        return len(self._done) == len(self._spans)

    async def fetch(self, timeout: float, max_records: int) -> list[SourceRecord]:
        """The next records (below the frozen ends), in offset order per partition; may be empty."""
        try:
            batches = await self._consumer.getmany(timeout_ms=int(timeout * 1000), max_records=max_records)
        except KafkaError as exc:
            raise OutputError(f"cannot fetch from {self.topic!r}: {type(exc).__name__}") from exc
        out: list[SourceRecord] = []
        for tp in sorted(batches, key=lambda t: t.partition):
            end = self._spans[tp.partition].end
            out.extend(
                SourceRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp)
                for m in batches[tp]
                if m.offset < end
            )
        for partition, span in self._spans.items():
            if partition not in self._done:
                position: int = await self._consumer.position(_KTP(self.topic, partition))
                if position >= span.end:
                    self._finish(partition)
        return out

    async def commit(self, offsets: Mapping[int, int]) -> None:
        """Commit next-offsets per partition for the replay group.

        Raises:
            OutputError: the commit failed (the records after the last commit would be replayed again).
        """
        if not offsets:
            return
        todo = {_KTP(self.topic, p): OffsetAndMetadata(o, "") for p, o in offsets.items()}
        try:
            await self._consumer.commit(todo)
        except KafkaError as exc:
            raise OutputError(f"cannot commit the replay group's offsets: {type(exc).__name__}") from exc

    async def topic_exists(self, name: str) -> bool:
        """Whether ``name`` exists (listing all topics: a metadata request could auto-create it)."""
        if name not in self._known_topics:
            try:
                self._known_topics = set(await self._admin.list_topics())
            except KafkaError as exc:
                raise OutputError(f"cannot list topics: {type(exc).__name__}") from exc
        return name in self._known_topics

    def _finish(self, partition: int) -> None:
        self._done.add(partition)
        self._consumer.pause(_KTP(self.topic, partition))  # nothing to read there below the frozen end
