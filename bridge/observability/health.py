"""Liveness, readiness and the consumer watchdog, served with ``/metrics`` on one HTTP port.

Why a watchdog: aiokafka consumers have been seen stuck after a broker restart or a rebalance, with no
error and no health signal (PITFALLS, aiokafka#1154). Liveness (``/healthz``, 503 + JSON why) fails on:

* ``event_loop``: the heartbeat task has not run for ``stall_timeout`` seconds;
* ``rebalance``: no completed assignment (the bridge's ``ready`` flag unset) for ``assignment_timeout``
  seconds since start or since ``ready`` was last cleared (an empty assignment is fine: a consumer group
  can have more members than partitions);
* ``consumer_progress``: an assigned, unpaused partition has records waiting in Kafka (lag above
  ``idle_lag``) and none inside the bridge (so nothing downstream explains the wait), and its
  finished-through offset has not moved for ``progress_timeout`` seconds.

Readiness (``/readyz``) needs partitions assigned (``ready``), no drain, the output producer started, and
the Kard API not refusing credentials (auth failures counted while the dispatcher holds back; a 5xx outage
alone keeps the instance ready).

:class:`HealthMonitor` decides, sans-I/O (time passed in). :class:`ObservabilityServer` adds the I/O: an
aiohttp server, a heartbeat task and, when the consumer offers ``EndOffsetsSource``, an end-offset
refresher (fetch highwater marks freeze with a stuck fetcher). Once liveness has failed ``exit_after``
seconds in a row it calls ``on_watchdog``, so the bridge can exit non-zero for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from types import TracebackType
from typing import NamedTuple, Self

import orjson
import structlog
from aiohttp import web
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from bridge.observability.metrics import BridgeMetrics, BridgeView, EndOffsetsSource, PartitionState, partition_states
from bridge.records import TopicPartition

__all__ = [
    "Check",
    "HealthConfig",
    "HealthMonitor",
    "HealthReport",
    "HealthSnapshot",
    "ObservabilityServer",
    "take_snapshot",
]

_log = structlog.get_logger("bridge.observability.health")


@dataclass(frozen=True, slots=True)
class HealthConfig:
    """Thresholds of the health checks (seconds, except ``idle_lag``).

    Attributes:
        heartbeat_interval: how often the heartbeat task runs (and the watchdog evaluates).
        stall_timeout: liveness fails when the heartbeat is older than this.
        progress_timeout: how long a partition may have work and make no progress.
        assignment_timeout: how long the bridge may stay without a completed assignment; above the
            rebalance timeout (Kafka's default is ``max_poll_interval``, 300 s).
        idle_lag: a lag at or below this counts as caught up (a trailing transaction marker leaves 1).
        end_offsets_interval: how often end offsets are refreshed, when the consumer can.
        end_offsets_timeout: the budget of one refresh.
        exit_after: liveness failing this long in a row trips the watchdog (``on_watchdog``).
    """

    heartbeat_interval: float = 1.0
    stall_timeout: float = 10.0
    progress_timeout: float = 120.0
    assignment_timeout: float = 360.0
    idle_lag: int = 1
    end_offsets_interval: float = 30.0
    end_offsets_timeout: float = 10.0
    exit_after: float = 30.0

    def __post_init__(self) -> None:
        durations = [getattr(self, f.name) for f in fields(self) if f.name not in ("idle_lag", "exit_after")]
        if self.idle_lag < 0 or self.exit_after < 0 or min(durations) <= 0:
            raise ValueError(f"invalid health thresholds: {self}")
        if self.stall_timeout <= self.heartbeat_interval:
            raise ValueError("stall_timeout must exceed heartbeat_interval")


class Check(NamedTuple):
    """One named check: passed or not, and a sentence for operators."""

    ok: bool
    detail: str


class HealthReport(NamedTuple):
    """The outcome of liveness or readiness: ``ok`` when every check passed."""

    ok: bool
    checks: dict[str, Check]

    @classmethod
    def of(cls, checks: dict[str, Check]) -> HealthReport:
        return cls(all(c.ok for c in checks.values()), checks)

    def failing(self) -> list[str]:
        return [name for name, check in self.checks.items() if not check.ok]

    def to_json(self) -> bytes:
        """``{"status": "ok"|"failing", "failing": [...], "checks": {name: {"ok", "detail"}}}``."""
        checks = {name: {"ok": c.ok, "detail": c.detail} for name, c in self.checks.items()}
        status = "ok" if self.ok else "failing"
        return orjson.dumps({"status": status, "failing": self.failing(), "checks": checks})


class HealthSnapshot(NamedTuple):
    """What the checks need from the bridge at one instant (built by :func:`take_snapshot`)."""

    ready: bool
    stopping: bool
    producer_started: bool
    holding_back: bool
    auth_failures: int
    partitions: tuple[PartitionState, ...]


def take_snapshot(view: BridgeView, metrics: BridgeMetrics) -> HealthSnapshot:
    """Read the bridge's state for the health checks; cheap and synchronous."""
    dispatcher = view.dispatcher.statistics() if view.dispatcher is not None else None
    producer = view.producer
    return HealthSnapshot(
        ready=view.ready.is_set(),
        stopping=view.stopping.is_set(),
        producer_started=producer is not None and producer.started,
        holding_back=dispatcher is not None and dispatcher.holding_back,
        auth_failures=dispatcher.auth_failures if dispatcher is not None else 0,
        partitions=tuple(partition_states(view, metrics.end_offsets)),
    )


class HealthMonitor:
    """Sans-I/O liveness and readiness state: feed it heartbeats and snapshots with the time they were taken.

    Args:
        config: the thresholds.
        now: monotonic seconds at start (the assignment timeout counts from here).
    """

    def __init__(self, config: HealthConfig, now: float) -> None:
        self.config = config
        self._last_beat = now
        self.loop_lag = 0.0  #: how late the last heartbeat ran (seconds)
        self.stalls = 0  #: heartbeats that ran more than ``stall_timeout`` late
        self._unready_since: float | None = now
        self._snapshot: HealthSnapshot | None = None
        self._waiting: dict[TopicPartition, tuple[int | None, float]] = {}  # tp -> (position, since)
        self._auth_baseline = 0
        self._failing_since: float | None = None
        self.tripped = False

    def beat(self, now: float) -> None:
        """The heartbeat ran at ``now``; its lateness beyond one interval is the event-loop lag."""
        self.loop_lag = max(0.0, now - self._last_beat - self.config.heartbeat_interval)
        self._last_beat = now
        if self.loop_lag > self.config.stall_timeout:
            self.stalls += 1

    def observe(self, snapshot: HealthSnapshot, now: float) -> None:
        """Update the progress, assignment and credential state from a snapshot taken at ``now``."""
        self._snapshot = snapshot
        if snapshot.ready:
            self._unready_since = None
        elif self._unready_since is None:
            self._unready_since = now
        if not snapshot.holding_back:
            self._auth_baseline = snapshot.auth_failures
        stalls: dict[TopicPartition, tuple[int | None, float]] = {}
        for p in snapshot.partitions:
            waiting = p.lag is not None and p.lag > self.config.idle_lag and p.pending == 0 and not p.paused
            if waiting and not snapshot.stopping:
                previous = self._waiting.get(p.tp)
                stalls[p.tp] = previous if previous is not None and previous[0] == p.position else (p.position, now)
        self._waiting = stalls

    def liveness(self, now: float) -> HealthReport:
        """Event loop, rebalance and consumer-progress checks as of ``now`` (after the last :meth:`observe`)."""
        cfg = self.config
        age = now - self._last_beat
        checks = {"event_loop": Check(age <= cfg.stall_timeout, f"last heartbeat {age:.1f} s ago")}
        stopping = self._snapshot is not None and self._snapshot.stopping
        if self._unready_since is None or stopping:
            checks["rebalance"] = Check(True, "partition assignment completed")
        else:
            waited = now - self._unready_since
            detail = f"no completed partition assignment for {waited:.0f} s (limit {cfg.assignment_timeout:g} s)"
            checks["rebalance"] = Check(waited <= cfg.assignment_timeout, detail)
        stuck = []
        for p in self._snapshot.partitions if self._snapshot is not None else ():
            entry = self._waiting.get(p.tp)
            if entry is not None and now - entry[1] > cfg.progress_timeout:
                stuck.append(f"{p.tp} lag {p.lag}, no progress for {now - entry[1]:.0f} s")
        detail = "; ".join(stuck) if stuck else "every partition with waiting records is moving"
        checks["consumer_progress"] = Check(not stuck, detail)
        return HealthReport.of(checks)

    def readiness(self) -> HealthReport:
        """Assignment, draining, producer and API credential checks from the last observed snapshot."""
        snap = self._snapshot
        if snap is None:
            return HealthReport.of({"started": Check(False, "bridge state not observed yet")})
        refused = snap.auth_failures - self._auth_baseline if snap.holding_back else 0
        producer = "output producer started" if snap.producer_started else "output producer not started"
        api = (
            f"Kard API refused the credentials {refused} times; holding back" if refused else "credentials not refused"
        )
        return HealthReport.of(
            {
                "assigned": Check(snap.ready, "partitions assigned" if snap.ready else "waiting for an assignment"),
                "running": Check(not snap.stopping, "draining" if snap.stopping else "running"),
                "producer": Check(snap.producer_started, producer),
                "api_credentials": Check(refused == 0, api),
            }
        )

    def watchdog_due(self, now: float) -> HealthReport | None:
        """The failing liveness report once it has failed ``exit_after`` s in a row; then never again."""
        report = self.liveness(now)
        if report.ok:
            self._failing_since = None
            return None
        if self._failing_since is None:
            self._failing_since = now
        if self.tripped or now - self._failing_since < self.config.exit_after:
            return None
        self.tripped = True
        return report


class ObservabilityServer:
    """``/metrics``, ``/healthz`` and ``/readyz`` on one port, with the heartbeat and the watchdog.

    An async context manager; enter it once. It owns a TaskGroup (heartbeat, end-offset refresher)
    and an aiohttp server bound to ``host:port`` (0 picks a free port; read :attr:`port`).

    Args:
        view: the bridge.
        metrics: its metrics (the server registers the health gauges in the same registry).
        host, port: where to listen.
        config: the health thresholds.
        on_watchdog: called once, from the heartbeat task, with the failing liveness report when
            liveness has failed ``config.exit_after`` seconds in a row.
        clock: monotonic seconds (tests inject one).
    """

    def __init__(
        self,
        view: BridgeView,
        metrics: BridgeMetrics,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: HealthConfig | None = None,
        on_watchdog: Callable[[HealthReport], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._view = view
        self._metrics = metrics
        self._host = host
        self._port = port
        self._clock = clock
        self._on_watchdog = on_watchdog
        self.monitor = HealthMonitor(config or HealthConfig(), clock())
        self._runner: web.AppRunner | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._bound: int | None = None
        self._entered = False
        self._was_live = True

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked)."""
        if self._bound is None:
            raise RuntimeError("observability server is not started")
        return self._bound

    @property
    def watchdog_tripped(self) -> bool:
        return self.monitor.tripped

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("observability server already started")
        self._entered = True
        app = web.Application()
        for path in ("/metrics", "/healthz", "/readyz"):
            app.router.add_get(path, self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except OSError:
            await self.aclose()
            raise
        self._bound = int(runner.addresses[0][1])
        self._metrics.registry.register(self)  # see collect()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._tasks = [self._tg.create_task(self._heartbeat()), self._tg.create_task(self._refresh_end_offsets())]
        _log.info("observability_server_started", host=self._host, port=self._bound)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the tasks and the HTTP server (idempotent). A body exception passes through unwrapped."""
        tg, self._tg = self._tg, None
        if tg is not None:
            for task in self._tasks:
                task.cancel()
            await tg.__aexit__(None, None, None)  # raises only if a task of ours failed
            self._metrics.registry.unregister(self)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def respond(self, path: str, accept: str = "") -> tuple[int, str, bytes]:
        """Answer one request: ``(status, content type, body)``. Pure apart from sampling the bridge."""
        now = self._clock()
        self.monitor.observe(take_snapshot(self._view, self._metrics), now)
        if path == "/metrics":
            body, content_type = self._metrics.render(accept)
            return 200, content_type, body
        report = self.monitor.liveness(now) if path == "/healthz" else self.monitor.readiness()
        return (200 if report.ok else 503), "application/json", report.to_json()

    def collect(self) -> Iterator[Metric]:
        """The health series, for the bridge's registry (prometheus_client's ``Collector`` protocol)."""
        monitor, now = self.monitor, self._clock()
        yield GaugeMetricFamily(
            "kard_bridge_event_loop_lag_seconds", "How late the last heartbeat ran.", monitor.loop_lag
        )
        yield CounterMetricFamily(
            "kard_bridge_event_loop_stalls_total", "Heartbeats later than the stall timeout.", monitor.stalls
        )
        yield GaugeMetricFamily("kard_bridge_live", "1 when liveness passes.", int(monitor.liveness(now).ok))
        yield GaugeMetricFamily("kard_bridge_ready", "1 when readiness passes.", int(monitor.readiness().ok))

    async def _handle(self, request: web.Request) -> web.Response:
        status, content_type, body = self.respond(request.path, request.headers.get("Accept", ""))
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    async def _heartbeat(self) -> None:
        cfg = self.monitor.config
        while True:
            await asyncio.sleep(cfg.heartbeat_interval)
            now = self._clock()
            stalls = self.monitor.stalls
            self.monitor.beat(now)
            if self.monitor.stalls != stalls:
                _log.warning("event_loop_stalled", seconds=round(self.monitor.loop_lag, 3))
            self.monitor.observe(take_snapshot(self._view, self._metrics), now)
            self.tick(now)

    def tick(self, now: float) -> None:
        """Log liveness transitions and trip the watchdog when due (the heartbeat calls this)."""
        report = self.monitor.liveness(now)
        if report.ok != self._was_live:
            self._was_live = report.ok
            if report.ok:
                _log.info("liveness_recovered")
            else:
                _log.error("liveness_failed", failing=report.failing(), detail=_details(report))
        due = self.monitor.watchdog_due(now)
        if due is not None:
            _log.error("watchdog_tripped", failing=due.failing(), detail=_details(due))
            if self._on_watchdog is not None:
                self._on_watchdog(due)

    async def _refresh_end_offsets(self) -> None:
        cfg = self.monitor.config
        while True:
            consumer = self._view.consumer
            if isinstance(consumer, EndOffsetsSource):
                partitions = consumer.assignment()
                try:
                    async with asyncio.timeout(cfg.end_offsets_timeout):
                        offsets = await consumer.end_offsets(partitions) if partitions else {}
                except TimeoutError:
                    _log.warning("end_offsets_timed_out", partitions=len(partitions))
                else:
                    self._metrics.end_offsets = dict(offsets)
            await asyncio.sleep(cfg.end_offsets_interval)


def _details(report: HealthReport) -> dict[str, str]:
    return {name: report.checks[name].detail for name in report.failing()}
