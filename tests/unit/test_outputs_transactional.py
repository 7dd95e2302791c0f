"""Exactly-once outcomes without a broker: ``TransactionalOutcomes`` over the real ``OutputProducer`` façade,
whose aiokafka producer is replaced by a recording fake.

The properties: outcomes are produced only below the offsets committed with them, in offset order, in one
transaction (begin → sends → acks checked → offsets → commit); a failed ack aborts the transaction and keeps
everything staged for the next one; fencing is fatal; records no longer tracked are never staged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, ProducerFenced

from bridge.config import load_settings
from bridge.errors import ConfigError, DecodeError
from bridge.kafka.producer import OutputProducer, TransactionAborted, TransactionFatal
from bridge.outputs import NotAMember, TransactionalOutcomes
from bridge.records import SourceRecord, TopicPartition

TP0 = TopicPartition("in", 0)
TP1 = TopicPartition("in", 1)


class FakeTransactionalProducer:
    """Records every call; ``fail_acks`` makes the next sends' acks fail, ``fence`` makes commit fail fatally."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_acks: BaseException | None = None
        self.fence = False
        self.in_transaction = False

    async def begin_transaction(self) -> None:
        assert not self.in_transaction
        self.in_transaction = True
        self.calls.append(("begin",))

    async def send(self, topic: str, value: bytes | None = None, key: bytes | None = None, headers: Any = None) -> Any:
        assert self.in_transaction, "sent outside a transaction"
        self.calls.append(("send", topic, dict(headers or ())["kard-bridge.source-offset"].decode()))
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.fail_acks is not None:
            fut.set_exception(self.fail_acks)
        else:
            fut.set_result(None)
        return fut

    async def send_offsets_to_transaction(self, offsets: Any, group_id: str) -> None:
        self.calls.append(
            ("offsets", group_id, sorted((tp.topic, tp.partition, om.offset) for tp, om in offsets.items()))
        )

    async def commit_transaction(self) -> None:
        if self.fence:
            raise ProducerFenced()
        self.in_transaction = False
        self.calls.append(("commit",))

    async def abort_transaction(self) -> None:
        self.in_transaction = False
        self.calls.append(("abort",))


def _setup(tracked: set[tuple[int, int]] | None = None) -> tuple[TransactionalOutcomes, FakeTransactionalProducer]:
    settings = load_settings(
        kafka={"bootstrap_servers": "127.0.0.1:1", "exactly_once": True}, bridge={"instance_id": "t"}
    )
    producer = OutputProducer(settings.kafka.common_kwargs(), client_id="t", transactional_id="tx", send_timeout=5)
    fake = FakeTransactionalProducer()
    producer._producer = fake  # type: ignore[assignment]
    producer._add_message = None  # send_many falls back to a loop of the fake's send()

    def on_finished(record: SourceRecord) -> bool:
        return tracked is None or (record.partition, record.offset) in tracked

    return TransactionalOutcomes(producer, settings, on_finished=on_finished), fake


async def _stage(outputs: TransactionalOutcomes, *coords: tuple[int, int]) -> None:
    poison = [(SourceRecord("in", p, o, b"k", b"x", (), 0), DecodeError("malformed_json", "bad")) for p, o in coords]
    await outputs.record_failures(poison)


def _sent(fake: FakeTransactionalProducer) -> list[str]:
    return [c[2] for c in fake.calls if c[0] == "send"]


async def test_only_outcomes_below_the_committed_offsets_are_produced_in_order() -> None:
    outputs, fake = _setup()
    await _stage(outputs, (0, 3), (0, 1), (0, 0), (0, 5), (1, 0))  # finished out of order
    assert outputs.staged == 5 and fake.calls == []  # nothing reaches Kafka before a commit

    records = await outputs.commit({TP0: 2, TP1: 1}, "group")

    assert [(r.partition, r.offset) for r in records] == [(0, 0), (0, 1), (1, 0)]
    assert [c[0] for c in fake.calls] == ["begin", "send", "send", "send", "offsets", "commit"]
    assert _sent(fake) == ["0", "1", "0"]
    assert fake.calls[4] == ("offsets", "group", [("in", 0, 2), ("in", 1, 1)])
    assert outputs.staged == 2  # offsets 3 and 5 wait behind the unfinished offset 2

    fake.calls.clear()
    await _stage(outputs, (0, 2), (0, 4))
    records = await outputs.commit({TP0: 6}, "group")
    assert [r.offset for r in records] == [2, 3, 4, 5] and outputs.staged == 0
    assert _sent(fake) == ["2", "3", "4", "5"]


async def test_a_failed_ack_aborts_and_keeps_everything_staged() -> None:
    outputs, fake = _setup()
    await _stage(outputs, (0, 0), (0, 1))
    fake.fail_acks = KafkaTimeoutError()
    with pytest.raises(TransactionAborted):
        await outputs.commit({TP0: 2}, "group")
    assert [c[0] for c in fake.calls] == ["begin", "send", "send", "abort"]  # no offsets, no commit
    assert outputs.staged == 2

    fake.fail_acks = None
    fake.calls.clear()
    records = await outputs.commit({TP0: 2}, "group")
    assert [r.offset for r in records] == [0, 1]
    assert [c[0] for c in fake.calls] == ["begin", "send", "send", "offsets", "commit"]


async def test_fencing_is_fatal() -> None:
    outputs, fake = _setup()
    await _stage(outputs, (0, 0))
    fake.fence = True
    with pytest.raises(TransactionFatal):
        await outputs.commit({TP0: 1}, "group")
    assert "abort" not in [c[0] for c in fake.calls]  # a fenced producer cannot abort; the bridge exits


async def test_untracked_records_are_not_staged_and_revoked_partitions_are_dropped() -> None:
    outputs, _fake = _setup(tracked={(0, 0), (1, 0), (1, 1)})
    await _stage(outputs, (0, 0), (0, 1), (1, 0), (1, 1))  # (0, 1): its partition was revoked meanwhile
    assert outputs.staged == 3
    assert outputs.drop_partitions(frozenset({TP1})) == 2
    assert outputs.staged == 1
    records = await outputs.commit({TP0: 1, TP1: 2}, "group")
    assert [(r.partition, r.offset) for r in records] == [(0, 0)]


async def test_the_membership_check_comes_before_the_offsets_and_a_no_aborts() -> None:
    """The check is a plain offset commit: after the transaction's offsets it would undo them (see commit())."""
    outputs, fake = _setup()
    await _stage(outputs, (0, 0))

    async def member() -> bool:
        fake.calls.append(("check",))
        return True

    await outputs.commit({TP0: 1}, "group", still_member=member)
    assert [c[0] for c in fake.calls] == ["begin", "send", "check", "offsets", "commit"]

    fake.calls.clear()
    await _stage(outputs, (0, 1))

    async def expelled() -> bool:
        return False

    with pytest.raises(NotAMember):
        await outputs.commit({TP0: 2}, "group", still_member=expelled)
    assert [c[0] for c in fake.calls] == ["begin", "send", "abort"]
    assert outputs.staged == 1


def test_exactly_once_settings() -> None:
    """The transactional id: explicit, else stable per static member, else per instance; off by default."""
    base = {"bootstrap_servers": "127.0.0.1:1"}
    assert load_settings(kafka=base).kafka.transactional_id_for("g", "host-1") is None
    assert "isolation_level" not in load_settings(kafka=base).kafka.to_consumer_kwargs()

    eos = load_settings(kafka={**base, "exactly_once": True}).kafka
    assert eos.transactional_id_for("g", "host-1") == "kard-bridge-g-host-1"
    assert eos.to_consumer_kwargs()["isolation_level"] == "read_committed"
    static = load_settings(kafka={**base, "exactly_once": True, "group_instance_id": "pod-0"}).kafka
    assert static.transactional_id_for("g", "host-1") == "kard-bridge-g-pod-0"
    explicit = load_settings(kafka={**base, "exactly_once": True, "transactional_id": "tx-a"}).kafka
    assert explicit.transactional_id_for("g", "host-1") == "tx-a"

    with pytest.raises(ConfigError, match="KAFKA_TRANSACTIONAL_ID"):
        load_settings(kafka={**base, "transactional_id": "tx-a"})
    with pytest.raises(ConfigError, match="KAFKA_TRANSACTION_TIMEOUT"):
        load_settings(kafka={**base, "exactly_once": True, "transaction_timeout": 3600})
