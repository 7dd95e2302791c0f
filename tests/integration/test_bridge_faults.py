"""The bridge against the sandbox's faults: per-item rejections, whole-batch 400s, poison records, 429s, an outage.

Each test checks the outcome of every input record on the output topics, what the sandbox accepted, and the
committed offsets; none passes by waiting: conditions are polled with timeouts.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections import Counter

import orjson
import pytest

from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    Message,
    Outcomes,
    Produced,
    RunningBridge,
    committed_offsets,
    example_lines,
    expected_items,
    generated_messages,
    interleave,
    invalid_reasons,
    item_wire_key,
    produce,
    read_outcomes,
    received_key,
    wait_committed_to_end,
    wait_until,
)

pytestmark = pytest.mark.kafka

SANDBOX_REJECT_DETAIL = "rejected by the sandbox (reject_items fault)"


async def _drained_outcomes(
    bootstrap: str, running: RunningBridge, topics: BridgeTopics, produced: list[Produced], timeout: float = 120
) -> Outcomes:
    """Wait until every input is committed, stop the bridge, and return the outcomes (exactly one per input)."""
    ends = await wait_committed_to_end(bootstrap, running.group_id, topics.inputs, timeout, alive=running.check)
    await running.stop()
    committed = await committed_offsets(bootstrap, running.group_id)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends
    outcomes = await read_outcomes(bootstrap, topics)
    assert outcomes.count() == len(produced)
    for record in produced:
        outcomes.single(record.coord)
    return outcomes


def _assert_failure_keeps_record(outcomes: Outcomes, record: Produced) -> None:
    outcome = outcomes.single(record.coord)
    assert outcome.failure is not None
    assert outcome.record.value == record.value and outcome.record.key == record.key
    assert [h for h in outcome.record.headers if not h[0].startswith("kard-bridge.")] == list(record.headers)


async def _assert_received_exactly(sandbox: SandboxProcess, items: Counter[bytes]) -> None:
    received = await asyncio.to_thread(sandbox.control.received)
    assert Counter(received_key(entry) for entry in received) == items


async def test_207_partial_success_dead_letters_only_the_rejected_items(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Items a 207 rejects become `rejected` failures with status and pointer; their batch neighbours get results."""
    prefix = "p207"
    rejected_prefixes = (f"{prefix}-00000002", f"{prefix}-00000011")  # event ids of sequence 20-29 and 110-119
    sandbox.control.set_faults(
        {
            "rules": [
                {"endpoint": "transactions", "reject_items": {"prefix": p, "fields": ["id"]}} for p in rejected_prefixes
            ]
        }
    )
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 400, users=500, prefix=prefix))
    running = await bridge_factory(sandbox, bridge={"linger": 0.3})
    outcomes = await _drained_outcomes(kafka_bootstrap, running, bridge_topics, produced)

    mapped = expected_items(produced, running.settings)
    rejected = {
        coord
        for coord, item in mapped.items()
        if item.route.endpoint.value == "transactions" and item.item_id.startswith(rejected_prefixes)
    }
    assert len(rejected) >= 10
    for record in produced:
        outcome = outcomes.single(record.coord)
        if record.coord in rejected:
            _assert_failure_keeps_record(outcomes, record)
            failure = outcome.failure
            assert failure is not None
            assert (failure.reason, failure.reason_class.value) == ("rejected", "rejected")
            assert failure.http_status == 400 and failure.api_detail == SANDBOX_REJECT_DETAIL
            assert failure.api_pointer is not None and re.fullmatch(r"/data/\d+/id", failure.api_pointer)
            assert failure.item_id == mapped[record.coord].item_id and failure.attempts >= 1
        else:
            assert outcome.result is not None, f"{record.coord}: {outcome.failure}"
    partial = [o.result for o in outcomes.results if o.result is not None and o.result.response.partial]
    assert partial and all(r.http_status == 207 for r in partial), "the rejections came in 207 responses"
    await _assert_received_exactly(
        sandbox, Counter(item_wire_key(item) for coord, item in mapped.items() if coord not in rejected)
    )


async def test_whole_batch_400_fails_only_the_named_item(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Eligibility has no 207: a 400 naming one item dead-letters that item and re-sends the rest of its batch."""
    sandbox.control.set_faults(
        {"endpoint": "eligibility", "reject_items": {"prefix": "seg-13", "fields": ["segmentId"]}}
    )
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 1200, users=2000, seed=3))
    running = await bridge_factory(sandbox, bridge={"linger": 0.3})
    outcomes = await _drained_outcomes(kafka_bootstrap, running, bridge_topics, produced)

    mapped = expected_items(produced, running.settings)
    bad = {
        coord
        for coord, item in mapped.items()
        if item.route.endpoint.value == "eligibility" and item.item["attributes"]["segmentId"] == "seg-13"
    }
    assert bad, "the generated data has items for the sandbox to reject"
    for record in produced:
        outcome = outcomes.single(record.coord)
        if record.coord in bad:
            _assert_failure_keeps_record(outcomes, record)
            assert outcome.failure is not None
            assert outcome.failure.reason == "rejected" and outcome.failure.http_status == 400
            assert outcome.failure.api_pointer is not None
            assert re.fullmatch(r"/data/\d+/attributes/segmentId", outcome.failure.api_pointer)
        else:
            assert outcome.result is not None, f"{record.coord}: {outcome.failure}"
    refused = [r for r in sandbox.control.requests("eligibility") if r["status"] == 400]
    assert any(r["items"] > 1 for r in refused), "a multi-item batch was refused as a whole"
    await _assert_received_exactly(
        sandbox, Counter(item_wire_key(item) for coord, item in mapped.items() if coord not in bad)
    )


async def test_unattributed_400_is_bisected_and_nothing_is_dead_lettered(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """A whole-batch 400 that names no item is bisected (halves re-sent), not dead-lettered wholesale."""
    sandbox.control.set_faults(
        {"endpoint": "eligibility", "error_rates": {"400": 1.0}, "error_body": "gateway", "times": 1}
    )
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 1200, users=1_000_000, seed=4))
    running = await bridge_factory(sandbox, bridge={"linger": 0.5})
    outcomes = await _drained_outcomes(kafka_bootstrap, running, bridge_topics, produced)

    assert not outcomes.failures
    mapped = expected_items(produced, running.settings)
    eligibility = sum(item.route.endpoint.value == "eligibility" for item in mapped.values())
    # The backlog's eligibility items (distinct users: one wave) were one batch, refused whole (the 400 answers
    # before reading the body, so the log shows no item count), then sent again as two halves, both accepted.
    requests = sandbox.control.requests("eligibility")
    assert [(r["status"], r["items"]) for r in requests][1:] == [
        (202, eligibility // 2),
        (202, eligibility - eligibility // 2),
    ]
    assert requests[0]["status"] == 400
    mapped = expected_items(produced, running.settings)
    await _assert_received_exactly(sandbox, Counter(item_wire_key(item) for item in mapped.values()))


async def test_poison_records_fail_alone_and_their_neighbours_are_delivered(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Invalid records interleaved with valid ones of the same key fail with their reason; the neighbours go through."""
    default = "kard.card-transactions"
    key = b"user-000000"  # the one user of the generated events
    valid = [
        m._replace(key=key)
        for m in generated_messages(bridge_topics, 300, users=1, seed=9)
        if m.topic == bridge_topics.transactions
    ]
    invalid_lines = example_lines(default, "invalid")
    poison = [Message(bridge_topics.transactions, key, line) for line in invalid_lines]
    running = await bridge_factory(sandbox)
    produced = await produce(kafka_bootstrap, interleave(valid, poison, every=3))
    outcomes = await _drained_outcomes(kafka_bootstrap, running, bridge_topics, produced)

    expected = dict(zip(invalid_lines, invalid_reasons(default), strict=True))
    assert len({r.partition for r in produced}) == 1, "one key: every record shares one partition"
    by_offset = {r.offset: r for r in produced}
    for record in produced:
        outcome = outcomes.single(record.coord)
        if record.value not in expected:
            assert outcome.result is not None, f"{record.coord}: {outcome.failure}"
            continue
        _assert_failure_keeps_record(outcomes, record)
        assert outcome.failure is not None
        reason_class, reason, pointer = expected[record.value]
        assert (outcome.failure.reason_class.value, outcome.failure.reason, outcome.failure.pointer) == (
            reason_class,
            reason,
            pointer,
        )
        for neighbour in (by_offset.get(record.offset - 1), by_offset.get(record.offset + 1)):
            if neighbour is not None and neighbour.value not in expected:
                assert outcomes.single(neighbour.coord).delivered
    assert len(outcomes.failures) == len(poison)


async def test_429_storm_retries_no_earlier_than_retry_after(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Three 429s with Retry-After: 2 in a row: each retry arrives at least 2 s after the 429; nothing dead-lettered."""
    sandbox.control.set_faults(
        {"endpoint": "transactions", "error_rates": {"429": 1.0}, "retry_after": {"seconds": 2}, "times": 3}
    )
    approved: dict[bytes | None, Message] = {}  # one request's worth: APPROVED transactions of distinct users
    for m in generated_messages(bridge_topics, 400, users=1_000_000, seed=13):
        if orjson.loads(m.value).get("status") == "APPROVED" and len(approved) < 200:
            approved.setdefault(m.key, m)
    produced = await produce(kafka_bootstrap, approved.values())
    running = await bridge_factory(sandbox, bridge={"linger": 2.0, "max_in_flight": 1})
    outcomes = await _drained_outcomes(kafka_bootstrap, running, bridge_topics, produced)

    assert not outcomes.failures
    requests = sandbox.control.requests("transactions")
    assert [r["status"] for r in requests][:3] == [429, 429, 429]
    received = await asyncio.to_thread(sandbox.control.received, "transactions")
    assert len({entry["seq"] for entry in received}) == 1, "all items went in one batch (one chain of retries)"
    assert len(requests) == 4 and requests[3]["status"] in (200, 201, 202)
    for refused, retry in itertools.pairwise(requests):
        assert retry["time"] - refused["time"] >= 2.0 - 0.01, f"retry {retry['seq']} came too early"
    assert len(received) == len(produced)


@pytest.mark.slow
async def test_60s_outage_pauses_the_partitions_and_delivers_everything_after(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """During a 60 s outage the bridge pauses its partitions instead of dead-lettering; afterwards all is delivered."""
    running = await bridge_factory(sandbox, bridge={"buffer_max_records": 200, "max_in_flight": 4})
    sandbox.control.set_faults({"outage": {"duration": 60.0}})
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 5000, users=3000, seed=17))

    await wait_until(lambda: running.bridge.statistics().paused, 30, what="the partitions to be paused")
    held_back = running.bridge.statistics().consumed
    assert held_back < len(produced)

    def outage_active() -> bool:
        return bool(sandbox.control.faults()["state"][0]["outage_active"])

    polls = 0
    while outage_active():  # watch the whole outage: paused, not consuming, nothing accepted
        stats = running.bridge.statistics()
        assert stats.paused and stats.consumed == held_back
        assert running.bridge.failures == 0
        polls += 1
        await asyncio.sleep(1.0)
    assert polls >= 30, "the outage was observed while it lasted"
    assert sandbox.control.stats()["faults_injected"].get("outage", 0) >= 1

    await wait_until(lambda: not running.bridge.statistics().paused, 60, what="the partitions to be resumed")
    outcomes = await _drained_outcomes(kafka_bootstrap, running, bridge_topics, produced, timeout=180)
    assert not outcomes.failures
    mapped = expected_items(produced, running.settings)
    await _assert_received_exactly(sandbox, Counter(item_wire_key(item) for item in mapped.values()))
