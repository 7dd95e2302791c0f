"""Per-batch result records (``BRIDGE_RESULT_MODE=batch``): one record per request and input topic, and
every listed input record finished exactly once, only after that record's ack.

``OutcomePublisher`` runs over the real ``OutputProducer`` façade with its aiokafka producer replaced by a
fake whose acks the test resolves by hand (no broker needed for these properties; the end-to-end test with
Kafka is ``tests/integration/test_batch_results_e2e.py``).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from aiokafka.errors import KafkaTimeoutError

from bridge.config import load_settings
from bridge.errors import ConfigError
from bridge.events.outcomes import (
    ApiSummary,
    BatchResultValue,
    ResultValue,
    build_batch_result_value,
    build_result_value,
)
from bridge.kafka.producer import OutputProducer
from bridge.kard.responses import BatchResponse
from bridge.outputs import OutcomePublisher
from bridge.pipeline.batcher import BatchEntry
from bridge.records import RecordRef, SourceRecord
from bridge.routes import Endpoint, MappedItem, Route

ROUTE = Route(Endpoint.TRANSACTIONS, "org-demo")
T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = datetime(2025, 1, 2, 3, 4, 6, 250000, tzinfo=UTC)
COMMON: dict[str, Any] = {
    "http_status": 201,
    "response": ApiSummary(job_id="job-1", job_status="queued", batch_items=3),
    "attempts": 1,
    "latency_ms": 12.5,
    "first_attempt_at": T0,
    "completed_at": T1,
    "instance_id": "host-1",
    "bridge_version": "0.1.0",
}


def _entry(topic: str, partition: int, offset: int, key: bytes | None) -> BatchEntry:
    record = SourceRecord(topic, partition, offset, key, b"{}", (), 1_735_787_045_000 + offset)
    item = MappedItem(
        route=ROUTE,
        item={"type": "transaction", "id": f"evt-{offset}"},
        item_id=f"evt-{offset}",
        ordering_key=(key or b"").hex(),
        encoded=orjson.dumps({"type": "transaction", "id": f"evt-{offset}"}),
        event_id=f"evt-{offset}",
    )
    return BatchEntry(RecordRef(topic, partition, offset), item, record)


def test_batch_value_lists_every_record_and_shares_the_result_fields() -> None:
    """The value parses as a BatchResultValue; its records are the inputs in order with coordinates and ids,
    and its request-wide fields are byte for byte those of a per-record result of the same request."""
    entries = [_entry("in", 0, 5, b"user-1"), _entry("in", 1, 9, b"\xff")]
    value = build_batch_result_value([(e.record, e.item) for e in entries if e.record], **COMMON)
    parsed = BatchResultValue.model_validate_json(value)
    assert parsed.outcome == "delivered_batch"
    assert [(r.partition, r.offset, r.event_id, r.item_id) for r in parsed.records] == [
        (0, 5, "evt-5", "evt-5"),
        (1, 9, "evt-9", "evt-9"),
    ]
    assert [(r.key, r.key_encoding) for r in parsed.records] == [("user-1", "utf-8"), ("/w==", "base64")]
    assert parsed.records[0].timestamp_ms == 1_735_787_045_005
    assert parsed.route.path == "v2/issuers/org-demo/transactions"
    single = orjson.loads(build_result_value(entries[0].record, entries[0].item, **COMMON))  # type: ignore[arg-type]
    ResultValue.model_validate(single)
    batch = orjson.loads(value)
    shared = ("http_status", "response", "attempts", "latency_ms", "first_attempt_at", "completed_at", "bridge")
    assert {k: batch[k] for k in shared} == {k: single[k] for k in shared}
    with pytest.raises(ValueError, match="at least one"):
        build_batch_result_value([], **COMMON)


class FakeProducer:
    """Keeps every send and its ack future; the test resolves the futures."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, asyncio.Future[Any]]] = []
        self.new_send = asyncio.Event()

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.sent.append((topic, value, key, fut))
        self.new_send.set()
        return fut


def _publisher(mode: str) -> tuple[OutcomePublisher, FakeProducer, list[tuple[str, int, int]]]:
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1"}, bridge={"instance_id": "t", "result_mode": mode}
    )
    producer = OutputProducer(settings.kafka.common_kwargs(), client_id="t", send_timeout=5)
    fake = FakeProducer()
    producer._producer = fake  # type: ignore[assignment]
    producer._add_message = None  # send_many falls back to a loop of the fake's send()
    finished: list[tuple[str, int, int]] = []
    publisher = OutcomePublisher(
        producer, settings, on_finished=lambda r: finished.append((r.topic, r.partition, r.offset))
    )
    return publisher, fake, finished


def _response(n: int) -> BatchResponse:
    return BatchResponse(status=201, elapsed=0.01, summary={"job_id": "job-1"}, outcomes=())


async def test_one_batch_record_per_input_topic_finishing_its_records_only_when_acked() -> None:
    """Three entries from two input topics give two batch records; nothing is finished before its ack."""
    publisher, fake, finished = _publisher("batch")
    a = [_entry("kard.a", 0, 1, b"user-1"), _entry("kard.a", 0, 2, b"user-1")]
    b = [_entry("kard.b", 3, 7, b"user-2")]
    await publisher.delivered(ROUTE, [a[0], b[0], a[1]], _response(3), (), attempts=1, latency=0.02)
    sent = [(topic, key) for topic, _, key, _ in fake.sent]
    assert sent == [("kard.a.results", b"user-1"), ("kard.b.results", b"user-2")]
    assert [r["offset"] for r in orjson.loads(fake.sent[0][1] or b"")["records"]] == [1, 2]
    assert finished == []
    fake.sent[1][3].set_result(None)
    await asyncio.sleep(0)  # done callbacks run on the next loop turn
    assert finished == [("kard.b", 3, 7)]
    fake.sent[0][3].set_result(None)
    await asyncio.sleep(0)
    assert finished == [("kard.b", 3, 7), ("kard.a", 0, 1), ("kard.a", 0, 2)]
    assert publisher.results == 3


async def test_mixed_keys_give_an_unkeyed_batch_record() -> None:
    """Records of different users share one batch record without a key (no single key is true of it)."""
    publisher, fake, _ = _publisher("batch")
    entries = [_entry("kard.a", 0, 1, b"user-1"), _entry("kard.a", 1, 2, b"user-2")]
    await publisher.delivered(ROUTE, entries, _response(2), (), attempts=1, latency=0.02)
    assert [key for _, _, key, _ in fake.sent] == [None]


async def test_an_unacked_batch_record_is_produced_again_and_its_records_finish_once() -> None:
    """A failed ack re-produces the whole batch record; its records are finished once, after the retry's ack."""
    publisher, fake, finished = _publisher("batch")
    retries = asyncio.create_task(publisher.run_retries())
    try:
        entries = [_entry("kard.a", 0, 1, b"u"), _entry("kard.a", 0, 2, b"u")]
        await publisher.delivered(ROUTE, entries, _response(2), (), attempts=1, latency=0.02)
        fake.sent[0][3].set_exception(KafkaTimeoutError())
        await asyncio.sleep(0)
        assert finished == []
        fake.new_send.clear()
        async with asyncio.timeout(5):
            await fake.new_send.wait()
        assert fake.sent[1][1] == fake.sent[0][1]
        fake.sent[1][3].set_result(None)
        await asyncio.sleep(0)
        assert finished == [("kard.a", 0, 1), ("kard.a", 0, 2)]
        assert await publisher.wait_settled(1)
    finally:
        retries.cancel()


async def test_record_mode_is_the_default_and_writes_one_result_per_record() -> None:
    """Without the setting every record gets its own result record keyed by its input key."""
    assert load_settings(kafka={"bootstrap_servers": "127.0.0.1:1"}).bridge.result_mode == "record"
    publisher, fake, finished = _publisher("record")
    entries = [_entry("kard.a", 0, 1, b"user-1"), _entry("kard.a", 1, 2, b"user-2")]
    await publisher.delivered(ROUTE, entries, _response(2), (), attempts=1, latency=0.02)
    assert [key for _, _, key, _ in fake.sent] == [b"user-1", b"user-2"]
    for sent in fake.sent:
        sent[3].set_result(None)
    await asyncio.sleep(0)
    assert finished == [("kard.a", 0, 1), ("kard.a", 1, 2)]


def test_batch_results_are_refused_with_exactly_once() -> None:
    """Exactly-once stages one outcome per input offset, so the combination is a configuration error."""
    with pytest.raises(ConfigError, match="BRIDGE_RESULT_MODE"):
        load_settings(kafka={"bootstrap_servers": "127.0.0.1:1", "exactly_once": True}, bridge={"result_mode": "batch"})
    with pytest.raises(ConfigError, match="BRIDGE_RESULT_MODE"):
        load_settings(kafka={"bootstrap_servers": "127.0.0.1:1"}, bridge={"result_mode": "sometimes"})
