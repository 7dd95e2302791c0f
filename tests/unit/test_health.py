"""Health: readiness, liveness (event loop, rebalance, consumer progress) and the watchdog, with an injected clock."""

from __future__ import annotations

import orjson
import pytest

from bridge.dispatch import DispatcherStatistics
from bridge.observability.health import (
    HealthConfig,
    HealthMonitor,
    HealthReport,
    HealthSnapshot,
    ObservabilityServer,
    take_snapshot,
)
from bridge.observability.metrics import BridgeMetrics, PartitionState
from bridge.records import RecordRef, TopicPartition
from tests.unit.test_metrics import FakeBridge, FakeDispatcher, FakeProducer

T0 = TopicPartition("txns", 0)
T1 = TopicPartition("txns", 1)
CONFIG = HealthConfig(heartbeat_interval=1.0, stall_timeout=10.0, progress_timeout=60.0, assignment_timeout=300.0)


def part(
    tp: TopicPartition, *, position: int = 10, lag: int = 5, pending: int = 0, paused: bool = False
) -> PartitionState:
    """A partition whose end offset is ``position + lag``."""
    return PartitionState(tp, position + lag, position, lag, pending, paused)


def snap(
    *partitions: PartitionState,
    ready: bool = True,
    stopping: bool = False,
    producer: bool = True,
    holding_back: bool = False,
    auth_failures: int = 0,
) -> HealthSnapshot:
    """A snapshot of a running, assigned bridge unless told otherwise."""
    return HealthSnapshot(ready, stopping, producer, holding_back, auth_failures, partitions)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_config_rejects_nonsense_thresholds() -> None:
    """Non-positive durations, a negative idle lag, or a stall timeout within one heartbeat are refused."""
    for bad in ({"progress_timeout": 0}, {"idle_lag": -1}, {"exit_after": -1}, {"stall_timeout": 1.0}):
        with pytest.raises(ValueError, match=r"stall_timeout|invalid"):
            HealthConfig(**bad)


def test_ready_when_assigned_running_producer_started_and_credentials_accepted() -> None:
    """Readiness passes with every condition met and names each failing one otherwise."""
    monitor = HealthMonitor(CONFIG, 0.0)
    assert monitor.readiness().failing() == ["started"]
    monitor.observe(snap(), 1.0)
    assert monitor.readiness().ok
    monitor.observe(snap(ready=False, stopping=True, producer=False), 2.0)
    assert monitor.readiness().failing() == ["assigned", "running", "producer"]


def test_auth_refusals_unready_but_an_api_outage_does_not() -> None:
    """Holding back after auth failures unreadies; holding back on 5xx alone, or past auth failures, do not."""
    monitor = HealthMonitor(CONFIG, 0.0)
    monitor.observe(snap(auth_failures=2), 1.0)  # failures from an episode that is over
    assert monitor.readiness().ok
    monitor.observe(snap(holding_back=True, auth_failures=2), 2.0)  # a 5xx outage
    assert monitor.readiness().ok
    monitor.observe(snap(holding_back=True, auth_failures=5), 3.0)
    report = monitor.readiness()
    assert report.failing() == ["api_credentials"]
    assert "3 times" in report.checks["api_credentials"].detail
    monitor.observe(snap(holding_back=False, auth_failures=5), 4.0)
    assert monitor.readiness().ok


def test_event_loop_stall_fails_liveness() -> None:
    """A heartbeat older than stall_timeout fails the event_loop check; a new beat clears it."""
    monitor = HealthMonitor(CONFIG, 0.0)
    monitor.observe(snap(), 0.0)
    assert monitor.liveness(10.0).ok
    assert monitor.liveness(10.5).failing() == ["event_loop"]
    monitor.beat(13.0)
    assert monitor.liveness(13.5).ok
    assert (monitor.loop_lag, monitor.stalls) == (12.0, 1)  # the beat expected at 1.0 ran at 13.0


def test_no_completed_assignment_fails_after_the_timeout() -> None:
    """Unready since start, or since ready was cleared, fails 'rebalance' past assignment_timeout; draining does not."""
    monitor = HealthMonitor(CONFIG, 0.0)
    monitor.observe(snap(ready=False), 299.0)
    monitor.beat(299.0)
    assert monitor.liveness(299.0).ok
    monitor.observe(snap(ready=False), 301.0)
    monitor.beat(301.0)
    assert monitor.liveness(301.0).failing() == ["rebalance"]
    monitor.observe(snap(), 302.0)
    monitor.observe(snap(ready=False), 400.0)  # a rebalance started (ready cleared on revoke)
    monitor.beat(699.0)
    monitor.observe(snap(ready=False), 699.0)
    assert monitor.liveness(699.0).ok
    monitor.beat(701.0)
    monitor.observe(snap(ready=False), 701.0)
    assert monitor.liveness(701.0).failing() == ["rebalance"]
    monitor.observe(snap(ready=False, stopping=True), 701.0)
    assert monitor.liveness(701.0).ok


def _run(monitor: HealthMonitor, at: float, *partitions: PartitionState, **kw: bool) -> HealthReport:
    """Beat, observe and evaluate liveness at one instant."""
    monitor.beat(at)
    monitor.observe(snap(*partitions, **kw), at)
    return monitor.liveness(at)


def test_partition_with_waiting_records_and_no_progress_fails_liveness() -> None:
    """Lag above idle_lag, nothing in flight, not paused and a frozen position for progress_timeout is a stall."""
    monitor = HealthMonitor(CONFIG, 0.0)
    assert _run(monitor, 1.0, part(T0, lag=50), part(T1, lag=0)).ok
    assert _run(monitor, 61.0, part(T0, lag=80), part(T1, lag=0)).ok
    report = _run(monitor, 61.5, part(T0, lag=80), part(T1, lag=0))
    assert report.failing() == ["consumer_progress"]
    assert report.checks["consumer_progress"].detail.startswith("txns[0] lag 80, no progress for 60 s")
    assert _run(monitor, 62.0, part(T0, position=11, lag=79)).ok  # one record finished: progress


@pytest.mark.parametrize(
    ("partition", "kw"),
    [
        (part(T0, lag=40, pending=3), {}),  # records are inside the bridge: downstream explains the wait
        (part(T0, lag=40, paused=True), {}),  # backpressure paused the partition on purpose
        (part(T0, lag=CONFIG.idle_lag), {}),  # caught up up to a trailing transaction marker
        (part(T0, lag=40), {"stopping": True}),  # draining
    ],
)
def test_waiting_partitions_that_are_not_stalls(partition: PartitionState, kw: dict[str, bool]) -> None:
    """In-flight records, a pause, an idle lag or a drain never count as a stuck consumer."""
    monitor = HealthMonitor(CONFIG, 0.0)
    for at in (1.0, 100.0, 200.0):
        assert _run(monitor, at, partition, **kw).ok


def test_watchdog_trips_once_after_exit_after_seconds_of_failure() -> None:
    """Liveness failing exit_after s in a row returns the report once; a recovery restarts the count."""
    config = HealthConfig(progress_timeout=10.0, exit_after=20.0)
    monitor = HealthMonitor(config, 0.0)
    _run(monitor, 0.0, part(T0))
    _run(monitor, 11.0, part(T0))  # failing from here
    assert monitor.watchdog_due(11.0) is None
    _run(monitor, 12.0, part(T0, position=11))  # recovered: the count restarts
    assert monitor.watchdog_due(12.0) is None
    _run(monitor, 23.0, part(T0, position=11))
    assert monitor.watchdog_due(23.0) is None
    _run(monitor, 42.0, part(T0, position=11))
    assert monitor.watchdog_due(42.0) is None
    _run(monitor, 43.0, part(T0, position=11))
    due = monitor.watchdog_due(43.0)
    assert due is not None and due.failing() == ["consumer_progress"]
    assert monitor.tripped
    assert monitor.watchdog_due(60.0) is None


def test_snapshot_reads_the_bridge() -> None:
    """take_snapshot reads ready, stopping, producer, dispatcher hold-back and partition lag from the bridge."""
    bridge = FakeBridge()
    bridge.assign({T0: 30}, committed=10)
    bridge.dispatcher = FakeDispatcher(DispatcherStatistics(0, 0, 0, 0, 0, 4, True))
    bridge.producer = FakeProducer(started=True)
    bridge.ready.set()
    snapshot = take_snapshot(bridge, BridgeMetrics(bridge))
    assert snapshot == HealthSnapshot(True, False, True, True, 4, (PartitionState(T0, 30, 10, 20, 0, False),))


def test_server_answers_health_and_metrics_without_a_socket() -> None:
    """respond() gives 503 + JSON reasons before the bridge is ready, 200 after, and the metrics text."""
    bridge = FakeBridge()
    clock = Clock()
    server = ObservabilityServer(bridge, BridgeMetrics(bridge), config=CONFIG, clock=clock)

    status, content_type, body = server.respond("/readyz")
    assert (status, content_type) == (503, "application/json")
    assert orjson.loads(body)["failing"] == ["assigned", "producer"]
    bridge.ready.set()
    bridge.producer = FakeProducer()
    status, _, body = server.respond("/readyz")
    assert status == 200 and orjson.loads(body)["status"] == "ok"

    assert server.respond("/healthz")[0] == 200
    clock.now += 11.0  # no heartbeat ran: the event loop looks stalled
    status, _, body = server.respond("/healthz")
    assert status == 503
    assert orjson.loads(body)["checks"]["event_loop"] == {"ok": False, "detail": "last heartbeat 11.0 s ago"}

    status, content_type, body = server.respond("/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    assert b"kard_bridge_buffer_records 0.0" in body


def test_tick_calls_the_watchdog_hook_once() -> None:
    """The heartbeat's tick hands the failing report to on_watchdog once liveness failed exit_after s in a row."""
    bridge = FakeBridge()
    bridge.ready.set()
    bridge.assign({T0: 100}, committed=10)
    clock = Clock(0.0)
    tripped: list[HealthReport] = []
    config = HealthConfig(progress_timeout=10.0, exit_after=5.0)
    server = ObservabilityServer(bridge, BridgeMetrics(bridge), config=config, clock=clock, on_watchdog=tripped.append)
    for now in (0.0, 5.0, 10.5, 14.0, 16.0, 30.0):
        clock.now = now
        server.monitor.beat(now)
        server.respond("/healthz")
        server.tick(now)
    assert [r.failing() for r in tripped] == [["consumer_progress"]]
    assert server.watchdog_tripped
    bridge.tracker.track(RecordRef("txns", 0, 10))
    bridge.tracker.finish(RecordRef("txns", 0, 10))
    assert server.respond("/healthz")[0] == 200
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.port
