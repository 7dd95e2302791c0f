"""End to end: the bridge between a real broker and the real sandbox, on all three input topics.

What the sandbox received is matched item by item against what the mapping makes of every produced
record; what the output topics hold is matched record by record against the inputs (source topic,
partition, offset); the group's committed offsets are compared with the inputs' end offsets.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import orjson
import pytest

from bridge.routes import ENDPOINT_LIMITS, Endpoint, MappedItem, Route
from bridge.sandbox.process import SandboxProcess
from tests.contract.test_sdk_accepts_mapped_items import assert_sdk_accepts
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    Coord,
    Produced,
    RunningBridge,
    committed_offsets,
    end_offsets,
    example_messages,
    expected_items,
    generated_messages,
    interleave,
    item_wire_key,
    produce,
    read_outcomes,
    received_key,
    wait_committed_to_end,
)

pytestmark = pytest.mark.kafka


async def _wait_drained(bootstrap: str, running: RunningBridge, topics: BridgeTopics, timeout: float) -> None:
    """Wait until the bridge committed every input partition to its end, then stop (drain) it."""
    await wait_committed_to_end(bootstrap, running.group_id, topics.inputs, timeout, alive=running.check)
    await running.stop()


def _sdk_check(entry: dict[str, Any]) -> None:
    """The official SDK's request model for the entry's endpoint reads the received item and writes it back."""
    item = entry["item"]
    assert_sdk_accepts(MappedItem(Route(Endpoint(entry["endpoint"])), item, "", "", orjson.dumps(item)))


async def test_all_three_topics_end_to_end(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Valid events reach the sandbox once as the SDK expects; every record has one outcome; offsets reach the end."""
    examples, expected_failure = example_messages(bridge_topics)
    generated = generated_messages(bridge_topics, 400, users=60)
    running = await bridge_factory(sandbox)
    produced = await produce(kafka_bootstrap, interleave(generated, examples, every=4))
    assert len(produced) == len(generated) + len(examples)

    await _wait_drained(kafka_bootstrap, running, bridge_topics, timeout=120)

    # Every input record has exactly one outcome; poison lines fail with their recorded reason, byte for byte.
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert outcomes.count() == len(produced)
    mapped = expected_items(produced, running.settings)
    for record in produced:
        outcome = outcomes.single(record.coord)
        if record.value in expected_failure:
            assert outcome.failure is not None, f"{record.coord}: a poison record was delivered"
            reason_class, reason, pointer = expected_failure[record.value]
            assert (outcome.failure.reason_class.value, outcome.failure.reason) == (reason_class, reason)
            assert outcome.failure.pointer == pointer
            assert outcome.failure.message
            assert outcome.record.topic == bridge_topics.dlq(record.topic)
            assert outcome.record.value == record.value and outcome.record.key == record.key
            kept = [h for h in outcome.record.headers if not h[0].startswith("kard-bridge.")]
            assert kept == list(record.headers)
            assert outcome.failure.attempts == 0
        else:
            assert outcome.result is not None, f"{record.coord}: {outcome.failure}"
            item = mapped[record.coord]
            assert outcome.record.topic == bridge_topics.results(record.topic)
            assert outcome.record.key == record.key
            assert outcome.result.item_id == item.item_id
            assert outcome.result.event_id == (item.event_id or None)
            assert outcome.result.route.endpoint is item.route.endpoint
            assert 200 <= outcome.result.http_status < 300
    assert len(outcomes.failures) == len(expected_failure)

    # The sandbox received exactly the mapped items, each once, and the SDK accepts every one.
    received = await asyncio.to_thread(sandbox.control.received)
    want = Counter(item_wire_key(item) for item in mapped.values())
    assert Counter(received_key(entry) for entry in received) == want
    duplicates = sandbox.control.duplicates()  # items with ids; id-less ones are covered by the Counter above
    assert not duplicates.get("transactions") and not duplicates.get("fraud")
    endpoints = {entry["endpoint"] for entry in received}
    assert endpoints >= {"transactions", "fraud", "eligibility", "user_attributions"}
    for entry in received:
        _sdk_check(entry)

    # After the drain the group committed every input partition up to its end.
    ends = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
    committed = await committed_offsets(kafka_bootstrap, running.group_id)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends
    stats = running.bridge.statistics()
    assert stats.consumed == len(produced) and stats.poison == len(expected_failure)


async def test_batches_never_exceed_the_endpoint_limits(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """With a large backlog and batches configured above the API's limits, no request exceeds its endpoint's limit."""
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 4000, users=100_000, seed=11))
    running = await bridge_factory(
        sandbox, bridge={"batch_max_items": 10_000, "linger": 0.5, "attribution_mode": "bulk"}
    )
    await _wait_drained(kafka_bootstrap, running, bridge_topics, timeout=180)

    requests = await asyncio.to_thread(sandbox.control.requests)
    largest: dict[str, int] = {}
    for request in requests:
        if request["endpoint"] != "token":
            largest[request["endpoint"]] = max(largest.get(request["endpoint"], 0), request["items"])
    for name, items in largest.items():
        assert items <= ENDPOINT_LIMITS[Endpoint(name)], f"{name}: a request carried {items} items"
    # Not vacuous: the backlog did fill batches up to (near) the limits.
    assert largest["transactions"] > ENDPOINT_LIMITS[Endpoint.TRANSACTIONS] // 2
    assert largest["bulk_attributions"] > ENDPOINT_LIMITS[Endpoint.BULK_ATTRIBUTIONS] // 2
    assert all(request["status"] in (200, 201, 202) for request in requests if request["endpoint"] != "token")

    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert not outcomes.failures
    assert len(outcomes.results) == len(produced)
    assert not any(sandbox.control.duplicates().values())


def _transaction_pairs(produced: list[Produced]) -> list[tuple[str, str]]:
    """(APPROVED event id, SETTLED event id) of every transaction that has both."""
    approved: dict[str, str] = {}
    pairs = []
    for record in produced:
        event = orjson.loads(record.value)
        if event.get("event_type") != "transaction":
            continue
        if event["status"] == "APPROVED":
            approved[event["transaction_id"]] = event["event_id"]
        elif event["status"] == "SETTLED" and event["transaction_id"] in approved:
            pairs.append((approved[event["transaction_id"]], event["event_id"]))
    return pairs


async def test_per_key_order_holds_under_concurrency(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """With 8 requests in flight and jittery latency, each key's items arrive in input order (APPROVED, SETTLED)."""
    sandbox.control.set_faults({"seed": 5, "latency": {"dist": "uniform", "low": 0.0, "high": 0.06}})
    running = await bridge_factory(sandbox, bridge={"max_in_flight": 8, "linger": 0.005})
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 2000, users=40, seed=23))
    await _wait_drained(kafka_bootstrap, running, bridge_topics, timeout=240)

    stats = sandbox.control.stats()
    assert max(stats["max_in_flight_by_endpoint"].values()) > 1, "the test needs requests to overlap"

    received = await asyncio.to_thread(sandbox.control.received)
    arrival: dict[bytes, tuple[int, int]] = {}
    for entry in received:
        key = received_key(entry)
        assert key not in arrival, "an item arrived twice"
        arrival[key] = (entry["seq"], entry["index"])
    mapped = expected_items(produced, running.settings)
    assert len(arrival) == len(mapped) == len(produced)

    # Transactions: each SETTLED event's request came after its APPROVED event's request.
    by_id = {entry["key"]: entry["seq"] for entry in received if entry["endpoint"] == "transactions"}
    pairs = _transaction_pairs(produced)
    assert len(pairs) > 100
    for approved, settled in pairs:
        assert by_id[approved] < by_id[settled], f"{settled} overtook {approved}"

    # Every key of every input topic: arrival order (request, position) equals input order (offset).
    per_key: dict[tuple[str, bytes | None], list[tuple[int, tuple[int, int], str]]] = {}
    for record in produced:
        coord: Coord = record.coord
        item = mapped[coord]
        per_key.setdefault((record.topic, record.key), []).append(
            (coord[2], arrival[item_wire_key(item)], item.route.endpoint.value)
        )
    for (topic, user), seen in per_key.items():
        seen.sort()
        order = [position for _, position, _ in seen]
        assert order == sorted(order), f"{topic} key {user!r}: items arrived out of input order: {seen}"
