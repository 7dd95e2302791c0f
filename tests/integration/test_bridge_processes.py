"""``kard-bridge run`` as real processes: SIGKILL mid-stream, SIGTERM drains, two members share a group.

The processes are configured only through environment variables (``KAFKA_*``, ``KARD_*``, ``BRIDGE_*``), as
an operator would; the checks read the output topics, the group's committed offsets and what the sandbox got.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections import Counter

import pytest

from bridge.config import load_settings
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeProcess,
    BridgeProcessFactory,
    BridgeTopics,
    Outcomes,
    Produced,
    committed_offsets,
    expected_items,
    generated_messages,
    item_wire_key,
    produce,
    read_outcomes,
    received_key,
    wait_committed_to_end,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def _group() -> str:
    return f"proc-{uuid.uuid4().hex[:10]}"


async def _wait_assigned(*procs: BridgeProcess, partitions: int = 9, timeout: float = 90) -> None:
    """Wait until the processes' latest assignments are non-empty, disjoint and cover ``partitions`` partitions."""

    def settled() -> bool:
        for proc in procs:
            proc.check()
        latest = [set(proc.assignment()) for proc in procs]
        union = set().union(*latest)
        return all(latest) and len(union) == partitions and sum(map(len, latest)) == partitions

    await wait_until(settled, timeout, what="every process to own its share of the partitions")


def _mapped_keys(produced: list[Produced], topics: BridgeTopics, bootstrap: str) -> dict[tuple[str, int, int], bytes]:
    """The wire identity of each produced record's item (all generated records are valid)."""
    settings = load_settings(kafka={"bootstrap_servers": bootstrap}, bridge=topics.settings())
    mapped = expected_items(produced, settings)
    assert len(mapped) == len(produced)
    return {coord: item_wire_key(item) for coord, item in mapped.items()}


def _assert_committed_have_outcomes(
    produced: list[Produced], committed: dict[tuple[str, int], int], outcomes: Outcomes
) -> None:
    """I1/I2: no committed offset passes a record that has no outcome on the output topics."""
    for record in produced:
        if record.offset < committed.get((record.topic, record.partition), 0):
            assert outcomes.of(record.coord), f"{record.coord} is below the committed offset without an outcome"


async def test_sigkill_mid_stream_then_a_new_process_loses_nothing(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_process: BridgeProcessFactory, sandbox: SandboxProcess
) -> None:
    """After a SIGKILL with requests in flight a new member finishes: nothing lost, repeats only past the commit."""
    sandbox.control.set_faults({"latency": {"fixed": 0.15}})
    group = _group()
    first = bridge_process(sandbox, group_id=group, bridge={"max_in_flight": 4, "buffer_max_records": 1000})
    await _wait_assigned(first)
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 3000, users=3000, seed=31))

    def mid_stream() -> bool:
        first.check()
        stats = sandbox.control.stats()
        return bool(stats["stored_items"] >= 300 and stats["in_flight"] >= 1)

    await wait_until(mid_stream, 120, interval=0.05, what="requests in flight after 300 delivered items")
    first.kill()

    committed_at_kill = await committed_offsets(kafka_bootstrap, group)
    outcomes_at_kill = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert outcomes_at_kill.count() < len(produced), "the kill came mid-stream"
    _assert_committed_have_outcomes(produced, committed_at_kill, outcomes_at_kill)

    second = bridge_process(sandbox, group_id=group, bridge={"max_in_flight": 4})
    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 180, alive=second.check)
    assert await second.terminate() == 0

    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert not outcomes.failures
    repeated = 0
    for record in produced:
        found = outcomes.of(record.coord)
        assert found, f"{record.coord} was lost"
        if len(found) > 1:
            repeated += 1
            assert record.offset >= committed_at_kill.get((record.topic, record.partition), 0), (
                f"{record.coord} was committed before the kill yet processed again"
            )
    keys = _mapped_keys(produced, bridge_topics, kafka_bootstrap)
    received = Counter(received_key(e) for e in await asyncio.to_thread(sandbox.control.received))
    for record in produced:
        count = received[keys[record.coord]]
        assert count >= 1, f"{record.coord} never reached the sandbox"
        if count > 1:
            assert record.offset >= committed_at_kill.get((record.topic, record.partition), 0)
    assert repeated <= 1000 + 2000, "duplicates stay within the in-flight window (buffer + one fetch)"


async def test_sigterm_drains_commits_and_exits_zero(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_process: BridgeProcessFactory, sandbox: SandboxProcess
) -> None:
    """SIGTERM mid-stream: exit 0, everything consumed has one outcome and is committed; a successor repeats nothing."""
    sandbox.control.set_faults({"latency": {"fixed": 0.05}})
    group = _group()
    first = bridge_process(sandbox, group_id=group, bridge={"max_in_flight": 4, "buffer_max_records": 1000})
    await _wait_assigned(first)
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 3000, users=3000, seed=37))

    def mid_stream() -> bool:
        first.check()
        return bool(sandbox.control.stats()["stored_items"] >= 500)

    await wait_until(mid_stream, 120, interval=0.05, what="500 delivered items")
    assert await first.terminate() == 0
    drained = first.events("bridge_drained")
    assert drained and drained[-1]["clean"] is True

    committed = await committed_offsets(kafka_bootstrap, group)
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    consumed = drained[-1]["consumed"]
    assert sum(committed.values()) == consumed < len(produced), "committed exactly what it consumed, mid-stream"
    for record in produced:
        below = record.offset < committed.get((record.topic, record.partition), 0)
        assert len(outcomes.of(record.coord)) == (1 if below else 0), record.coord

    second = bridge_process(sandbox, group_id=group)
    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 180, alive=second.check)
    assert await second.terminate() == 0
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert not outcomes.failures
    for record in produced:
        outcomes.single(record.coord)  # a clean shutdown leaves no duplicates (I4)
    keys = _mapped_keys(produced, bridge_topics, kafka_bootstrap)
    received = Counter(received_key(e) for e in await asyncio.to_thread(sandbox.control.received))
    assert received == Counter(keys.values())


async def test_two_processes_with_one_group_share_the_partitions(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_process: BridgeProcessFactory, sandbox: SandboxProcess
) -> None:
    """Two `run` processes with the same group id split the partitions, and both deliver records."""
    group = _group()
    one = bridge_process(sandbox, group_id=group)
    two = bridge_process(sandbox, group_id=group)
    await _wait_assigned(one, two)
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 2000, users=2000, seed=41))

    def alive() -> None:
        one.check()
        two.check()

    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 180, alive=alive)
    assert await one.terminate() == 0
    assert await two.terminate() == 0

    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert not outcomes.failures
    for record in produced:
        outcomes.single(record.coord)
    instances = Counter(o.result.bridge.instance_id for o in outcomes.results if o.result is not None)
    assert set(instances) == {one.instance_id, two.instance_id}, instances


async def test_a_bridge_started_while_kafka_is_unreachable_waits_and_exits_cleanly_on_sigterm(
    bridge_process: BridgeProcessFactory, sandbox: SandboxProcess
) -> None:
    """No Kafka at startup is a wait with backoff, not an exit 1 (the chaos suite's Kafka cut found it)."""
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"
    proc = bridge_process(sandbox, group_id=_group(), kafka={"bootstrap_servers": dead})
    await wait_until(lambda: proc.events("kafka_unreachable_at_startup"), 90, what="a startup retry")
    proc.check()  # still running
    assert await proc.terminate(timeout=30) == 0
