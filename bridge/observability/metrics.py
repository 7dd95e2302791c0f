"""Prometheus metrics for one bridge instance: snapshots read at scrape time, plus a few hot-path hooks.

Why two halves: most numbers already exist inside the components (each has a cheap ``statistics()``
snapshot, STYLE.md §9), so a custom collector reads them only when Prometheus scrapes, at no cost on the
record path. What no component keeps (record counts per topic/route/reason, batch size, request and
commit latency distributions) goes through the ``count_*``/``observe_*`` hooks of :class:`BridgeMetrics`:
plain dict increments per record, one cached histogram child per batch, request or commit.

Each :class:`BridgeMetrics` owns its own ``CollectorRegistry`` (never the global one), so several bridges
can share a process. Collection runs on the event loop's thread (the server does that), the thread that
mutates the hot-path dicts, so they need no lock. The collector reads the bridge through the
:class:`BridgeView` protocol (unit tests use small fakes). Names follow ``kard_bridge_<noun>_<unit>``
(``_total`` for counters); :data:`METRICS` lists every family with its help text and labels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from typing import NamedTuple, Protocol, TypeVar, runtime_checkable

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge import __version__
from bridge.dispatch import DispatcherStatistics
from bridge.kard.client import KardClientStatistics
from bridge.pipeline.batcher import BatcherStatistics
from bridge.pipeline.flow import FlowStatistics
from bridge.pipeline.offsets import OffsetTrackerStatistics
from bridge.records import TopicPartition

__all__ = [
    "METRICS",
    "BridgeMetrics",
    "BridgeView",
    "ConsumerView",
    "EndOffsetsSource",
    "Flag",
    "MetricInfo",
    "OutputsView",
    "PartitionState",
    "ProducerView",
    "StatisticsSource",
    "TrackerView",
    "partition_states",
]

_T_co = TypeVar("_T_co", covariant=True)

_BATCH_ITEMS_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500)
_BATCH_BYTES_BUCKETS = tuple(float(2**n) for n in range(10, 25, 2))  # 1 KiB ... 16 MiB
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class StatisticsSource(Protocol[_T_co]):
    """A component with a cheap ``statistics()`` snapshot (flow, batcher, dispatcher, Kard client)."""

    def statistics(self) -> _T_co: ...


class TrackerView(Protocol):
    """The offset tracker's read side."""

    def statistics(self) -> OffsetTrackerStatistics: ...

    def commit_offset(self, tp: TopicPartition) -> int | None: ...

    def pending(self, tp: TopicPartition) -> int: ...


class OutputsView(Protocol):
    """The outcome publisher's counters."""

    @property
    def results(self) -> int: ...

    @property
    def failures(self) -> int: ...

    @property
    def produce_retries(self) -> int: ...


class ConsumerView(Protocol):
    """The consumer façade's synchronous read side."""

    def assignment(self) -> Set[TopicPartition]: ...

    def paused(self) -> Set[TopicPartition]: ...

    def highwater(self, tp: TopicPartition) -> int | None: ...


@runtime_checkable
class EndOffsetsSource(Protocol):
    """Optional: a consumer that can ask the brokers for fresh end offsets (a ListOffsets request).

    ``highwater`` only moves with fetch responses, so it freezes exactly when the fetcher is stuck; the
    health server refreshes end offsets through this when the consumer offers it. It must not raise
    (return ``{}`` when the brokers cannot answer): foreign errors are translated in ``bridge/kafka``.
    """

    async def end_offsets(self, partitions: Set[TopicPartition]) -> Mapping[TopicPartition, int]: ...


class ProducerView(Protocol):
    """The output producer's state."""

    @property
    def started(self) -> bool: ...


class Flag(Protocol):
    """An ``asyncio.Event`` seen read-only."""

    def is_set(self) -> bool: ...


class BridgeView(Protocol):
    """Everything metrics and health read from a bridge. Components are ``None`` until ``run()`` builds them."""

    @property
    def tracker(self) -> TrackerView: ...

    @property
    def flow(self) -> StatisticsSource[FlowStatistics]: ...

    @property
    def batcher(self) -> StatisticsSource[BatcherStatistics]: ...

    @property
    def dispatcher(self) -> StatisticsSource[DispatcherStatistics] | None: ...

    @property
    def client(self) -> StatisticsSource[KardClientStatistics] | None: ...

    @property
    def outputs(self) -> OutputsView | None: ...

    @property
    def consumer(self) -> ConsumerView | None: ...

    @property
    def producer(self) -> ProducerView | None: ...

    @property
    def ready(self) -> Flag: ...

    @property
    def stopping(self) -> Flag: ...

    @property
    def committed(self) -> Mapping[TopicPartition, int]: ...

    @property
    def mapped(self) -> int: ...


class PartitionState(NamedTuple):
    """One assigned partition as metrics and the watchdog see it.

    ``end`` is the larger of the fetch highwater and a refreshed end offset; ``position`` the tracker's
    commit offset (everything below it is finished); ``lag`` is ``end - position`` (None when either is
    unknown); ``pending`` counts its consumed, unfinished records.
    """

    tp: TopicPartition
    end: int | None
    position: int | None
    lag: int | None
    pending: int
    paused: bool


def partition_states(view: BridgeView, end_offsets: Mapping[TopicPartition, int]) -> list[PartitionState]:
    """The assigned partitions with their lag; empty before the consumer exists. O(partitions)."""
    consumer = view.consumer
    if consumer is None:
        return []
    paused, tracker, states = consumer.paused(), view.tracker, []
    for tp in sorted(consumer.assignment(), key=lambda p: (p.topic, p.partition)):
        high = consumer.highwater(tp)
        fresh = end_offsets.get(tp)
        end = high if fresh is None else fresh if high is None else max(high, fresh)
        position = tracker.commit_offset(tp)
        lag = None if end is None or position is None else max(0, end - position)
        states.append(PartitionState(tp, end, position, lag, tracker.pending(tp), tp in paused))
    return states


class BridgeMetrics:
    """One bridge's registry: a snapshot collector over ``view`` plus the hot-path hooks.

    Args:
        view: the bridge (read at scrape time only).
        registry: where to register; a fresh ``CollectorRegistry`` by default (never the global one).
    """

    def __init__(self, view: BridgeView, *, registry: CollectorRegistry | None = None) -> None:
        self.view = view
        self.registry = registry if registry is not None else CollectorRegistry()
        #: End offsets from an independent ListOffsets request (kept fresh by the health server).
        self.end_offsets: dict[TopicPartition, int] = {}
        self._consumed: dict[str, int] = {}
        self._forwarded: dict[tuple[str, str], int] = {}
        self._failed: dict[tuple[str, str], int] = {}
        self._commits: dict[str, int] = {}
        self._batch_items = self._histogram("kard_bridge_batch_items", _BATCH_ITEMS_BUCKETS)
        self._batch_bytes = self._histogram("kard_bridge_batch_bytes", _BATCH_BYTES_BUCKETS)
        self._request = self._histogram("kard_bridge_request_duration_seconds", _REQUEST_BUCKETS)
        self._commit = self._histogram("kard_bridge_commit_duration_seconds", _COMMIT_BUCKETS)
        self._batch_children: dict[str, tuple[Histogram, Histogram]] = {}
        self._request_children: dict[tuple[str, int | None], Histogram] = {}
        self.registry.register(_SnapshotCollector(self))

    # -- hot path: each is a dict update or one cached histogram observation ---------------------------

    def count_consumed(self, topic: str, n: int = 1) -> None:
        """Records handed over by the consumer (called per record or per fetch)."""
        self._consumed[topic] = self._consumed.get(topic, 0) + n

    def count_forwarded(self, route: str, topics: Iterable[str]) -> None:
        """Records the API accepted on ``route`` (``str(Route)``), one topic per record."""
        counts = self._forwarded
        for topic in topics:
            key = (topic, route)
            counts[key] = counts.get(key, 0) + 1

    def count_failed(self, topic: str, reason: str, n: int = 1) -> None:
        """Records that got a failure (dead-letter) record, by failure reason."""
        key = (topic, reason)
        self._failed[key] = self._failed.get(key, 0) + n

    def observe_batch(self, route: str, items: int, size: int) -> None:
        """A closed batch handed to the dispatcher: its item count and body bytes."""
        pair = self._batch_children.get(route)
        if pair is None:
            pair = self._batch_children[route] = (self._batch_items.labels(route), self._batch_bytes.labels(route))
        pair[0].observe(items)
        pair[1].observe(size)

    def observe_request(self, endpoint: str, status: int | None, seconds: float) -> None:
        """One Kard API request: ``status`` None means no HTTP answer (transport error, timeout)."""
        key = (endpoint, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self._request.labels(endpoint, str(status or "error"))
        child.observe(seconds)

    def observe_commit(self, seconds: float, *, ok: bool) -> None:
        """One offset commit attempt and whether Kafka accepted it."""
        self._commit.observe(seconds)
        result = "ok" if ok else "failed"
        self._commits[result] = self._commits.get(result, 0) + 1

    def _histogram(self, name: str, buckets: Sequence[float]) -> Histogram:
        info = METRICS[name]
        return Histogram(name, info.help, info.labels, registry=self.registry, buckets=buckets)

    # -- exposition ------------------------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition body and its content type, negotiated from an ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class MetricInfo(NamedTuple):
    """One metric family: Prometheus type, help text, label names (the README's metrics list)."""

    type: str
    help: str
    labels: tuple[str, ...] = ()


_TP = ("topic", "partition")

#: Families read from snapshots at scrape time, in exposition order.
_SNAPSHOT_METRICS: dict[str, MetricInfo] = {
    "kard_bridge_build_info": MetricInfo("gauge", "Always 1; the bridge version is a label.", ("version",)),
    "kard_bridge_records_consumed_total": MetricInfo("counter", "Records consumed, by topic.", ("topic",)),
    "kard_bridge_records_mapped_total": MetricInfo("counter", "Records mapped to a Kard item."),
    "kard_bridge_records_forwarded_total": MetricInfo(
        "counter", "Records accepted by the Kard API, by topic and route.", ("topic", "route")
    ),
    "kard_bridge_records_failed_total": MetricInfo(
        "counter", "Records dead-lettered, by topic and failure reason.", ("topic", "reason")
    ),
    "kard_bridge_commits_total": MetricInfo("counter", "Offset commit attempts, by result (ok, failed).", ("result",)),
    "kard_bridge_buffer_records": MetricInfo("gauge", "Consumed records whose outcome is not acked yet."),
    "kard_bridge_buffer_bytes": MetricInfo("gauge", "Value bytes of the buffered records."),
    "kard_bridge_buffer_fill_ratio": MetricInfo("gauge", "Buffer fill against the pause watermark (1 = pausing)."),
    "kard_bridge_open_batches": MetricInfo("gauge", "Batches open in the batcher (lingering)."),
    "kard_bridge_batches_total": MetricInfo("counter", "Batches closed and handed to the dispatcher."),
    "kard_bridge_batches_pending": MetricInfo("gauge", "Batches handed to the dispatcher and not finished."),
    "kard_bridge_requests_in_flight": MetricInfo("gauge", "Kard API requests on the wire."),
    "kard_bridge_concurrency_limit": MetricInfo(
        "gauge", "Kard API requests allowed on the wire now (max_in_flight, or the adaptive limit)."
    ),
    "kard_bridge_request_retries_total": MetricInfo("counter", "Batch re-sends after a failed or partial request."),
    "kard_bridge_batch_bisections_total": MetricInfo("counter", "Batches split in two to isolate a bad item."),
    "kard_bridge_auth_failures_total": MetricInfo("counter", "Requests refused because of credentials."),
    "kard_bridge_api_holding_back": MetricInfo("gauge", "1 while the Kard API fails and batches wait to retry."),
    "kard_bridge_api_responses_total": MetricInfo("counter", "Kard API responses, by HTTP status.", ("status",)),
    "kard_bridge_api_transport_errors_total": MetricInfo("counter", "Kard API requests with no HTTP answer."),
    "kard_bridge_api_deadline_expirations_total": MetricInfo("counter", "Kard API requests cut by the deadline."),
    "kard_bridge_token_refreshes_total": MetricInfo("counter", "OAuth access tokens fetched."),
    "kard_bridge_token_failures_total": MetricInfo("counter", "OAuth token requests refused or failed."),
    "kard_bridge_unauthorized_retries_total": MetricInfo("counter", "Requests retried after a 401."),
    "kard_bridge_outcome_records_total": MetricInfo(
        "counter", "Outcome records produced, by kind (result, failure).", ("kind",)
    ),
    "kard_bridge_outcome_produce_retries_total": MetricInfo("counter", "Outcome records produced again."),
    "kard_bridge_pending_records": MetricInfo("gauge", "Tracked records awaiting their outcome."),
    "kard_bridge_assigned_partitions": MetricInfo("gauge", "Partitions owned by this instance."),
    "kard_bridge_paused_partitions": MetricInfo("gauge", "Owned partitions paused by backpressure."),
    "kard_bridge_consumer_lag_records": MetricInfo("gauge", "End offset minus the finished-through offset.", _TP),
    "kard_bridge_committed_offset": MetricInfo("gauge", "Last offset committed by this instance.", _TP),
    "kard_bridge_asyncio_tasks": MetricInfo("gauge", "Tasks alive on the bridge's event loop at scrape time."),
}

#: Every family :class:`BridgeMetrics` exposes; histograms add ``_bucket``, ``_sum`` and ``_count`` series.
METRICS: dict[str, MetricInfo] = {
    **_SNAPSHOT_METRICS,
    "kard_bridge_batch_items": MetricInfo("histogram", "Items per batch handed to the dispatcher.", ("route",)),
    "kard_bridge_batch_bytes": MetricInfo("histogram", "Request body bytes per batch.", ("route",)),
    "kard_bridge_request_duration_seconds": MetricInfo(
        "histogram",
        "Kard API request latency, by endpoint and status ('error': no HTTP answer).",
        ("endpoint", "status"),
    ),
    "kard_bridge_commit_duration_seconds": MetricInfo("histogram", "Offset commit latency."),
}

_Samples = Iterable[tuple[tuple[str, ...], float]]
_NO_DISPATCHER = DispatcherStatistics(0, 0, 0, 0, 0, 0, False)
_NO_CLIENT = KardClientStatistics(0, {}, 0, 0, 0, 0, 0, 0)


class _SnapshotCollector:
    """Turns component snapshots and the hot-path dicts into metric families at scrape time."""

    def __init__(self, metrics: BridgeMetrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        values = self._values()
        for name, info in _SNAPSHOT_METRICS.items():
            family_type = CounterMetricFamily if info.type == "counter" else GaugeMetricFamily
            family = family_type(name, info.help, labels=info.labels)
            sample = values[name]
            for labels, value in [((), sample)] if isinstance(sample, int | float) else sample:
                family.add_metric(labels, value)
            yield family

    def _values(self) -> dict[str, float | _Samples]:
        m = self._metrics
        view = m.view
        flow = view.flow.statistics()
        batcher = view.batcher.statistics()
        d = view.dispatcher.statistics() if view.dispatcher is not None else _NO_DISPATCHER
        c = view.client.statistics() if view.client is not None else _NO_CLIENT
        outputs = view.outputs
        states = partition_states(view, m.end_offsets)
        committed = sorted(view.committed.items(), key=lambda kv: (kv[0].topic, kv[0].partition))
        return {
            "kard_bridge_build_info": [((__version__,), 1)],
            "kard_bridge_records_consumed_total": [((t,), n) for t, n in m._consumed.items()],
            "kard_bridge_records_mapped_total": view.mapped,
            "kard_bridge_records_forwarded_total": m._forwarded.items(),
            "kard_bridge_records_failed_total": m._failed.items(),
            "kard_bridge_commits_total": [((r,), n) for r, n in m._commits.items()],
            "kard_bridge_buffer_records": flow.records,
            "kard_bridge_buffer_bytes": flow.bytes,
            "kard_bridge_buffer_fill_ratio": flow.fill_ratio,
            "kard_bridge_open_batches": batcher.open_batches,
            "kard_bridge_batches_total": batcher.emitted_batches,
            "kard_bridge_batches_pending": d.batches_pending,
            "kard_bridge_requests_in_flight": d.requests_in_flight,
            "kard_bridge_concurrency_limit": d.concurrency_limit,
            "kard_bridge_request_retries_total": d.retries,
            "kard_bridge_batch_bisections_total": d.bisections,
            "kard_bridge_auth_failures_total": d.auth_failures,
            "kard_bridge_api_holding_back": int(d.holding_back),
            "kard_bridge_api_responses_total": [((str(s),), n) for s, n in sorted(c.requests_by_status.items())],
            "kard_bridge_api_transport_errors_total": c.transport_errors,
            "kard_bridge_api_deadline_expirations_total": c.deadline_expirations,
            "kard_bridge_token_refreshes_total": c.token_refreshes,
            "kard_bridge_token_failures_total": c.token_failures,
            "kard_bridge_unauthorized_retries_total": c.unauthorized_retries,
            "kard_bridge_outcome_records_total": (
                [(("result",), outputs.results), (("failure",), outputs.failures)] if outputs is not None else []
            ),
            "kard_bridge_outcome_produce_retries_total": outputs.produce_retries if outputs is not None else 0,
            "kard_bridge_pending_records": view.tracker.statistics().pending_records,
            "kard_bridge_assigned_partitions": len(states),
            "kard_bridge_paused_partitions": sum(s.paused for s in states),
            "kard_bridge_consumer_lag_records": [
                ((s.tp.topic, str(s.tp.partition)), s.lag) for s in states if s.lag is not None
            ],
            "kard_bridge_committed_offset": [((tp.topic, str(tp.partition)), off) for tp, off in committed],
            "kard_bridge_asyncio_tasks": _asyncio_tasks(),
        }


def _asyncio_tasks() -> int:
    """Unfinished tasks of the running event loop; 0 when collected outside one (a scrape runs on the loop).

    A count that keeps growing while the load is flat is a task leak (the soak run watches it).
    """
    try:
        return len(asyncio.all_tasks())
    except RuntimeError:  # no running loop (a synchronous caller, e.g. a test rendering the registry)
        return 0
