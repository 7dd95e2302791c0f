"""``OutputProducer.send_many`` against a real broker: the same records, partitions and acks as a loop of ``send``.

* every record lands, byte for byte (key, value, headers), keyed records on the partition ``send`` chose for
  the same key, in the order of the call within each partition; the futures resolve with each record's
  metadata (topic, partition, offset) — through aiokafka's accumulator and through the loop-of-sends fallback;
* a record that cannot be enqueued (too large for ``max_request_size``, neither key nor value, a header of
  the wrong type) fails only its own future with ``OutputError``; the others land;
* an empty call returns ``[]``; a topic whose metadata never comes fails its records once ``send_timeout``
  is over instead of raising;
* exactly-once mode: records of a committed transaction are visible to ``read_committed`` readers, those of an
  aborted one are not, and outside a transaction every future fails with ``IllegalOperation`` as the cause
  (which ``fail`` classifies as fatal through ``wait_acked``'s wrapping).
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaConsumer, ConsumerRecord
from aiokafka import TopicPartition as KafkaTP
from aiokafka.errors import IllegalOperation, MessageSizeTooLargeError

from bridge.errors import OutputError
from bridge.kafka import OutputProducer
from bridge.kafka.producer import Message, TransactionFatal
from tests.fixtures.kafka import TopicFactory

pytestmark = pytest.mark.kafka

Isolation = Literal["read_committed", "read_uncommitted"]


def producer(bootstrap: str, **kwargs: Any) -> OutputProducer:
    return OutputProducer({"bootstrap_servers": bootstrap}, client_id=f"send-many-{uuid.uuid4().hex[:6]}", **kwargs)


async def read_all(
    bootstrap: str, topics: Mapping[str, int], isolation: Isolation = "read_uncommitted", timeout: float = 60.0
) -> dict[tuple[str, int], list[ConsumerRecord[bytes, bytes]]]:
    """Every record of ``topics`` (name: partition count) at ``isolation``, per partition in offset order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation)
    await consumer.start()
    try:
        tps = [KafkaTP(t, p) for t, count in topics.items() for p in range(count)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)  # read_committed: the last stable offset
        out: dict[tuple[str, int], list[ConsumerRecord[bytes, bytes]]] = {(tp.topic, tp.partition): [] for tp in tps}
        async with asyncio.timeout(timeout):
            while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
                for tp, records in (await consumer.getmany(timeout_ms=500)).items():
                    out[(tp.topic, tp.partition)].extend(records)
        return out
    finally:
        await consumer.stop()


def make_messages(topics: Sequence[str], count: int, keys: Sequence[bytes], seed: int = 3) -> list[Message]:
    """Keyed records of 1 B-2 KB, some with headers, a few tombstones and a few without a key."""
    rng = random.Random(seed)
    messages: list[Message] = []
    for i in range(count):
        topic = topics[i % len(topics)]
        roll = rng.random()
        key: bytes | None = rng.choice(keys)
        value: bytes | None = f"{i:08d}|".encode() + rng.randbytes(rng.randrange(1, 2048))
        if roll < 0.03:
            key = None
        elif roll < 0.05:
            value = None  # a tombstone: key only
        headers: tuple[tuple[str, bytes], ...] = ()
        if rng.random() < 0.3:
            headers = (("seq", str(i).encode()), ("kard-bridge.reason", rng.randbytes(rng.randrange(0, 40))))
        messages.append((topic, value, key, list(headers) if i % 2 else headers))
    return messages


def landed(records: dict[tuple[str, int], list[ConsumerRecord[bytes, bytes]]]) -> dict[tuple[str, int, int], Any]:
    return {(r.topic, r.partition, r.offset): r for rs in records.values() for r in rs}


@pytest.mark.parametrize("path", ["accumulator", "fallback"])
async def test_send_many_lands_every_record_where_send_puts_it(
    kafka_bootstrap: str, topic_factory: TopicFactory, path: str
) -> None:
    topics = [topic_factory(partitions=6), topic_factory(partitions=3)]
    keys = [f"user-{n:06d}".encode() for n in range(150)] + [b"", bytes(range(256))]
    messages = make_messages(topics, 4000, keys)  # ~4 MB: several batches per partition
    async with producer(kafka_bootstrap) as out:
        if path == "fallback":
            out._add_message = None  # what happens when aiokafka's internals are not what send_many expects
        # The partition send() picks for each key, in a third topic with the same layouts.
        reference = {t: topic_factory(partitions=n) for t, n in zip(topics, (6, 3), strict=True)}
        chosen: dict[tuple[str, bytes], int] = {}
        for topic in topics:
            acks = [await out.send(reference[topic], b"probe", probe) for probe in keys]
            for probe, ack in zip(keys, acks, strict=True):
                chosen[(topic, probe)] = (await ack).partition
        sent_before = out.sent

        futures = await out.send_many(messages)

        assert len(futures) == len(messages)
        metas = await asyncio.gather(*futures)
        assert out.sent == sent_before + len(messages)
    records = landed(await read_all(kafka_bootstrap, dict(zip(topics, (6, 3), strict=True))))
    assert len(records) == len(messages)
    by_partition: defaultdict[tuple[str, int], list[int]] = defaultdict(list)
    for (topic, value, key, headers), meta in zip(messages, metas, strict=True):
        assert meta.topic == topic
        if key is not None:
            assert meta.partition == chosen[(topic, key)], "a keyed record left its key's partition"
        record = records[(meta.topic, meta.partition, meta.offset)]
        assert (record.key, record.value, list(record.headers)) == (key, value, list(headers))
        assert meta.timestamp is not None and meta.timestamp > 0
        by_partition[(meta.topic, meta.partition)].append(meta.offset)
    for offsets in by_partition.values():  # the call's order, within each partition
        assert offsets == sorted(offsets)
    assert len(by_partition) == 9  # every partition of both topics got records


async def test_send_many_fails_only_the_records_that_cannot_be_enqueued(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    topic = topic_factory(partitions=2)
    good = [(topic, f"ok-{i}".encode(), b"same-key", ()) for i in range(10)]
    too_large: Message = (topic, b"x" * 20_000, b"same-key", ())  # same partition as its neighbours
    nothing: Message = (topic, None, None, ())
    bad_header: Message = (topic, b"v", b"same-key", [("h", "not bytes")])  # type: ignore[list-item]
    messages = [*good[:3], too_large, *good[3:6], nothing, bad_header, *good[6:]]
    async with producer(kafka_bootstrap, max_request_size=10_000) as out:
        futures = await out.send_many(messages)
        results = await asyncio.gather(*futures, return_exceptions=True)
        assert out.sent == len(good)
    failed = {i: r for i, r in enumerate(results) if isinstance(r, BaseException)}
    assert sorted(failed) == [3, 7, 8]
    assert all(isinstance(e, OutputError) for e in failed.values())
    assert isinstance(failed[3].__cause__, MessageSizeTooLargeError)
    assert isinstance(failed[7].__cause__, AssertionError)
    assert isinstance(failed[8].__cause__, TypeError)
    values = [r.value for rs in (await read_all(kafka_bootstrap, {topic: 2})).values() for r in rs]
    assert values == [m[1] for m in good]  # all on one partition, in order, none of the failed ones


async def test_send_many_of_nothing(kafka_bootstrap: str) -> None:
    async with producer(kafka_bootstrap) as out:
        assert await out.send_many([]) == []
        assert out.sent == 0


async def test_send_many_is_bounded_by_the_send_timeout(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    """A topic whose metadata never comes (it does not exist): the call returns failed futures, it does not raise."""
    topic = topic_factory(partitions=1)
    missing = f"missing-{uuid.uuid4().hex[:8]}"  # the brokers do not auto-create topics
    async with producer(kafka_bootstrap, send_timeout=2.0) as out:
        started = time.monotonic()
        futures = await out.send_many([(missing, b"a", b"k", ()), (topic, b"b", b"k", ())])
        assert time.monotonic() - started < 10
        results = await asyncio.gather(*futures, return_exceptions=True)
    assert all(isinstance(r, OutputError) for r in results)
    assert isinstance(results[0], OutputError)
    assert isinstance(results[0].__cause__, TimeoutError)


async def test_send_many_in_transactions(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    topic = topic_factory(partitions=3)
    committed = [(topic, f"committed-{i}".encode(), f"user-{i % 17}".encode(), ()) for i in range(500)]
    aborted = [(topic, f"aborted-{i}".encode(), f"user-{i % 17}".encode(), ()) for i in range(200)]
    async with producer(kafka_bootstrap, transactional_id=f"send-many-{uuid.uuid4().hex[:8]}") as out:
        outside = await out.send_many(committed[:5])  # no transaction open
        results = await asyncio.gather(*outside, return_exceptions=True)
        assert all(isinstance(r, OutputError) and isinstance(r.__cause__, IllegalOperation) for r in results)
        with pytest.raises(OutputError) as unacked:
            await out.wait_acked(outside)
        with pytest.raises(TransactionFatal):  # nothing to abort: fail() must see IllegalOperation beneath
            await out.fail(unacked.value, "produce")

        await out.begin()
        await out.wait_acked(await out.send_many(committed))
        await out.commit()
        await out.begin()
        await out.wait_acked(await out.send_many(aborted))
        await out.abort()

    def values(records: dict[tuple[str, int], list[ConsumerRecord[bytes, bytes]]]) -> list[bytes | None]:
        return sorted(r.value for rs in records.values() for r in rs)

    assert values(await read_all(kafka_bootstrap, {topic: 3}, "read_committed")) == sorted(m[1] for m in committed)
    assert values(await read_all(kafka_bootstrap, {topic: 3}, "read_uncommitted")) == sorted(
        m[1] for m in committed + aborted
    )
