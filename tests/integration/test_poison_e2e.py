"""Issue 5 end to end: every kind of ``tests/poison_catalogue.py`` between valid neighbours, real Kafka and sandbox.

Each poison (and each tolerated) record is produced between two valid events of its topic with the same key,
so all three share a partition and are fetched, mapped and batched together. The whole backlog is produced
before the bridge starts, so poison and neighbours arrive in the same fetches. The bridge must dead-letter
each poison record once with its catalogued reason, deliver everything else, commit every input partition
to its end, and still be running afterwards.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence

import pytest

from bridge.events.common import EventKind
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    Message,
    committed_offsets,
    end_offsets,
    expected_items,
    item_wire_key,
    produce,
    read_outcomes,
    received_key,
    wait_committed_to_end,
)
from tests.poison_catalogue import (
    DEFAULT_KEY,
    MAX_VALUE_BYTES,
    POISON,
    TOLERATED,
    PoisonKind,
    ToleratedKind,
    neighbour,
)

pytestmark = pytest.mark.kafka

_NEIGHBOUR = (("origin", b"neighbour"),)


def _own(headers: Sequence[tuple[str, bytes | None]]) -> list[tuple[str, bytes | None]]:
    """The headers a failure record keeps from its input: all but earlier ``kard-bridge.*`` ones."""
    return [(name, value) for name, value in headers if not name.startswith("kard-bridge.")]


async def test_every_poison_kind_is_dead_lettered_and_its_neighbours_delivered(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """One failure with the catalogued reason per poison record; neighbours and tolerated kinds delivered."""
    topic_of = {
        EventKind.CARD_TRANSACTION: bridge_topics.transactions,
        EventKind.ELIGIBILITY: bridge_topics.eligibility,
        EventKind.ATTRIBUTION: bridge_topics.attributions,
    }
    messages: list[Message] = []
    kinds: dict[int, PoisonKind | ToleratedKind] = {}  # index in ``messages`` → the kind produced there
    for serial, kind in enumerate((*POISON, *TOLERATED)):
        topic = topic_of[kind.topic]
        key = kind.key if kind.key is not None else DEFAULT_KEY  # neighbours always share a partition key
        messages.append(Message(topic, key, neighbour(kind.topic, 2 * serial), _NEIGHBOUR))
        kinds[len(messages)] = kind
        messages.append(Message(topic, kind.key, kind.value, kind.headers))  # type: ignore[arg-type]
        messages.append(Message(topic, key, neighbour(kind.topic, 2 * serial + 1), _NEIGHBOUR))
    produced = await produce(kafka_bootstrap, messages)
    for index, kind in kinds.items():
        if kind.key is not None:  # same key, same partition: the neighbours sit right around the poison
            before, poison, after = produced[index - 1 : index + 2]
            assert before.partition == poison.partition == after.partition
            assert before.offset + 1 == poison.offset == after.offset - 1

    running = await bridge_factory(sandbox, bridge={"max_value_bytes": MAX_VALUE_BYTES})
    await wait_committed_to_end(kafka_bootstrap, running.group_id, bridge_topics.inputs, 180, alive=running.check)
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert not running.task.done(), "the bridge stopped"

    mapped = expected_items(produced, running.settings)
    delivered = set()
    for index, record in enumerate(produced):
        kind = kinds.get(index)
        outcome = outcomes.single(record.coord)  # exactly one outcome, matched by source topic/partition/offset
        if isinstance(kind, PoisonKind):
            failure = outcome.failure
            assert failure is not None, f"{kind.name}: delivered instead of dead-lettered"
            got = (failure.reason_class.value, failure.reason, failure.pointer)
            assert got == (kind.reason_class, kind.reason, kind.pointer), kind.name
            assert kind.message is None or kind.message in failure.message, kind.name
            assert failure.attempts == 0 and failure.replay_count == 0, kind.name
            assert outcome.record.topic == bridge_topics.dlq(record.topic)
            assert (outcome.record.key, outcome.record.value) == (record.key, record.value), kind.name
            assert _own(outcome.record.headers) == _own(record.headers), kind.name
            assert record.coord not in mapped
        else:
            name = kind.name if kind is not None else "neighbour"
            assert outcome.result is not None, f"{name} at {record.coord}: {outcome.failure}"
            assert outcome.record.topic == bridge_topics.results(record.topic)
            assert outcome.record.key == record.key
            assert outcome.result.item_id == mapped[record.coord].item_id, name
            assert 200 <= outcome.result.http_status < 300
            delivered.add(record.coord)
    assert delivered == set(mapped), "what was delivered is exactly what the mapping accepts"
    assert len(outcomes.failures) == len(POISON)
    assert running.bridge.failures_by_reason == dict(Counter(kind.reason for kind in POISON))

    # The sandbox got every valid item once, and nothing else.
    received = await asyncio.to_thread(sandbox.control.received)
    assert Counter(received_key(entry) for entry in received) == Counter(item_wire_key(i) for i in mapped.values())

    # Every input partition is committed to its end, and the bridge is still up to drain cleanly.
    ends = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
    committed = await committed_offsets(kafka_bootstrap, running.group_id)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends
    stats = running.bridge.statistics()
    assert (stats.consumed, stats.poison) == (len(produced), len(POISON))
    running.check()
    await running.stop()
    assert running.bridge.exit_code == 0
