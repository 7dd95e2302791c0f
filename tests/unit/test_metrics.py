"""BridgeMetrics: snapshot families read from component statistics, hot-path counters and histograms, lag."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bridge import __version__
from bridge.dispatch import DispatcherStatistics
from bridge.kard.client import KardClientStatistics
from bridge.observability.metrics import METRICS, BridgeMetrics, partition_states
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.flow import FlowControl
from bridge.pipeline.offsets import OffsetTracker
from bridge.records import RecordRef, TopicPartition

T0 = TopicPartition("txns", 0)
T1 = TopicPartition("txns", 1)


class FakeDispatcher:
    """Dispatcher stand-in: answers ``statistics()`` with what the test set."""

    def __init__(self, stats: DispatcherStatistics | None = None) -> None:
        self.stats = stats or DispatcherStatistics(0, 0, 0, 0, 0, 0, False)

    def statistics(self) -> DispatcherStatistics:
        return self.stats


class FakeClient:
    """Kard client stand-in: answers ``statistics()`` with what the test set."""

    def __init__(self, stats: KardClientStatistics) -> None:
        self.stats = stats

    def statistics(self) -> KardClientStatistics:
        return self.stats


class FakeOutputs:
    """Outcome publisher stand-in: plain counters."""

    def __init__(self, results: int = 0, failures: int = 0, produce_retries: int = 0) -> None:
        self.results = results
        self.failures = failures
        self.produce_retries = produce_retries


class FakeConsumer:
    """Consumer façade stand-in: an assignment, paused partitions and highwater marks set by the test."""

    def __init__(self, highwater: Mapping[TopicPartition, int | None], paused: frozenset[TopicPartition] = frozenset()):
        self.highwaters = dict(highwater)
        self.paused_set = paused

    def assignment(self) -> frozenset[TopicPartition]:
        return frozenset(self.highwaters)

    def paused(self) -> frozenset[TopicPartition]:
        return self.paused_set

    def highwater(self, tp: TopicPartition) -> int | None:
        return self.highwaters[tp]


class FakeProducer:
    """Output producer stand-in: only whether it started."""

    def __init__(self, started: bool = True) -> None:
        self.started = started


class FakeBridge:
    """A bridge as metrics and health see it: the real sans-I/O core plus fakes for the I/O components."""

    def __init__(self) -> None:
        self.tracker = OffsetTracker()
        self.flow = FlowControl(high_records=100, low_records=50, high_bytes=10_000, low_bytes=5_000)
        self.batcher = Batcher(max_bytes=100_000, linger=0.05)
        self.dispatcher: FakeDispatcher | None = None
        self.client: FakeClient | None = None
        self.outputs: FakeOutputs | None = None
        self.consumer: FakeConsumer | None = None
        self.producer: FakeProducer | None = None
        self.ready = asyncio.Event()
        self.stopping = asyncio.Event()
        self.committed: dict[TopicPartition, int] = {}
        self.mapped = 0

    def assign(self, highwater: Mapping[TopicPartition, int | None], committed: int | None = 0) -> FakeConsumer:
        """Own the partitions (tracker and consumer) with ``committed`` as their committed offset."""
        for tp in highwater:
            self.tracker.assign(tp, committed)
        self.consumer = FakeConsumer(highwater)
        return self.consumer


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(metrics: BridgeMetrics) -> tuple[Samples, dict[str, str]]:
    """Parse the text exposition: ``{(sample name, labels): value}`` and ``{family name: type}``."""
    body, _ = metrics.render()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (KeyError when it is absent)."""
    return samples[(name, frozenset(labels.items()))]


def test_not_started_bridge_exposes_every_family_with_zeros() -> None:
    """Before run() builds the components, a scrape works and every family is declared with its type."""
    samples, types = scrape(BridgeMetrics(FakeBridge()))
    declared = {name.removesuffix("_total"): info.type for name, info in METRICS.items()}
    assert {name: t for name, t in types.items() if not name.endswith("_created")} == declared
    assert value(samples, "kard_bridge_requests_in_flight") == 0
    assert value(samples, "kard_bridge_assigned_partitions") == 0
    assert value(samples, "kard_bridge_records_mapped_total") == 0
    assert value(samples, "kard_bridge_concurrency_limit") == 0
    assert value(samples, "kard_bridge_asyncio_tasks") == 0  # no running loop here
    assert not [k for k in samples if k[0] == "kard_bridge_consumer_lag_records"]


def test_snapshot_values_come_from_component_statistics() -> None:
    """Dispatcher, client, outputs, flow and batcher snapshots appear as their gauges and counters."""
    bridge = FakeBridge()
    bridge.dispatcher = FakeDispatcher(DispatcherStatistics(3, 2, 40, 5, 1, 7, True, concurrency_limit=12))
    bridge.client = FakeClient(KardClientStatistics(2, {200: 30, 207: 4, 503: 6}, 2, 1, 0, 3, 1, 2))
    bridge.outputs = FakeOutputs(results=120, failures=9, produce_retries=4)
    bridge.flow.admit(25, 2_500)
    bridge.mapped = 129
    samples, _ = scrape(BridgeMetrics(bridge))

    assert value(samples, "kard_bridge_batches_pending") == 3
    assert value(samples, "kard_bridge_requests_in_flight") == 2
    assert value(samples, "kard_bridge_concurrency_limit") == 12
    assert value(samples, "kard_bridge_request_retries_total") == 5
    assert value(samples, "kard_bridge_batch_bisections_total") == 1
    assert value(samples, "kard_bridge_auth_failures_total") == 7
    assert value(samples, "kard_bridge_api_holding_back") == 1
    assert value(samples, "kard_bridge_api_responses_total", status="207") == 4
    assert value(samples, "kard_bridge_api_responses_total", status="503") == 6
    assert value(samples, "kard_bridge_api_transport_errors_total") == 2
    assert value(samples, "kard_bridge_token_refreshes_total") == 3
    assert value(samples, "kard_bridge_token_failures_total") == 1
    assert value(samples, "kard_bridge_unauthorized_retries_total") == 2
    assert value(samples, "kard_bridge_outcome_records_total", kind="result") == 120
    assert value(samples, "kard_bridge_outcome_records_total", kind="failure") == 9
    assert value(samples, "kard_bridge_outcome_produce_retries_total") == 4
    assert value(samples, "kard_bridge_buffer_records") == 25
    assert value(samples, "kard_bridge_buffer_bytes") == 2_500
    assert value(samples, "kard_bridge_buffer_fill_ratio") == 0.25
    assert value(samples, "kard_bridge_records_mapped_total") == 129


def test_lag_is_end_offset_minus_finished_through_offset() -> None:
    """Lag per partition: highwater or a fresher end offset, minus the tracker's commit offset; unknown ends omitted."""
    bridge = FakeBridge()
    consumer = bridge.assign({T0: 100, T1: None}, committed=40)
    consumer.paused_set = frozenset({T1})
    for offset in range(40, 50):
        bridge.tracker.track(RecordRef("txns", 0, offset))
    for offset in range(40, 45):
        bridge.tracker.finish(RecordRef("txns", 0, offset))
    bridge.committed[T0] = 45
    metrics = BridgeMetrics(bridge)

    samples, _ = scrape(metrics)
    assert value(samples, "kard_bridge_consumer_lag_records", topic="txns", partition="0") == 55
    assert ("kard_bridge_consumer_lag_records", frozenset({("topic", "txns"), ("partition", "1")})) not in samples
    assert value(samples, "kard_bridge_committed_offset", topic="txns", partition="0") == 45
    assert value(samples, "kard_bridge_assigned_partitions") == 2
    assert value(samples, "kard_bridge_paused_partitions") == 1
    assert value(samples, "kard_bridge_pending_records") == 5

    metrics.end_offsets = {T0: 130, T1: 60}
    samples, _ = scrape(metrics)
    assert value(samples, "kard_bridge_consumer_lag_records", topic="txns", partition="0") == 85
    assert value(samples, "kard_bridge_consumer_lag_records", topic="txns", partition="1") == 20
    states = {s.tp: s for s in partition_states(bridge, metrics.end_offsets)}
    assert (states[T0].pending, states[T0].paused, states[T1].paused) == (5, False, True)


def test_hot_path_counters_by_topic_route_and_reason() -> None:
    """count_consumed/forwarded/failed and observe_commit's result accumulate under their labels."""
    metrics = BridgeMetrics(FakeBridge())
    for _ in range(3):
        metrics.count_consumed("txns")
    metrics.count_consumed("elig", 5)
    metrics.count_forwarded("transactions:org-1", ["txns", "txns", "elig"])
    metrics.count_forwarded("transactions:org-1", ["txns"])
    metrics.count_failed("txns", "schema_violation")
    metrics.count_failed("txns", "rejected", 2)
    metrics.observe_commit(0.004, ok=True)
    metrics.observe_commit(0.2, ok=False)
    samples, _ = scrape(metrics)

    assert value(samples, "kard_bridge_records_consumed_total", topic="txns") == 3
    assert value(samples, "kard_bridge_records_consumed_total", topic="elig") == 5
    assert value(samples, "kard_bridge_records_forwarded_total", topic="txns", route="transactions:org-1") == 3
    assert value(samples, "kard_bridge_records_forwarded_total", topic="elig", route="transactions:org-1") == 1
    assert value(samples, "kard_bridge_records_failed_total", topic="txns", reason="schema_violation") == 1
    assert value(samples, "kard_bridge_records_failed_total", topic="txns", reason="rejected") == 2
    assert value(samples, "kard_bridge_commits_total", result="ok") == 1
    assert value(samples, "kard_bridge_commits_total", result="failed") == 1
    assert value(samples, "kard_bridge_commit_duration_seconds_count") == 2
    assert value(samples, "kard_bridge_commit_duration_seconds_bucket", le="0.005") == 1


def test_histograms_for_batches_and_requests() -> None:
    """observe_batch and observe_request fill histograms by route and by endpoint and status ('error' without one)."""
    metrics = BridgeMetrics(FakeBridge())
    metrics.observe_batch("transactions:org-1", 3, 1500)
    metrics.observe_batch("transactions:org-1", 500, 2_000_000)
    metrics.observe_request("transactions", 202, 0.03)
    metrics.observe_request("transactions", 202, 0.07)
    metrics.observe_request("transactions", None, 5.0)
    samples, _ = scrape(metrics)

    route = {"route": "transactions:org-1"}
    assert value(samples, "kard_bridge_batch_items_count", **route) == 2
    assert value(samples, "kard_bridge_batch_items_sum", **route) == 503
    assert value(samples, "kard_bridge_batch_items_bucket", le="5.0", **route) == 1
    assert value(samples, "kard_bridge_batch_bytes_sum", **route) == 2_001_500
    ok = {"endpoint": "transactions", "status": "202"}
    assert value(samples, "kard_bridge_request_duration_seconds_count", **ok) == 2
    assert value(samples, "kard_bridge_request_duration_seconds_bucket", le="0.05", **ok) == 1
    assert value(samples, "kard_bridge_request_duration_seconds_sum", **ok) == 0.1
    error = {"endpoint": "transactions", "status": "error"}
    assert value(samples, "kard_bridge_request_duration_seconds_count", **error) == 1


def test_each_instance_has_its_own_registry() -> None:
    """Two BridgeMetrics never share numbers and never register in prometheus_client's global registry."""
    first, second = BridgeMetrics(FakeBridge()), BridgeMetrics(FakeBridge())
    first.count_consumed("txns", 7)
    first.observe_request("fraud", 200, 0.1)
    samples, _ = scrape(second)
    assert not [k for k in samples if k[0] == "kard_bridge_records_consumed_total"]
    assert value(samples, "kard_bridge_build_info", version=__version__) == 1
    assert REGISTRY.get_sample_value("kard_bridge_request_duration_seconds_count") is None


def test_render_negotiates_the_exposition_format() -> None:
    """Plain scrapes get the 0.0.4 text format; an OpenMetrics Accept header gets OpenMetrics."""
    metrics = BridgeMetrics(FakeBridge())
    body, content_type = metrics.render()
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"
    assert b"# TYPE kard_bridge_buffer_fill_ratio gauge" in body
    body, content_type = metrics.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


async def test_asyncio_tasks_counts_the_running_loops_tasks() -> None:
    """Scraped on the event loop, the task gauge is len(asyncio.all_tasks()): it sees a task start and end."""
    metrics = BridgeMetrics(FakeBridge())
    before = value(scrape(metrics)[0], "kard_bridge_asyncio_tasks")
    assert before == len(asyncio.all_tasks()) >= 1
    release = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        tg.create_task(release.wait())
        await asyncio.sleep(0)
        assert value(scrape(metrics)[0], "kard_bridge_asyncio_tasks") == before + 1
        release.set()
    assert value(scrape(metrics)[0], "kard_bridge_asyncio_tasks") == before
