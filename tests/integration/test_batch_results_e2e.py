"""End to end with ``BRIDGE_RESULT_MODE=batch``: a real broker, the real sandbox, all three input topics.

Every input record is listed by exactly one batch result record or has exactly one failure record;
batch results are far fewer than records and never more than the API requests that carried them; the
group commits every input partition to its end.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

from bridge.events.outcomes import BatchResultValue, FailureHeaders
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    Coord,
    committed_offsets,
    end_offsets,
    example_messages,
    expected_items,
    generated_messages,
    interleave,
    produce,
    read_records,
    wait_committed_to_end,
)

pytestmark = pytest.mark.kafka


async def test_batch_results_list_every_delivered_record_once(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    examples, expected_failure = example_messages(bridge_topics)
    generated = generated_messages(bridge_topics, 1500, users=40, seed=5)
    running = await bridge_factory(sandbox, bridge={"result_mode": "batch", "linger": 0.2})
    produced = await produce(kafka_bootstrap, interleave(generated, examples, every=4))
    await wait_committed_to_end(kafka_bootstrap, running.group_id, bridge_topics.inputs, 120, alive=running.check)
    await running.stop()

    records = await read_records(kafka_bootstrap, bridge_topics.outputs)
    listed: Counter[Coord] = Counter()
    batches: list[BatchResultValue] = []
    for rec in records:
        if rec.topic.endswith(".results"):
            assert rec.value is not None
            value = BatchResultValue.model_validate_json(rec.value)
            batches.append(value)
            keys = {r.key for r in value.records}
            # keyed by the input key exactly when every listed record shares it
            assert rec.key == (value.records[0].key or "").encode() if len(keys) == 1 else rec.key is None
            for entry in value.records:
                assert rec.topic == bridge_topics.results(entry.topic)
                listed[(entry.topic, entry.partition, entry.offset)] += 1
    failed: Counter[Coord] = Counter()
    for rec in records:
        if rec.topic.endswith(".dlq"):
            header = FailureHeaders.from_headers(rec.headers)
            failed[(header.source_topic, header.source_partition, header.source_offset)] += 1

    mapped = expected_items(produced, running.settings)
    by_coord = {(e.topic, e.partition, e.offset): e for b in batches for e in b.records}
    for record in produced:
        if record.value in expected_failure:
            assert failed[record.coord] == 1 and listed[record.coord] == 0, record.coord
        else:
            assert listed[record.coord] == 1 and failed[record.coord] == 0, record.coord
            assert by_coord[record.coord].item_id == mapped[record.coord].item_id
    assert sum(listed.values()) + sum(failed.values()) == len(produced)

    # Not one record per input: at most one batch result per request and input topic.
    requests = [r for r in await asyncio.to_thread(sandbox.control.requests) if r["endpoint"] != "token"]
    assert len(batches) <= len(requests)
    assert len(batches) * 3 < sum(listed.values())

    ends = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
    committed = await committed_offsets(kafka_bootstrap, running.group_id)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends
