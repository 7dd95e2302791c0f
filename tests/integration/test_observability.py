"""The observability server over a real loopback socket: against a fake bridge, then scraped during a real run.

The real-run test checks the scraped numbers against what the sandbox received and what Kafka holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Set
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.app import Bridge
from bridge.dispatch import Dispatcher
from bridge.kafka import BridgeConsumer, OutputProducer
from bridge.kard.client import KardClient
from bridge.observability.health import HealthConfig, ObservabilityServer
from bridge.observability.metrics import BridgeMetrics
from bridge.outputs import OutcomePublisher
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.flow import FlowControl
from bridge.pipeline.offsets import OffsetTracker
from bridge.records import TopicPartition
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    end_offsets,
    example_messages,
    generated_messages,
    interleave,
    produce,
    wait_committed_to_end,
    wait_until,
)
from tests.unit.test_metrics import FakeBridge, FakeConsumer, FakeProducer

T0 = TopicPartition("txns", 0)
_BATCH_ENDPOINTS = {"transactions", "fraud", "eligibility", "user_attributions", "bulk_attributions"}


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class EndOffsetsConsumer(FakeConsumer):
    """A fake consumer that also answers ListOffsets-style end-offset requests."""

    def __init__(self, highwater: Mapping[TopicPartition, int | None], ends: Mapping[TopicPartition, int]) -> None:
        super().__init__(highwater)
        self.ends = dict(ends)

    async def end_offsets(self, partitions: Set[TopicPartition]) -> Mapping[TopicPartition, int]:
        return {tp: self.ends[tp] for tp in partitions}


def samples_of(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """``{(sample name, labels): value}`` from a text exposition."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_server_on_loopback_serves_metrics_and_health() -> None:
    """On free ports: /metrics as text, /readyz 503 then 200, /healthz 503 on a stale heartbeat, 404 elsewhere."""
    bridge = FakeBridge()
    bridge.tracker.assign(T0, 10)
    bridge.consumer = EndOffsetsConsumer({T0: None}, {T0: 25})
    clock, frozen_clock = Clock(), Clock()
    fast = HealthConfig(heartbeat_interval=0.05, stall_timeout=10.0, end_offsets_interval=0.05)
    frozen = HealthConfig(heartbeat_interval=1000.0, stall_timeout=2000.0)  # its heartbeat never runs here
    metrics = BridgeMetrics(bridge)
    async with (
        ObservabilityServer(bridge, metrics, port=0, config=fast, clock=clock) as server,
        ObservabilityServer(bridge, BridgeMetrics(bridge), port=0, config=frozen, clock=frozen_clock) as stale,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as http,
    ):
        assert server.port != stale.port

        response = await http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        samples = samples_of(response.text)
        assert samples[("kard_bridge_live", frozenset())] == 1
        assert samples[("kard_bridge_ready", frozenset())] == 0

        # The refresher asked the consumer for end offsets: the lag uses them although no fetch set a highwater.
        async def lag() -> float | None:
            text = (await http.get("/metrics")).text
            return samples_of(text).get(
                ("kard_bridge_consumer_lag_records", frozenset({("topic", "txns"), ("partition", "0")}))
            )

        assert await wait_until(lag, 10, interval=0.05, what="lag from refreshed end offsets") == 15

        response = await http.get("/readyz")
        assert response.status_code == 503
        assert response.headers["content-type"] == "application/json"
        assert response.json()["failing"] == ["assigned", "producer"]
        bridge.ready.set()
        bridge.producer = FakeProducer()
        assert (await http.get("/readyz")).status_code == 200

        frozen_clock.now += 2001  # no heartbeat for longer than stall_timeout
        response = await http.get(f"http://127.0.0.1:{stale.port}/healthz")
        assert response.status_code == 503
        assert response.json()["failing"] == ["event_loop"]

        clock.now += 60  # the running heartbeat sees the jump as loop lag, and keeps liveness fresh

        async def heartbeat_saw_jump() -> bool:
            samples = samples_of((await http.get("/metrics")).text)
            return samples[("kard_bridge_event_loop_stalls_total", frozenset())] == 1

        await wait_until(heartbeat_saw_jump, 10, interval=0.05, what="the heartbeat to run")
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/nope")).status_code == 404
        with pytest.raises(RuntimeError, match="already started"):
            await server.__aenter__()
    await server.aclose()  # idempotent
    assert b"kard_bridge_live" not in metrics.render()[0]  # health series left the registry


class BridgeProbe:
    """The in-process ``Bridge`` seen as a ``BridgeView`` (reads its components until it exposes them itself)."""

    def __init__(self, bridge: Bridge) -> None:
        self._bridge = bridge

    @property
    def tracker(self) -> OffsetTracker:
        return self._bridge.tracker

    @property
    def flow(self) -> FlowControl:
        return self._bridge.flow

    @property
    def batcher(self) -> Batcher:
        return self._bridge.batcher

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self._bridge._dispatcher

    @property
    def client(self) -> KardClient | None:
        return self._bridge._client

    @property
    def outputs(self) -> OutcomePublisher | None:
        return self._bridge._outputs

    @property
    def consumer(self) -> BridgeConsumer | None:
        return self._bridge._consumer

    @property
    def producer(self) -> OutputProducer | None:
        return self._bridge._producer

    @property
    def ready(self) -> asyncio.Event:
        return self._bridge.ready

    @property
    def stopping(self) -> asyncio.Event:
        return self._bridge.stopping

    @property
    def committed(self) -> dict[TopicPartition, int]:
        return self._bridge.committed

    @property
    def mapped(self) -> int:
        return self._bridge.mapped


@pytest.mark.kafka
async def test_scrape_during_a_real_run_matches_the_sandbox(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Scraped outcome, response, token and offset numbers equal what the sandbox received and Kafka holds."""
    examples, expected_failure = example_messages(bridge_topics)
    running = await bridge_factory(sandbox)
    probe = BridgeProbe(running.bridge)
    metrics = BridgeMetrics(probe)
    async with (
        ObservabilityServer(probe, metrics, port=0) as server,
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", trust_env=False) as http,
    ):
        assert (await http.get("/readyz")).status_code == 200
        produced = await produce(
            kafka_bootstrap, interleave(generated_messages(bridge_topics, 300, users=40), examples, every=4)
        )
        await wait_committed_to_end(kafka_bootstrap, running.group_id, bridge_topics.inputs, 120, alive=running.check)
        ends = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
        stats: dict[str, Any] = await asyncio.to_thread(sandbox.control.stats)

        async def scraped() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
            samples = samples_of((await http.get("/metrics")).text)
            committed = {
                (dict(k[1])["topic"], int(dict(k[1])["partition"])): v
                for k, v in samples.items()
                if k[0] == "kard_bridge_committed_offset"
            }
            return samples if committed == ends else None  # the commit loop may lag the group's offsets a tick

        samples = await wait_until(scraped, 30, what="scraped committed offsets to reach the end offsets")
        health = await http.get("/healthz")
        ready = await http.get("/readyz")

    def get(name: str, **labels: str) -> float:
        return float(samples.get((name, frozenset(labels.items())), 0.0))

    accepted = sum(v["accepted"] for k, v in stats["items"].items() if k in _BATCH_ENDPOINTS)
    assert get("kard_bridge_outcome_records_total", kind="result") == accepted > 0
    assert get("kard_bridge_outcome_records_total", kind="failure") == len(expected_failure)
    assert get("kard_bridge_records_mapped_total") == len(produced) - len(expected_failure)
    by_status: dict[str, int] = {}
    for endpoint, statuses in stats["requests"].items():
        if endpoint in _BATCH_ENDPOINTS:
            for status, n in statuses.items():
                by_status[str(status)] = by_status.get(str(status), 0) + n
    scraped_by_status = {
        dict(k[1])["status"]: int(v) for k, v in samples.items() if k[0] == "kard_bridge_api_responses_total"
    }
    assert scraped_by_status == by_status and by_status
    assert get("kard_bridge_token_refreshes_total") == stats["token_requests"]
    lags = {k: v for k, v in samples.items() if k[0] == "kard_bridge_consumer_lag_records"}
    assert len(lags) == len(ends) and set(lags.values()) == {0.0}
    assert get("kard_bridge_assigned_partitions") == len(ends)
    assert get("kard_bridge_buffer_records") == 0 and get("kard_bridge_requests_in_flight") == 0
    assert health.status_code == 200, health.text
    assert ready.status_code == 200 and orjson.loads(ready.content)["status"] == "ok"
