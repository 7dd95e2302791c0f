"""Exactly-once outcomes (``KAFKA_EXACTLY_ONCE=true``) against the real broker and the real sandbox.

What "exactly once" covers here: a ``read_committed`` reader of the result and DLQ topics sees exactly one
outcome per input record, even when a bridge process is SIGKILLed with outcomes in an open transaction. What it
does not cover, and the tests measure: the HTTP call, so the sandbox may accept an item more than once.

* an in-process bridge in exactly-once mode delivers everything, its outcomes are transactional (the output
  partitions hold commit markers), and the group's offsets reach the end;
* a process killed at a random point mid-stream, then a successor: 0 outcome duplicates (the same scenario in
  the default mode is run alongside for comparison: it may repeat outcomes);
* a process killed while its transaction holds acknowledged outcomes but is not committed (a test hook holds
  the commit), then a successor with the same transactional id (which aborts the open transaction at once)
  or another one (the broker aborts it after ``KAFKA_TRANSACTION_TIMEOUT``): the aborted outcomes are in the
  log (a ``read_uncommitted`` reader sees them twice) but no ``read_committed`` reader does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka import TopicPartition as KafkaTP

from bridge.config import load_settings
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeProcess,
    BridgeProcessFactory,
    BridgeTopics,
    Outcomes,
    OutputRecord,
    Produced,
    bridge_overrides,
    committed_offsets,
    end_offsets,
    example_messages,
    expected_items,
    generated_messages,
    interleave,
    item_wire_key,
    produce,
    received_key,
    wait_committed_to_end,
    wait_until,
)

pytestmark = pytest.mark.kafka

Isolation = Literal["read_committed", "read_uncommitted"]


# -- reading the outputs as a read_committed consumer ------------------------------------------------------


async def read_outputs(bootstrap: str, topics: BridgeTopics, isolation: Isolation, timeout: float = 60.0) -> Outcomes:
    """Every result and failure record visible at ``isolation``, from the beginning to the current end.

    With ``read_committed`` the end is the last stable offset: records of open transactions are not read
    (call :func:`wait_no_open_transactions` first), records of aborted ones are skipped.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level=isolation)
    await consumer.start()
    out: list[OutputRecord] = []
    try:
        tps = [KafkaTP(t, p) for t in topics.outputs for p in range(3)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        remaining = set(tps)
        async with asyncio.timeout(timeout):
            while remaining:
                batches = await consumer.getmany(*remaining, timeout_ms=200)
                for tp, msgs in batches.items():
                    out.extend(
                        OutputRecord(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()))
                        for m in msgs
                        if m.offset < ends[tp]
                    )
                # Transaction markers take offsets too: "done" is the position, not the last record's offset.
                for tp in list(remaining):
                    if await consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
    finally:
        await consumer.stop()
    return Outcomes([r for r in out if r.topic.endswith(".results")], [r for r in out if r.topic.endswith(".dlq")])


async def wait_no_open_transactions(bootstrap: str, topics: BridgeTopics, timeout: float) -> None:
    """Wait until no transaction is open on the output topics (last stable offset == high watermark)."""

    async def stable() -> bool:
        ends: dict[str, dict[KafkaTP, int]] = {}
        for isolation in ("read_committed", "read_uncommitted"):
            consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation)
            await consumer.start()
            try:
                ends[isolation] = await consumer.end_offsets([KafkaTP(t, p) for t in topics.outputs for p in range(3)])
            finally:
                await consumer.stop()
        return ends["read_committed"] == ends["read_uncommitted"]

    await wait_until(stable, timeout, interval=0.5, what="the output topics to have no open transaction")


def duplicates(outcomes: Outcomes) -> int:
    """Outcomes beyond the first of each input record."""
    return sum(len(found) - 1 for found in outcomes.by_source.values() if len(found) > 1)


def api_repeats(produced: Iterable[Produced], sandbox: SandboxProcess, bootstrap: str, topics: BridgeTopics) -> int:
    """Acceptances beyond what the produced (valid) records ask for, as the sandbox recorded them.

    Compared as multisets: two records may map to the same item on the wire (the end-to-end test does the same).
    """
    settings = load_settings(kafka={"bootstrap_servers": bootstrap}, bridge=topics.settings())
    want = Counter(item_wire_key(item) for item in expected_items(produced, settings).values())
    received = Counter(received_key(e) for e in sandbox.control.received())
    missing = want - received
    assert not missing, f"{sum(missing.values())} items never reached the sandbox"
    return sum((received - want).values())


def assert_one_committed_outcome_each(produced: Iterable[Produced], outcomes: Outcomes) -> None:
    produced = list(produced)
    for record in produced:
        outcomes.single(record.coord)
    assert outcomes.count() == len(produced), "outcomes of records that were not produced"


# -- a normal run ----------------------------------------------------------------------------------------------


async def test_exactly_once_run_delivers_everything_transactionally(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Valid and poison records, exactly-once mode: one committed outcome each, offsets to the end, no API repeat."""
    examples, expected_failure = example_messages(bridge_topics)
    generated = generated_messages(bridge_topics, 600, users=80, seed=53)
    running = await bridge_factory(sandbox, kafka={"exactly_once": True})
    assert running.bridge.producer is not None and running.bridge.producer.transactional_id
    produced = await produce(kafka_bootstrap, interleave(generated, examples, every=5))

    await wait_committed_to_end(kafka_bootstrap, running.group_id, bridge_topics.inputs, 120, alive=running.check)
    await running.stop()
    assert running.bridge.exit_code == 0

    await wait_no_open_transactions(kafka_bootstrap, bridge_topics, 30)
    committed_view = await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")
    assert_one_committed_outcome_each(produced, committed_view)
    assert len(committed_view.failures) == len(expected_failure)
    for outcome in committed_view.failures:
        assert outcome.record.value in expected_failure
    # Nothing was aborted (read_uncommitted sees the same), and the outputs really are transactional:
    # each partition that got outcomes also holds commit markers, which take offsets of their own.
    everything = await read_outputs(kafka_bootstrap, bridge_topics, "read_uncommitted")
    assert everything.count() == committed_view.count()
    ends = await end_offsets(kafka_bootstrap, bridge_topics.outputs)
    assert sum(ends.values()) > committed_view.count(), "no transaction markers on the output topics"

    committed = await committed_offsets(kafka_bootstrap, running.group_id)
    inputs = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
    assert {tp: committed.get(tp, 0) for tp in inputs} == inputs
    assert api_repeats(produced, sandbox, kafka_bootstrap, bridge_topics) == 0


async def test_a_member_joining_mid_stream_repeats_no_outcome(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """A rebalance mid-stream: the revoking member commits its transaction and waits until the group shows it."""
    sandbox.control.set_faults({"latency": {"fixed": 0.1}})
    group = f"eos-join-{uuid.uuid4().hex[:10]}"
    settings: dict[str, Any] = {"max_in_flight": 4, "buffer_max_records": 1000}
    first = await bridge_factory(sandbox, group_id=group, kafka={"exactly_once": True}, bridge=settings)
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 6000, users=6000, seed=67))
    await wait_until(lambda: sandbox.control.stats()["stored_items"] >= 600, 120, interval=0.05, what="600 items")
    second = await bridge_factory(sandbox, group_id=group, kafka={"exactly_once": True}, bridge=settings)
    assert first.bridge.producer and second.bridge.producer
    assert first.bridge.producer.transactional_id != second.bridge.producer.transactional_id

    def alive() -> None:
        first.check()
        second.check()

    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 180, alive=alive)
    await first.stop()
    await second.stop()
    assert first.bridge.results and second.bridge.results, "both members delivered"
    await wait_no_open_transactions(kafka_bootstrap, bridge_topics, 30)
    committed_view = await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")
    assert_one_committed_outcome_each(produced, committed_view)
    repeats = await asyncio.to_thread(api_repeats, produced, sandbox, kafka_bootstrap, bridge_topics)
    print(f"\n[rebalance] 0 outcome duplicates; the API accepted {repeats} items more than once")


# -- SIGKILL at a random point ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exactly_once", "default"])
async def test_sigkill_mid_stream_then_a_successor(
    mode: str,
    kafka_bootstrap: str,
    bridge_topics: BridgeTopics,
    bridge_process: BridgeProcessFactory,
    sandbox: SandboxProcess,
) -> None:
    """SIGKILL with requests in flight, then a successor: exactly-once mode leaves 0 committed outcome duplicates."""
    sandbox.control.set_faults({"latency": {"fixed": 0.15}})
    group = f"eos-kill-{uuid.uuid4().hex[:10]}"
    kafka: dict[str, Any] = (
        {"exactly_once": True, "transactional_id": f"eos-test-{uuid.uuid4().hex[:10]}"}
        if mode == "exactly_once"
        else {}
    )
    first = bridge_process(
        sandbox, group_id=group, kafka=kafka, bridge={"max_in_flight": 4, "buffer_max_records": 1000}
    )
    await wait_until(lambda: first.check() or first.assignment(), 90, what="the first process's assignment")
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 3000, users=3000, seed=59))

    def mid_stream() -> bool:
        first.check()
        stats = sandbox.control.stats()
        return bool(stats["stored_items"] >= 600 and stats["in_flight"] >= 1)

    await wait_until(mid_stream, 120, interval=0.05, what="requests in flight after 600 delivered items")
    first.kill()
    if mode == "exactly_once":
        # Outcomes and offsets are committed together: as many committed outcomes as committed offsets pass.
        visible = (await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")).count()
        assert sum((await committed_offsets(kafka_bootstrap, group)).values()) == visible < len(produced)

    second = bridge_process(sandbox, group_id=group, kafka=kafka, bridge={"max_in_flight": 8})
    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 180, alive=second.check)
    assert await second.terminate() == 0

    await wait_no_open_transactions(kafka_bootstrap, bridge_topics, 90)
    committed_view = await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")
    repeats = await asyncio.to_thread(api_repeats, produced, sandbox, kafka_bootstrap, bridge_topics)
    outcome_dups = duplicates(committed_view)
    print(f"\n[{mode}] SIGKILL mid-stream: {outcome_dups} outcome duplicates, {repeats} items the API accepted twice")
    for record in produced:
        assert committed_view.of(record.coord), f"{record.coord} was lost"
    if mode == "exactly_once":
        assert outcome_dups == 0
        assert_one_committed_outcome_each(produced, committed_view)


# -- a bridge process that holds one transaction at a chosen step ------------------------------------------------

#: ``python -m bridge run``, except that one call of ``EOS_TEST_HOLD_IN`` (``OutputProducer.send_offsets``: the
#: outcomes are acknowledged, the membership check passed, the offsets are not added yet; or
#: ``BridgeConsumer.confirm_membership``: the outcomes are acknowledged, nothing checked yet) waits: the first call
#: from the ``EOS_TEST_HOLD_AT``-th on whose offsets pass ``EOS_TEST_HOLD_AFTER`` records (send_offsets only). It
#: writes ``EOS_TEST_MARKER`` and waits until ``EOS_TEST_GO`` exists (if ever), then carries on.
_HOLDING_BRIDGE = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    from bridge.kafka.consumer import BridgeConsumer
    from bridge.kafka.producer import OutputProducer

    env = os.environ
    owner = OutputProducer if env["EOS_TEST_HOLD_IN"] == "send_offsets" else BridgeConsumer
    original = getattr(owner, env["EOS_TEST_HOLD_IN"])
    hold_at, hold_after = int(env["EOS_TEST_HOLD_AT"]), int(env["EOS_TEST_HOLD_AFTER"])
    marker, go = Path(env["EOS_TEST_MARKER"]), Path(env["EOS_TEST_GO"])
    state = {"calls": 0, "held": False}

    async def holding(self, *args):
        state["calls"] += 1
        progress = sum(args[0].values()) if isinstance(args[0], dict) else hold_after
        if not state["held"] and state["calls"] >= hold_at and progress >= hold_after:
            state["held"] = True
            marker.write_text("held")
            while not go.exists():
                await asyncio.sleep(0.05)
        return await original(self, *args)

    setattr(owner, env["EOS_TEST_HOLD_IN"], holding)
    from bridge.cli import main
    sys.exit(main(["run"]))
    """
)


def _env(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    prefixes = {"kafka": "KAFKA_", "kard": "KARD_", "bridge": "BRIDGE_"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(tuple(prefixes.values()))}
    env.update({f"{prefixes[s]}{k.upper()}": str(v) for s, values in sections.items() for k, v in values.items()})
    return env


@dataclass(slots=True)
class HeldBridge:
    """A holding bridge process: ``held`` exists once it holds; :meth:`release` lets it carry on."""

    proc: BridgeProcess
    held: Path
    go: Path

    def release(self) -> None:
        self.go.write_text("go")


@pytest.fixture
def holding_bridge(kafka_bootstrap: str, bridge_topics: BridgeTopics, tmp_path: Path) -> Iterator[Any]:
    """Start holding bridge processes (see ``_HOLDING_BRIDGE``); killed after the test."""
    started: list[BridgeProcess] = []

    def start(
        sandbox: SandboxProcess,
        *,
        group_id: str,
        kafka: Mapping[str, Any],
        hold_in: str,
        hold_at: int = 2,
        hold_after: int = 0,
        bridge: Mapping[str, Any] | None = None,
    ) -> HeldBridge:
        instance_id = f"holding-{uuid.uuid4().hex[:6]}"
        sections = bridge_overrides(
            kafka_bootstrap,
            bridge_topics,
            sandbox,
            group_id=group_id,
            instance_id=instance_id,
            kafka=kafka,
            bridge={"log_level": "INFO", "log_format": "json", "max_in_flight": 8, **(bridge or {})},
        )
        held, go = tmp_path / f"{instance_id}.held", tmp_path / f"{instance_id}.go"
        env = _env(sections) | {
            "EOS_TEST_HOLD_IN": hold_in,
            "EOS_TEST_HOLD_AT": str(hold_at),
            "EOS_TEST_HOLD_AFTER": str(hold_after),
            "EOS_TEST_MARKER": str(held),
            "EOS_TEST_GO": str(go),
        }
        log_path = tmp_path / f"{instance_id}.log"
        with log_path.open("wb") as log:
            popen = subprocess.Popen(
                [sys.executable, "-c", _HOLDING_BRIDGE], stdout=log, stderr=subprocess.STDOUT, env=env
            )
        proc = BridgeProcess(popen, log_path, group_id, instance_id)
        started.append(proc)
        return HeldBridge(proc, held, go)

    yield start
    for proc in started:
        proc.kill()


# -- a zombie: a member paused past its session while committing ------------------------------------------------


async def _pause_until_replaced(
    held: HeldBridge, successor: BridgeProcess, bootstrap: str, topics: BridgeTopics, group: str
) -> None:
    """SIGSTOP the held member, wait until the successor owns every partition, then let the member carry on."""
    held.proc.popen.send_signal(signal.SIGSTOP)
    try:
        await wait_until(
            lambda: successor.check() or len(successor.assignment()) == 9, 90, what="the successor to own all"
        )
    finally:
        held.release()
        held.proc.popen.send_signal(signal.SIGCONT)

    def alive() -> None:
        held.proc.check()
        successor.check()

    await wait_committed_to_end(bootstrap, group, topics.inputs, 180, alive=alive)
    assert await held.proc.terminate() == 0
    assert await successor.terminate() == 0
    await wait_no_open_transactions(bootstrap, topics, 30)


@pytest.mark.slow
@pytest.mark.parametrize("paused_in", ["confirm_membership", "send_offsets"])
async def test_a_member_paused_past_its_session_while_committing(
    paused_in: str,
    kafka_bootstrap: str,
    bridge_topics: BridgeTopics,
    bridge_process: BridgeProcessFactory,
    holding_bridge: Any,
    sandbox: SandboxProcess,
) -> None:
    """A zombie: SIGSTOP a member inside a commit until the group gives its partitions away, then SIGCONT it.

    ``TxnOffsetCommit`` v0 carries no group generation (PITFALLS A9). Paused *before* its membership check, the
    member finds it was expelled and aborts: 0 outcome duplicates. Paused *after* the check (a window of about
    three broker round trips per commit), it commits outcomes and offsets of partitions the successor already
    re-processed: duplicates. That second case is the documented limit of exactly-once mode with aiokafka.
    """
    sandbox.control.set_faults({"latency": {"fixed": 0.05}})
    group = f"eos-zombie-{uuid.uuid4().hex[:10]}"
    settings = {"max_in_flight": 4, "buffer_max_records": 1000}
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 3000, users=3000, seed=71))
    first = holding_bridge(
        sandbox, group_id=group, kafka={"exactly_once": True}, hold_in=paused_in, hold_at=3, bridge=settings
    )
    await wait_until(lambda: first.proc.check() or first.held.exists(), 120, interval=0.05, what="the held commit")
    second = bridge_process(sandbox, group_id=group, kafka={"exactly_once": True}, bridge=settings)
    await _pause_until_replaced(first, second, kafka_bootstrap, bridge_topics, group)

    refused = first.proc.events("transaction_aborted_not_a_member")
    committed_view = await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")
    for record in produced:
        assert committed_view.of(record.coord), f"{record.coord} was lost"
    repeats = await asyncio.to_thread(api_repeats, produced, sandbox, kafka_bootstrap, bridge_topics)
    print(
        f"\n[zombie paused in {paused_in}] {len(refused)} transactions refused after SIGCONT; "
        f"{duplicates(committed_view)} outcome duplicates; the API accepted {repeats} items more than once"
    )
    if paused_in == "confirm_membership":
        assert refused, "the resumed member checked its membership and aborted"
        assert_one_committed_outcome_each(produced, committed_view)
    else:
        assert duplicates(committed_view) > 0, "the documented limit: a check passed before the pause"


# -- SIGKILL with outcomes in an open transaction ---------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("successor", ["same_transactional_id", "other_transactional_id"])
async def test_sigkill_with_outcomes_in_an_open_transaction(
    successor: str,
    kafka_bootstrap: str,
    bridge_topics: BridgeTopics,
    bridge_process: BridgeProcessFactory,
    holding_bridge: Any,
    sandbox: SandboxProcess,
) -> None:
    """Killed with acknowledged outcomes in an open transaction: they never become visible; no outcome twice."""
    sandbox.control.set_faults({"latency": {"fixed": 0.05}})
    group = f"eos-open-{uuid.uuid4().hex[:10]}"
    tx_id = f"eos-test-{uuid.uuid4().hex[:10]}"
    kafka = {"exactly_once": True, "transactional_id": tx_id, "transaction_timeout": 10.0}
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 3000, users=600, seed=61))
    held = holding_bridge(sandbox, group_id=group, kafka=kafka, hold_in="send_offsets", hold_after=500)
    first = held.proc

    await wait_until(lambda: first.check() or held.held.exists(), 120, interval=0.05, what="the held transaction")
    await asyncio.sleep(0.5)  # the outcomes of the held transaction are acked before it holds; let more arrive
    first.kill()

    # The held transaction's outcomes are in the log, uncommitted: read_uncommitted sees them.
    in_log = (await read_outputs(kafka_bootstrap, bridge_topics, "read_uncommitted")).count()
    visible = (await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")).count()
    committed_before = sum((await committed_offsets(kafka_bootstrap, group)).values())
    assert committed_before == visible < len(produced), "committed outcomes match the committed offsets, mid-stream"
    assert in_log > visible, "the kill left acknowledged outcomes in an open transaction"

    other = {**kafka, "transactional_id": f"{tx_id}-successor"} if successor == "other_transactional_id" else kafka
    second = bridge_process(sandbox, group_id=group, kafka=other, bridge={"max_in_flight": 8})
    await wait_committed_to_end(kafka_bootstrap, group, bridge_topics.inputs, 180, alive=second.check)
    assert await second.terminate() == 0
    # With the same id, the successor's start aborted the open transaction; with another id the broker
    # aborts it after KAFKA_TRANSACTION_TIMEOUT (10 s here; read_committed readers wait until then).
    await wait_no_open_transactions(kafka_bootstrap, bridge_topics, 90)

    committed_view = await read_outputs(kafka_bootstrap, bridge_topics, "read_committed")
    everything = await read_outputs(kafka_bootstrap, bridge_topics, "read_uncommitted")
    repeats = await asyncio.to_thread(api_repeats, produced, sandbox, kafka_bootstrap, bridge_topics)
    print(
        f"\n[{successor}] killed with {visible} outcomes committed and {in_log - visible} in an open transaction; "
        f"in the end read_uncommitted sees {duplicates(everything)} outcome duplicates, read_committed "
        f"{duplicates(committed_view)}; the API accepted {repeats} items more than once"
    )
    assert duplicates(everything) >= in_log - visible, "the aborted outcomes were produced again, committed"
    assert duplicates(committed_view) == 0
    assert_one_committed_outcome_each(produced, committed_view)
    assert repeats > 0, "the outcomes of the aborted transaction were delivered to the API again"
