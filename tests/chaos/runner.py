"""The chaos runner: real processes, scheduled faults, then the checker's verdict.

Everything is real: a 3-node KRaft cluster from ``bridge.devenv`` (replication factor 3, min.insync.replicas 2),
the Kard sandbox as a child process, ``kard-bridge run`` child processes in one consumer group, and the
project's TCP proxy (``bridge.devenv.tcp_proxy``) between the bridges and both the API and every Kafka node
(the nodes advertise a proxied listener to the bridges; the input producer and the monitor use the direct one).

Sequence: create topics → start sandbox, proxies, bridges → produce sequence-numbered events (with catalogue
poison lines mixed in) at a steady rate while the faults run **one at a time** (inject, hold, heal, wait for
recovery, settle) → produce the rest → wait until the group committed every input to its end → SIGTERM the
bridges → read inputs, outputs and the sandbox's accepted items → :func:`tests.chaos.checker.check`.
A monitor polls the group's committed offsets and the input end offsets every 0.5 s throughout: the checker
uses those samples for over-commits and recovery times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as KafkaTP
from aiokafka.admin import AIOKafkaAdminClient

from bridge.config import load_settings
from bridge.devenv.generate import generate_events, invalid_examples
from bridge.devenv.kafka import KafkaCluster
from bridge.devenv.kafka_admin import create_topics
from bridge.devenv.tcp_proxy import FaultProxy
from bridge.events.outcomes import FailureHeaders, ResultValue
from bridge.sandbox.process import SandboxProcess, start_sandbox
from tests.chaos.checker import (
    Accepted,
    CommitSample,
    FaultRecord,
    InputRecord,
    OutcomeRecord,
    Report,
    Targets,
    check,
    recovery_after,
)
from tests.chaos.scenario import Scenario
from tests.fixtures.bridge import BridgeTopics, Produced, _env, bridge_overrides, expected_items, item_wire_key
from tests.fixtures.bridge import received_key as sandbox_wire_key

__all__ = ["ChaosRun", "run_scenario"]

TP = tuple[str, int]
Say = Callable[[str], None]


# -- processes -------------------------------------------------------------------------------------------


@dataclass(slots=True)
class BridgeSlot:
    """One bridge instance id; each (re)start is a new ``kard-bridge run`` process logging to its own file."""

    index: int
    instance_id: str
    env: dict[str, str]
    logdir: Path
    popen: subprocess.Popen[bytes] | None = None
    starts: int = 0
    expected_exit: bool = False
    crashes: list[str] = field(default_factory=list)

    def start(self) -> None:
        self.starts += 1
        log = (self.logdir / f"{self.instance_id}.{self.starts}.log").open("wb")
        with log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", "bridge", "run"], stdout=log, stderr=subprocess.STDOUT, env=self.env
            )
        self.expected_exit = False

    @property
    def pid(self) -> int | None:
        return None if self.popen is None else self.popen.pid

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        self.expected_exit = True
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait(30)

    async def terminate(self, timeout: float = 90.0) -> int | None:
        """SIGTERM and wait for the exit code (SIGKILL after ``timeout``; returns None then)."""
        self.expected_exit = True
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        popen = self.popen
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(popen.wait, timeout)
        if self.popen.poll() is None:
            self.kill()
            return None
        return self.popen.returncode

    def check_crash(self) -> str | None:
        """If the process exited on its own, note it (with its log tail) and return the note."""
        if self.popen is None or self.expected_exit or self.popen.poll() is None:
            return None
        log = self.logdir / f"{self.instance_id}.{self.starts}.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        note = f"{self.instance_id} (start {self.starts}) exited with {self.popen.returncode}: {' | '.join(tail)}"
        self.crashes.append(note)
        self.expected_exit = True
        return note


# -- the run ---------------------------------------------------------------------------------------------


class ChaosRun:
    """One chaos run in ``workdir`` (kept afterwards: bridge logs, broker logs, report)."""

    def __init__(self, scenario: Scenario, workdir: Path, say: Say = print) -> None:
        self.scenario = scenario
        self.workdir = workdir
        self.say = say
        self.tag = uuid.uuid4().hex[:6]
        self.topics = BridgeTopics(f"chaos-{self.tag}.txns", f"chaos-{self.tag}.elig", f"chaos-{self.tag}.attr")
        self.group_id = f"chaos-{self.tag}"
        self.samples: list[CommitSample] = []
        self.faults: list[FaultRecord] = []
        self.produced = 0
        self.producer_retries = 0
        self.slots: list[BridgeSlot] = []
        self.crashes: list[str] = []
        self.bad_exits: list[str] = []
        self.process_samples: list[ProcessSample] = []
        self._t0 = time.time()
        self._fault_index = 0
        self._kind_counts: dict[str, int] = {}

    # The pieces started in ``run`` (set there).
    cluster: KafkaCluster
    sandbox: SandboxProcess
    api_proxy: FaultProxy
    kafka_proxies: list[FaultProxy]
    bootstrap: str
    sections: dict[str, dict[str, Any]]

    def _log(self, text: str) -> None:
        self.say(f"[{time.time() - self._t0:7.1f}s] {text}")

    async def run(self) -> Report:
        """Set everything up, run the schedule, tear down, and return the checker's report."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "bridges").mkdir(exist_ok=True)
        async with contextlib.AsyncExitStack() as stack:
            await self._start_kafka(stack)
            await self._start_api(stack)
            self._create_topics()
            await self._start_bridges(stack)
            return await self._drive()
        raise AssertionError("unreachable")  # pragma: no cover - the stack re-raises

    # -- setup -----------------------------------------------------------------------------------------

    async def _start_kafka(self, stack: contextlib.AsyncExitStack) -> None:
        sc = self.scenario
        self._log(f"starting a {sc.brokers}-node Kafka cluster (KRaft) with a proxied listener per node")
        self.cluster = KafkaCluster.create(self.workdir / "kafka", brokers=sc.brokers, proxied_listener=True)
        await asyncio.to_thread(self.cluster.__enter__)
        stack.push(lambda *exc: self.cluster.__exit__(*exc))
        self.bootstrap = self.cluster.bootstrap_servers
        self.kafka_proxies = []
        for advertised, bound in self.cluster.proxied_routes:
            proxy = FaultProxy("127.0.0.1", bound, listen_port=advertised)
            await proxy.start()
            stack.push_async_callback(proxy.stop)
            self.kafka_proxies.append(proxy)

    async def _start_api(self, stack: contextlib.AsyncExitStack) -> None:
        self.sandbox = start_sandbox(record=self.scenario.record_mode)
        stack.callback(self.sandbox.stop)
        url = urlsplit(self.sandbox.base_url)
        self.api_proxy = FaultProxy(url.hostname or "127.0.0.1", int(url.port or 80))
        await self.api_proxy.start()
        stack.push_async_callback(self.api_proxy.stop)
        self._log(f"sandbox at {self.sandbox.base_url}, bridges reach it through 127.0.0.1:{self.api_proxy.port}")

    def _create_topics(self) -> None:
        sc = self.scenario
        factor = min(3, sc.brokers)
        configs = {"min.insync.replicas": str(max(1, factor - 1))}
        names = [*self.topics.inputs, *self.topics.outputs]
        create_topics(self.bootstrap, names, partitions=sc.partitions, replication_factor=factor, configs=configs)
        self._log(f"topics {self.topics.inputs} (+ results/dlq): {sc.partitions} partitions, RF {factor}")

    async def _start_bridges(self, stack: contextlib.AsyncExitStack) -> None:
        sc = self.scenario
        sandbox_like = self.sandbox
        for i in range(sc.bridges):
            instance_id = f"chaos-{i}"
            sections = bridge_overrides(
                self.cluster.proxied_bootstrap_servers,
                self.topics,
                sandbox_like,
                group_id=self.group_id,
                instance_id=instance_id,
                kafka={"session_timeout": sc.session_timeout, "heartbeat_interval": sc.session_timeout / 6},
                kard={
                    "api_base_url": f"http://127.0.0.1:{self.api_proxy.port}",
                    "read_timeout": 5.0,
                    "connect_timeout": 3.0,
                },
                bridge={
                    "log_level": "INFO",
                    "log_format": "json",
                    "linger": 0.05,
                    "retry_cap": 5.0,
                    "drain_timeout": 30.0,
                },
            )
            self.sections = sections
            env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KARD_", "BRIDGE_"))}
            env.update(_env(sections))
            env.update(sc.bridge_env)
            if sc.exactly_once:
                env["KAFKA_EXACTLY_ONCE"] = "true"  # transactional id from the stable BRIDGE_INSTANCE_ID
            if sc.sample_processes:
                env["BRIDGE_METRICS_PORT"] = str(_free_port())
            slot = BridgeSlot(i, instance_id, env, self.workdir / "bridges")
            slot.start()
            self.slots.append(slot)
        stack.callback(lambda: [slot.kill() for slot in self.slots])
        self._log(f"started {sc.bridges} bridges in group {self.group_id}")

    # -- the schedule ----------------------------------------------------------------------------------

    async def _drive(self) -> Report:
        sc = self.scenario
        rate = sc.rate or sc.records / max(30.0, sc.estimated_seconds())
        stop_monitor = asyncio.Event()
        monitor = asyncio.create_task(self._monitor(stop_monitor), name="chaos-monitor")
        sampler = asyncio.create_task(self._sample_processes(stop_monitor), name="chaos-sampler")
        unpaced = asyncio.Event()
        producer = asyncio.create_task(self._produce(rate, unpaced), name="chaos-producer")
        try:
            await self._wait_first_commit()
            schedule_start = time.monotonic()
            for i, kind in enumerate(sc.faults):
                if sc.fault_interval is not None:  # the soak: one fault at the start of each period
                    await asyncio.sleep(max(0.0, schedule_start + i * sc.fault_interval - time.monotonic()))
                self._check_crashes()
                await self._inject(kind)
                await asyncio.sleep(sc.settle_seconds)
            if sc.rate is None:
                unpaced.set()
                self._log("faults done; producing the rest of the input at full speed")
            await producer
            await self._wait_all_committed(timeout=600)
            await self._stop_bridges()
        finally:
            stop_monitor.set()
            producer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await producer
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            with contextlib.suppress(asyncio.CancelledError):
                await sampler
        return await self._verdict()

    async def _wait_first_commit(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.samples and sum(self.samples[-1].committed.values()) > 0:
                self._log("the group is committing; starting the faults")
                return
            self._check_crashes()
            await asyncio.sleep(0.5)
        raise RuntimeError("no commit within 120 s of the start")

    def _check_crashes(self) -> None:
        for slot in self.slots:
            note = slot.check_crash()
            if note is not None:
                self.crashes.append(note)
                self._log(f"CRASH: {note}; restarting it")
                slot.start()

    def _in_flight(self) -> int:
        if not self.samples:
            return 0
        last = self.samples[-1]
        return sum(max(0, end - last.committed.get(tp, 0)) for tp, end in last.ends.items())

    async def _inject(self, kind: str) -> None:
        sc = self.scenario
        self._fault_index += 1
        n = self._fault_index
        started = time.time()
        record = FaultRecord(kind, started, started, started, in_flight=self._in_flight())
        produced_at_start = self.produced
        control = self.sandbox.control
        hold = sc.fault_seconds
        reference_at_end = True
        self._kind_counts[kind.split("-")[0]] = turn = self._kind_counts.get(kind.split("-")[0], 0) + 1
        if kind in ("bridge-kill", "bridge-roll"):
            slot = self.slots[turn % len(self.slots)]  # every bridge gets its turn
            record.detail = slot.instance_id
            reference_at_end = False
            if kind == "bridge-kill":
                record.may_duplicate = True
                slot.kill()
                await asyncio.sleep(2.0)
            else:
                code = await slot.terminate(timeout=90)
                if code != 0:
                    self.bad_exits.append(f"{slot.instance_id} exited with {code} on SIGTERM")
                record.detail += f", exit {code}"
            slot.start()
        elif kind in ("broker-restart", "broker-kill"):
            node = turn % sc.brokers  # every node gets its turn
            record.detail = f"node {node}"
            reference_at_end = False
            if kind == "broker-restart":
                await asyncio.to_thread(self.cluster.restart, node)
            else:
                record.may_duplicate = True  # in-flight produce/commit requests can be lost with the node
                await asyncio.to_thread(self.cluster.kill, node)
                await asyncio.sleep(10.0)
                await asyncio.to_thread(self.cluster.start, node)
        elif kind in ("api-cut", "api-blackhole"):
            record.may_duplicate = True  # a request may have been served before its answer was cut
            self.api_proxy.cut("reset" if kind == "api-cut" else "blackhole")
            await asyncio.sleep(hold)
            self.api_proxy.heal()
        elif kind == "kafka-cut":
            record.may_duplicate = True  # results produced but unacked, or commits lost, are redone
            for proxy in self.kafka_proxies:
                proxy.cut("reset")
            await asyncio.sleep(hold)
            for proxy in self.kafka_proxies:
                proxy.heal()
        else:
            rule, hold, dup = _api_fault(kind, sc)
            record.may_duplicate = dup
            await asyncio.to_thread(control.set_faults, rule)
            await asyncio.sleep(hold)
            await asyncio.to_thread(control.clear_faults)
        record.ended = time.time()
        if record.may_duplicate:  # everything that was in flight while it lasted could be sent twice
            record.in_flight += self.produced - produced_at_start
        record.reference = record.ended if reference_at_end else record.started
        self.faults.append(record)
        recovered = await self._wait_recovery(record.reference, timeout=sc.recovery_target + 60)
        record.recovered_at = recovered
        took = "NOT RECOVERED" if recovered is None else f"recovered in {recovered - record.reference:.1f} s"
        self._log(
            f"fault {n}/{len(sc.faults)} {kind} ({record.detail or 'all'}): held {record.ended - started:.1f} s, {took}"
        )

    async def _wait_recovery(self, reference: float, timeout: float) -> float | None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_crashes()
            await asyncio.sleep(0.5)
            found = recovery_after(reference, self.samples)
            if found is not None:
                return found
        return None

    # -- input -----------------------------------------------------------------------------------------

    async def _produce(self, rate: float, unpaced: asyncio.Event) -> None:
        """Produce ``records`` events at ``rate``/s (full speed once ``unpaced`` is set), poison lines mixed in."""
        sc = self.scenario
        poison = list(invalid_examples(self.topics.names))
        events = generate_events(
            sc.records, users=sc.users, seed=11, prefix=f"chaos-{self.tag}", topics=self.topics.names
        )
        messages: list[tuple[str, bytes | None, bytes]] = []
        for i, event in enumerate(events):
            messages.append((event.topic, event.key, event.value))
            if sc.poison_every and i % sc.poison_every == sc.poison_every - 1 and poison:
                topic, value = poison[(i // sc.poison_every) % len(poison)]
                messages.append((topic, event.key, value))
        self._log(f"producing {len(messages)} records ({sc.records} events + poison) at {rate:.0f}/s")
        producer = AIOKafkaProducer(
            bootstrap_servers=self.bootstrap, acks="all", enable_idempotence=True, linger_ms=5, request_timeout_ms=30000
        )
        await producer.start()
        try:
            tick = 0.1
            i = 0
            next_at = time.monotonic()
            last_report = time.monotonic()
            while i < len(messages):
                chunk = len(messages) - i if unpaced.is_set() else max(1, int(rate * tick))
                batch = messages[i : i + min(chunk, 2000)]
                i += len(batch)
                await self._send_all(producer, batch)
                self.produced += len(batch)
                if not unpaced.is_set():
                    next_at += tick
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
                if time.monotonic() - last_report > 15:
                    last_report = time.monotonic()
                    self._log(f"progress: produced {self.produced}/{len(messages)}, uncommitted {self._in_flight()}")
        finally:
            await producer.stop()
        self._log(f"produced all {self.produced} records ({self.producer_retries} producer re-sends)")

    async def _send_all(self, producer: AIOKafkaProducer, batch: list[tuple[str, bytes | None, bytes]]) -> None:
        pending = list(batch)
        while pending:
            futures = [await producer.send(topic, value, key=key) for topic, key, value in pending]
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = [m for m, r in zip(pending, results, strict=True) if isinstance(r, BaseException)]
            if failed:
                self.producer_retries += len(failed)
                await asyncio.sleep(0.5)
            pending = failed

    # -- monitoring ------------------------------------------------------------------------------------

    async def _monitor(self, stop: asyncio.Event) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap, request_timeout_ms=5000)
        consumer = AIOKafkaConsumer(bootstrap_servers=self.bootstrap, enable_auto_commit=False, request_timeout_ms=5000)
        await admin.start()
        await consumer.start()
        tps = [KafkaTP(t, p) for t in self.topics.inputs for p in range(self.scenario.partitions)]
        try:
            while not stop.is_set():
                try:
                    async with asyncio.timeout(5):
                        ends = await consumer.end_offsets(tps)
                        offsets = await admin.list_consumer_group_offsets(self.group_id)
                    now = time.time()
                    committed = {
                        (tp.topic, tp.partition): int(om.offset) for tp, om in offsets.items() if om.offset >= 0
                    }
                    self.samples.append(
                        CommitSample(now, committed, {(tp.topic, tp.partition): int(o) for tp, o in ends.items()})
                    )
                except Exception:
                    pass
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
        finally:
            with contextlib.suppress(Exception):
                await consumer.stop()
            with contextlib.suppress(Exception):
                await admin.close()

    async def _wait_all_committed(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            self._check_crashes()
            if self.samples:
                last = self.samples[-1]
                done = last.ends and all(last.committed.get(tp, 0) >= end for tp, end in last.ends.items())
                if done and sum(last.ends.values()) >= self.produced:
                    self._log(f"the group committed all {sum(last.ends.values())} input records")
                    return
            await asyncio.sleep(1.0)
        self._log("TIMEOUT waiting for the group to commit every input record")

    async def _stop_bridges(self) -> None:
        codes = await asyncio.gather(*(slot.terminate(timeout=90) for slot in self.slots))
        for slot, code in zip(self.slots, codes, strict=True):
            if code != 0:
                self.bad_exits.append(f"{slot.instance_id} exited with {code} on the final SIGTERM")
        self._log(f"bridges stopped (exit codes {codes})")

    # -- verdict ---------------------------------------------------------------------------------------

    async def _verdict(self) -> Report:
        self._log("reading inputs, outcomes and what the sandbox accepted")
        parts = self.scenario.partitions
        inputs_raw = await _read_all(self.bootstrap, self.topics.inputs, parts, read_committed=False)
        outputs = await _read_all(self.bootstrap, self.topics.outputs, parts, read_committed=True)
        settings = load_settings(**self.sections)
        produced = [Produced(r.topic, r.partition, r.offset, r.key, r.value or b"", r.headers) for r in inputs_raw]
        mapped = expected_items(produced, settings)
        inputs = [
            InputRecord(
                p.topic, p.partition, p.offset, p.key, item_wire_key(mapped[p.coord]) if p.coord in mapped else None
            )
            for p in produced
        ]
        outcomes: list[OutcomeRecord] = []
        for rec in outputs:
            if rec.topic.endswith(".results"):
                value = ResultValue.model_validate_json(rec.value or b"")
                src = (value.source.topic, value.source.partition, value.source.offset)
                outcomes.append(OutcomeRecord(src, True, rec.timestamp / 1000))
            else:
                header = FailureHeaders.from_headers(rec.headers)
                src = (header.source_topic, header.source_partition, header.source_offset)
                outcomes.append(OutcomeRecord(src, False, rec.timestamp / 1000))
        entries = []  # with --record none the sandbox keeps counters only: no API-side checks
        if self.scenario.record_mode != "none":
            entries = await asyncio.to_thread(lambda: list(self.sandbox.control.iter_received()))
        accepted = [Accepted(sandbox_wire_key(e), (int(e["seq"]), int(e["index"]))) for e in entries]
        targets = Targets(
            recovery=self.scenario.recovery_target, max_outcome_duplicates=0 if self.scenario.exactly_once else None
        )
        report = check(inputs, outcomes, accepted, self.samples, self.faults, targets)
        if len(inputs_raw) < self.produced:
            report.failures.append(f"the checker read {len(inputs_raw)} input records, {self.produced} were produced")
        for note in self.crashes:
            report.failures.append(f"bridge crash: {note}")
        for note in self.bad_exits:
            report.failures.append(note)
        if self.scenario.sample_processes:
            table, flat_failures = process_table(self.process_samples)
            report.sections.append(table)
            report.failures.extend(flat_failures)
        return report

    async def _sample_processes(self, stop: asyncio.Event) -> None:
        """Every 5 s: each live bridge's RSS, open file descriptors and asyncio tasks (from its /metrics)."""
        if not self.scenario.sample_processes:
            return
        async with httpx.AsyncClient(timeout=2.0, trust_env=False) as client:
            while not stop.is_set():
                for slot in self.slots:
                    if slot.alive() and slot.pid is not None:
                        sample = await _process_sample(client, slot)
                        if sample is not None:
                            self.process_samples.append(sample)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 5.0)


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """One look at a bridge process (``incarnation``: which start of its slot)."""

    time: float
    instance_id: str
    incarnation: int
    rss_mb: float
    open_fds: int
    tasks: int | None


async def _process_sample(client: httpx.AsyncClient, slot: BridgeSlot) -> ProcessSample | None:
    pid = slot.pid
    try:
        status = Path(f"/proc/{pid}/status").read_text()  # noqa: ASYNC240 - procfs reads never block
        rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return None
    tasks: int | None = None
    port = slot.env.get("BRIDGE_METRICS_PORT")
    with contextlib.suppress(httpx.HTTPError, ValueError):
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
        for line in text.splitlines():
            if line.startswith(TASKS_METRIC):
                tasks = int(float(line.split()[-1]))
    return ProcessSample(time.time(), slot.instance_id, slot.starts, rss_kb / 1024, fds, tasks)


#: The bridge's gauge of live asyncio tasks (``bridge/observability/metrics.py``).
TASKS_METRIC = "kard_bridge_asyncio_tasks"


def _slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (time s, value) points, per minute."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(t for t, _ in points) / n
    my = sum(v for _, v in points) / n
    var = sum((t - mx) ** 2 for t, _ in points)
    if var == 0:
        return 0.0
    return 60 * sum((t - mx) * (v - my) for t, v in points) / var


def process_table(samples: list[ProcessSample], warmup: float = 120.0) -> tuple[str, list[str]]:
    """The soak's table (per process: RSS, fds, tasks at start/end/max and slopes) and its flatness failures.

    The first ``warmup`` seconds of each process are left out (imports, pools and buffers filling). "Flat" means:
    RSS grows less than 1 MB/min and the mean of the last third is within 5 % + 10 MB of the middle third;
    open fds and tasks have a slope under 1/min and 5/min.
    """
    lines = [
        "| process | samples | RSS MB (first / last / max) | RSS MB/min | fds (first / last / max) | fds/min "
        "| tasks (first / last / max) | tasks/min |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failures: list[str] = []
    by_process: dict[tuple[str, int], list[ProcessSample]] = {}
    for s in samples:
        by_process.setdefault((s.instance_id, s.incarnation), []).append(s)
    for (name, incarnation), rows in sorted(by_process.items()):
        start = rows[0].time + warmup
        kept = [r for r in rows if r.time >= start]
        if len(kept) < 6:
            continue
        rss = [(r.time, r.rss_mb) for r in kept]
        fds = [(r.time, float(r.open_fds)) for r in kept]
        tasks = [(r.time, float(r.tasks)) for r in kept if r.tasks is not None]
        rss_slope, fd_slope, task_slope = _slope_per_minute(rss), _slope_per_minute(fds), _slope_per_minute(tasks)

        def trio(points: list[tuple[float, float]], fmt: str = "{:.0f}") -> str:
            if not points:
                return "-"
            values = [v for _, v in points]
            return " / ".join(fmt.format(v) for v in (values[0], values[-1], max(values)))

        lines.append(
            f"| {name}#{incarnation} | {len(kept)} | {trio(rss, '{:.1f}')} | {rss_slope:+.2f} | {trio(fds)} "
            f"| {fd_slope:+.2f} | {trio(tasks)} | {task_slope:+.2f} |"
        )
        third = len(kept) // 3
        middle = sum(v for _, v in rss[third : 2 * third]) / max(1, third)
        last = sum(v for _, v in rss[2 * third :]) / max(1, len(rss) - 2 * third)
        if rss_slope > 1.0 or last > middle * 1.05 + 10:
            failures.append(
                f"{name}#{incarnation}: RSS not flat ({rss_slope:+.2f} MB/min, {middle:.0f} -> {last:.0f} MB)"
            )
        if fd_slope > 1.0:
            failures.append(f"{name}#{incarnation}: open fds grow {fd_slope:+.2f}/min")
        if task_slope > 5.0:
            failures.append(f"{name}#{incarnation}: asyncio tasks grow {task_slope:+.2f}/min")
    return "\n".join(lines), failures


@dataclass(frozen=True, slots=True)
class _Read:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int


async def _read_all(bootstrap: str, topics: tuple[str, ...], partitions: int, *, read_committed: bool) -> list[_Read]:
    """Every record of ``topics`` up to their end offsets (the last stable offsets when ``read_committed``).

    A partition is done when a record at or past ``end - 1`` was seen, or (transaction markers take offsets
    too) when the consumer's position reached the end. Stalls for 60 s raise rather than return a short read.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed" if read_committed else "read_uncommitted",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    out: list[_Read] = []
    try:
        tps = [KafkaTP(t, p) for t in topics for p in range(partitions)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        begins = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, begins[tp])
        seen = {tp: begins[tp] for tp in tps}
        remaining = {tp for tp in tps if ends[tp] > begins[tp]}
        last_progress = time.monotonic()
        while remaining:
            batches = await consumer.getmany(*remaining, timeout_ms=500, max_records=5000)
            for tp, msgs in batches.items():
                for m in msgs:
                    if m.offset < ends[tp]:
                        out.append(
                            _Read(m.topic, m.partition, m.offset, m.key, m.value, tuple(m.headers or ()), m.timestamp)
                        )
                    seen[tp] = max(seen[tp], m.offset + 1)
                if msgs:
                    last_progress = time.monotonic()
            for tp in list(remaining):
                if seen[tp] >= ends[tp] or await consumer.position(tp) >= ends[tp]:
                    remaining.discard(tp)
            if remaining and time.monotonic() - last_progress > 60:
                raise RuntimeError(
                    f"reading {topics} stalled: {sorted((str(tp), seen[tp], ends[tp]) for tp in remaining)}"
                )
        return out
    finally:
        await consumer.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _api_fault(kind: str, sc: Scenario) -> tuple[dict[str, Any], float, bool]:
    """The sandbox fault rule for an ``api-*`` kind, how long to hold it, and whether it can duplicate items."""
    hold = sc.fault_seconds
    if kind == "api-429":
        return {"error_rates": {"429": 0.7}, "retry_after": {"seconds": 1}}, hold, False
    if kind == "api-5xx":
        return {"error_rates": {"500": 0.2, "502": 0.1, "503": 0.1, "504": 0.1}}, hold, False
    if kind == "api-slow":
        return {"latency": {"dist": "uniform", "low": 0.5, "high": 2.5}}, hold, False
    if kind == "api-hang":
        return {"hang": {"rate": 0.3}}, hold, False
    if kind == "api-drop-after":
        return {"drop": {"rate": 0.3, "when": "after"}}, hold, True
    if kind == "api-outage":
        return {"outage": {"duration": sc.outage_seconds, "mode": "503"}}, sc.outage_seconds, False
    raise ValueError(f"unknown API fault {kind!r}")


def run_scenario(scenario: Scenario, workdir: Path, say: Say = print) -> Report:
    """Run ``scenario`` in ``workdir`` (blocking) and return the report; also writes report.json/report.md there."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # the runner's own clients retry through faults
    report = asyncio.run(ChaosRun(scenario, workdir, say).run())
    (workdir / "report.json").write_bytes(orjson.dumps(report.as_json(), option=orjson.OPT_INDENT_2))
    (workdir / "report.md").write_text(report.table() + "\n", encoding="utf-8")
    return report
