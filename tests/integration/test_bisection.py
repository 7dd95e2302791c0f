"""Bisection: an all-or-nothing 400 that does not say which item is bad makes the bridge split the batch.

The sandbox's ``reject_items`` fault with ``"attribute": false`` refuses every request that holds the poisoned
item with one 400 naming no item (no ``id``, no ``source.pointer``). The bridge cannot dead-letter the whole
batch (its other records are fine) and cannot name the culprit, so it halves the batch until the bad item
travels alone (``bridge.dispatch``). The checks cover every input record's outcome, what the sandbox
accepted, the shape of the bisection in the sandbox's request log, and the committed offsets.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections import Counter

import orjson
import pytest

from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    committed_offsets,
    expected_items,
    generated_messages,
    item_wire_key,
    produce,
    read_outcomes,
    received_key,
    wait_committed_to_end,
)

pytestmark = pytest.mark.kafka

REJECT_DETAIL = "rejected by the sandbox (reject_items fault)"


async def test_one_unattributed_bad_item_is_isolated_by_bisection(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """One poisoned transaction in a backlog of many: only its record is dead-lettered (`rejected`, HTTP 400,
    no API pointer), every other record is delivered once with a result, and the group commits to the end."""
    messages = generated_messages(bridge_topics, 400, users=1_000_000, seed=11, prefix="bis")
    events = [orjson.loads(m.value) for m in messages]
    transactions = [e["event_id"] for e in events if e["event_type"] == "transaction"]
    bad_id = transactions[len(transactions) // 2]  # a transactions item id is its event id
    sandbox.control.set_faults(
        {"endpoint": "transactions", "reject_items": {"prefix": bad_id, "fields": ["id"], "attribute": False}}
    )
    produced = await produce(kafka_bootstrap, messages)  # a backlog: the bridge starts with full batches
    running = await bridge_factory(sandbox, bridge={"linger": 0.5})

    ends = await wait_committed_to_end(
        kafka_bootstrap, running.group_id, bridge_topics.inputs, 120, alive=running.check
    )
    dispatcher = running.bridge.dispatcher
    assert dispatcher is not None
    bisections = dispatcher.statistics().bisections
    await running.stop()
    committed = await committed_offsets(kafka_bootstrap, running.group_id)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends, "every partition committed to its end"

    mapped = expected_items(produced, running.settings)
    assert len(mapped) == len(produced), "the generated events are all valid"
    bad = [c for c, item in mapped.items() if item.route.endpoint.value == "transactions" and item.item_id == bad_id]
    assert len(bad) == 1, "exactly one input record carries the poisoned item"
    (bad_coord,) = bad

    # Exactly one outcome per input: the bad record's failure, a result for every other record.
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert outcomes.count() == len(produced)
    assert len(outcomes.failures) == 1
    for record in produced:
        outcome = outcomes.single(record.coord)
        if record.coord != bad_coord:
            assert outcome.result is not None, f"{record.coord}: {outcome.failure}"
            assert outcome.result.item_id == mapped[record.coord].item_id
            continue
        failure = outcome.failure
        assert failure is not None
        assert (failure.reason, failure.reason_class.value) == ("rejected", "rejected")
        assert failure.http_status == 400 and failure.api_detail == REJECT_DETAIL
        assert failure.api_pointer is None, "the sandbox named no item: the bridge found it by bisection"
        assert failure.item_id == bad_id
        assert outcome.record.key == record.key and outcome.record.value == record.value

    # The sandbox accepted every other item exactly once, and never the bad one.
    received = await asyncio.to_thread(sandbox.control.received)
    assert Counter(received_key(entry) for entry in received) == Counter(
        item_wire_key(item) for coord, item in mapped.items() if coord != bad_coord
    )

    # The refused requests are one bisection chain: the whole batch, then ever smaller halves, then the item.
    refused = [r["items"] for r in sandbox.control.requests("transactions") if r["status"] == 400]
    assert refused[0] >= 8, f"the bad item travelled in a batch of many: {refused}"
    assert refused[-1] == 1, f"the bad item ended alone: {refused}"
    for larger, smaller in itertools.pairwise(refused):
        assert smaller <= (larger + 1) // 2, f"each refusal at least halves the batch: {refused}"
    assert len(refused) <= math.ceil(math.log2(refused[0])) + 1
    assert bisections == len(refused) - 1, "one bisection per refused multi-item request"
