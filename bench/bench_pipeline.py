"""End-to-end throughput, latency, CPU and memory of kard-bridge against a ceiling, a baseline and a peer, in one run.

Run: ``.venv/bin/python bench/bench_pipeline.py [--records 200000] [--backlog 1000000 | --skip-backlog]
[--latencies 0,20] [--contenders ceiling,bridge,batch,baseline,peer] [--paced all|bridge|none]
[--bootstrap HOST:PORT] [--profile] [--no-md]``. Without ``--bootstrap`` a local single KRaft broker starts
in a temp dir (bridge.devenv) and stops at the end; the Kard sandbox always runs as a child process
(``--record ids``: it keeps each accepted item's id and arrival time, for the API latency).

Data, produced before any contender starts (bridge.devenv.generate, 350-900 byte values keyed by user id):
``mix``: ``--records`` events into three fresh input topics (~80 % card transactions, 10 % eligibility, 10 %
attributions); ``txn``: ``--peer-records`` transaction and matched-transaction events only, into one fresh
card-transaction topic (what the peer's pipeline handles); ``backlog``: ``--backlog`` mixed events.

Contenders, each a separate process with a fresh consumer group reading its topics from the beginning:

* **ceiling**: an aiokafka consumer (the bridge's consumer settings, uvloop) that ``orjson.loads`` every
  value and does nothing else, then commits once (on ``mix`` and on ``txn``);
* **kard-bridge +N ms**: ``python -m bridge run`` with default settings against the sandbox with N ms added
  to every API answer, one row per ``--latencies`` value, on ``mix`` and on ``txn``;
* **kard-bridge per-batch results**: the same with ``BRIDGE_RESULT_MODE=batch`` (one result record per API
  request; the harness asks ``--print-config`` first and reports n/a if the setting is not there);
* **baseline**: bench/baseline_bridge.py, the bridge a user writes in an afternoon (poll, POST, commit);
* **peer**: a Benthos (Redpanda Connect engine) binary built by bench/peer/build_connect.py running
  bench/peer/connect.yaml (kafka_franz input, bloblang mapping, batches of 500 / linger, http_client), on
  ``txn``;
* **backlog**: kard-bridge at the first latency on the ``backlog`` data (bounded memory);
* **paced** rows (``--paced``): records are produced at ``--paced-fraction`` (0.5) of the bridge's measured
  records/s on the same data while the contender runs, for ``--paced-seconds``; latency p50/p99 come from
  these rows (pipeline_latency.py says exactly what they measure).

Every contender is timed the same way from outside: from the moment its group is first seen ``Stable``
(paced: from the moment the paced producer starts) to the moment its committed offsets reach the end offset
of every input partition (polled every 50 ms). CPU seconds come from /proc/<pid>/stat over that window; peak
RSS is the kernel's VmHWM of the process. Machines are noisy (2 cores shared with the broker and the sandbox),
so read the ratios, which come from one run on one machine state. Figures are printed, written as JSON to
``bench/results/pipeline-<date>.json`` and, unless ``--no-md``, as BENCHMARKS.md at the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition
from baseline_bridge import Baseline
from pipeline_latency import api_arrivals, api_latencies, input_timestamps, percentiles, result_latencies
from pipeline_report import ANALYSIS_MARKER, machine, markdown, table, targets

from bridge.config import BridgeSettings, KafkaSettings
from bridge.devenv.generate import GeneratedEvent, TopicNames, generate_events
from bridge.devenv.kafka import KafkaCluster
from bridge.devenv.kafka_admin import create_topics_async, delete_topics_async, describe_partitions_async
from bridge.devenv.kafka_node import DEFAULT_JVM_OPTIONS
from bridge.sandbox.process import SandboxProcess, start_sandbox

__all__ = ["main"]

_TICKS = os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parent.parent
_RESULTS = _ROOT / "bench" / "results"
_BASELINE = _ROOT / "bench" / "baseline_bridge.py"
_PEER_DIR = _ROOT / "bench" / "peer"
_PEER_CONFIG = _PEER_DIR / "connect.yaml"
_POLL = 0.05
_WORKER = "--worker"
_SCRUB = ("KAFKA_", "KARD_", "BRIDGE_", "PEER_")
_SELF = str(Path(__file__).resolve())
_TXN_KINDS = ("transaction", "matched_transaction")
_CONTENDERS = ("ceiling", "bridge", "batch", "baseline", "peer")
_NAMES = {
    "bridge": "kard-bridge",
    "batch": "kard-bridge per-batch results",
    "baseline": "baseline (afternoon bridge)",
    "peer": "peer (Benthos + franz-go)",
    "backlog": "kard-bridge",
    "profile": "kard-bridge",
}


# -- /proc -----------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a live process (0.0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS


def _memory_mb(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS = VmHWM) in MB of a live process; zeros once it is gone."""
    values = {"VmRSS": 0.0, "VmHWM": 0.0}
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in values:
                values[name] = int(rest.split()[0]) / 1024
    return values["VmRSS"], values["VmHWM"]


# -- data sets -------------------------------------------------------------------------------------------


@dataclass
class DataSet:
    """Input topics holding ``records`` events; ``ends`` is every input partition's end offset."""

    label: str
    topics: TopicNames
    records: int
    only_transactions: bool = False
    description: str = ""
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    produce_seconds: float = 0.0
    value_bytes: int = 0

    @property
    def inputs(self) -> list[str]:
        if self.only_transactions:
            return [self.topics.transactions]
        return [self.topics.transactions, self.topics.eligibility, self.topics.attributions]

    @property
    def outputs(self) -> list[str]:
        return [f"{t}{suffix}" for t in self.inputs for suffix in (".results", ".dlq")]


def _events(spec: dict[str, Any]) -> Iterator[GeneratedEvent]:
    """``spec['count']`` generated events, only of ``spec['kinds']`` when given."""
    names = TopicNames(*spec["topics"])
    kinds = set(spec.get("kinds") or ())
    events = generate_events(
        spec["count"] * (3 if kinds else 1), users=spec["users"], seed=spec["seed"], prefix=spec["prefix"], topics=names
    )
    if kinds:
        events = (e for e in events if e.event_type in kinds)
    return itertools.islice(events, spec["count"])


async def _produce_part(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: generate one share of the events and produce them in per-partition batches, unawaited."""
    partitions: int = spec["partitions"]
    producer = AIOKafkaProducer(
        bootstrap_servers=spec["bootstrap"], acks=1, linger_ms=20, max_batch_size=512 * 1024, client_id="bench-data"
    )
    await producer.start()
    try:
        started = time.perf_counter()
        by_key: dict[bytes, int] = {}
        open_batches: dict[tuple[str, int], Any] = {}
        pending: list[asyncio.Future[Any]] = []
        count = size = 0
        for event in _events(spec):
            part = by_key.get(event.key)
            if part is None:  # Kafka's default partitioner (murmur2), computed once per key
                part = by_key[event.key] = (murmur2(event.key) & 0x7FFFFFFF) % partitions
            slot = (event.topic, part)
            batch = open_batches.get(slot)
            if batch is None:
                batch = open_batches[slot] = producer.create_batch()
            if batch.append(key=event.key, value=event.value, timestamp=None) is None:  # full: ship it
                pending.append(await producer.send_batch(batch, event.topic, partition=part))
                batch = open_batches[slot] = producer.create_batch()
                batch.append(key=event.key, value=event.value, timestamp=None)
            count += 1
            size += len(event.value)
        for (topic, part), batch in open_batches.items():
            pending.append(await producer.send_batch(batch, topic, partition=part))
        await asyncio.gather(*pending)
        return {"records": count, "bytes": size, "seconds": time.perf_counter() - started}
    finally:
        await producer.stop()


async def _paced_part(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: connect, say ready, wait for a line on stdin, then produce ``count`` events at ``rate``/s."""
    producer = AIOKafkaProducer(bootstrap_servers=spec["bootstrap"], acks=1, linger_ms=2, client_id="bench-paced")
    await producer.start()
    try:
        events = _events(spec)
        print(orjson.dumps({"ready": True}).decode(), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        rate, count = float(spec["rate"]), int(spec["count"])
        started, t0 = time.time(), time.perf_counter()
        sent = size = 0
        futures: list[asyncio.Future[Any]] = []
        while sent < count:
            due = min(count, int((time.perf_counter() - t0) * rate) + 1)
            for event in itertools.islice(events, due - sent):
                futures.append(await producer.send(event.topic, event.value, key=event.key))
                size += len(event.value)
            sent = due
            await asyncio.sleep(0.002)
        await asyncio.gather(*futures)
        seconds = time.perf_counter() - t0
        return {"records": sent, "bytes": size, "seconds": seconds, "started": started, "rate": sent / seconds}
    finally:
        await producer.stop()


async def _end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p.partition) for t in topics for p in await describe_partitions_async(bootstrap, t)]
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def _new_dataset(
    args: argparse.Namespace, ctx: dict[str, Any], label: str, count: int, *, txn: bool, description: str
) -> DataSet:
    """Create the topics of a data set (inputs, results, DLQs); nothing produced yet."""
    prefix = f"bench-{ctx['run_id']}-{label}-{uuid.uuid4().hex[:4]}"
    topics = TopicNames(f"{prefix}.card-transactions", f"{prefix}.eligibility", f"{prefix}.attributions")
    data = DataSet(label, topics, count, only_transactions=txn, description=description)
    await create_topics_async(ctx["bootstrap"], data.inputs + data.outputs, partitions=args.partitions)
    ctx["datasets"].append(data)
    return data


def _producer_spec(args: argparse.Namespace, ctx: dict[str, Any], data: DataSet, count: int, i: int) -> dict[str, Any]:
    return {
        "bootstrap": ctx["bootstrap"],
        "topics": [data.topics.transactions, data.topics.eligibility, data.topics.attributions],
        "partitions": args.partitions,
        "count": count,
        "users": args.users,
        "seed": args.seed * 1000 + i + (500 if data.only_transactions else 0),
        "prefix": f"{data.label}{uuid.uuid4().hex[:4]}{i}",
        "kinds": list(_TXN_KINDS) if data.only_transactions else None,
    }


async def _make_dataset(
    args: argparse.Namespace, ctx: dict[str, Any], label: str, count: int, *, txn: bool = False, description: str = ""
) -> DataSet:
    data = await _new_dataset(args, ctx, label, count, txn=txn, description=description)
    shares = [count // args.producers + (i < count % args.producers) for i in range(args.producers)]
    started = time.perf_counter()
    procs = [_spawn_worker("produce", _producer_spec(args, ctx, data, n, i)) for i, n in enumerate(shares) if n]
    reports = [await _worker_result(p) for p in procs]
    data.produce_seconds = time.perf_counter() - started
    data.value_bytes = sum(r["bytes"] for r in reports)
    data.ends = await _end_offsets(ctx["bootstrap"], data.inputs)
    if sum(data.ends.values()) != count:
        raise RuntimeError(f"{label}: expected {count} records in Kafka, found {sum(data.ends.values())}")
    print(
        f"data {label}: {count:,} records, {data.value_bytes / count:.0f} B/value avg, produced in "
        f"{data.produce_seconds:.1f} s ({count / data.produce_seconds:,.0f} records/s, {args.producers} processes)",
        flush=True,
    )
    return data


# -- the ceiling contender -------------------------------------------------------------------------------


async def _ceiling(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: consume the topics with a fresh group, ``orjson.loads`` every value, commit once at the end."""
    kwargs = KafkaSettings().to_consumer_kwargs()  # the bridge's consumer settings (fetch sizes, waits)
    kwargs["bootstrap_servers"] = spec["bootstrap"]
    kwargs["client_id"] = "bench-ceiling"
    consumer = AIOKafkaConsumer(*spec["topics"], group_id=spec["group"], **kwargs)
    await consumer.start()
    try:
        loads, expected, count, first = orjson.loads, spec["expected"], 0, 0.0
        while count < expected:
            batches = await consumer.getmany(timeout_ms=100)
            if batches and not first:
                first = time.time()
            for messages in batches.values():
                for message in messages:
                    loads(message.value)
                count += len(messages)
        last = time.time()
        await consumer.commit()
        # Report, then stay alive (as a bridge would) until the harness has read /proc and sends SIGTERM.
        print(orjson.dumps({"records": count, "first": first, "last": last}).decode(), flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        return {}
    finally:
        await consumer.stop()


# -- worker processes ------------------------------------------------------------------------------------


def _clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
    env.update(extra or {})
    return env


def _spawn_worker(kind: str, spec: dict[str, Any], *, stdin: int = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    argv = [sys.executable, _SELF, _WORKER, kind, orjson.dumps(spec).decode()]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=stdin, env=_clean_env())


async def _worker_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = await asyncio.to_thread(proc.communicate)
    if proc.returncode != 0:
        raise RuntimeError(f"worker exited with {proc.returncode}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


def _worker_main(kind: str, spec_json: str) -> None:
    import uvloop

    spec = orjson.loads(spec_json)
    job = {"produce": _produce_part, "ceiling": _ceiling, "paced": _paced_part}[kind]
    result = uvloop.run(job(spec))
    if result:
        print(orjson.dumps(result).decode(), flush=True)


# -- measuring one contender -----------------------------------------------------------------------------


@dataclass
class Measurement:
    """One row of the table (times in seconds, memory in MB)."""

    contender: str
    data: str
    records: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    sandbox_cpu_seconds: float = 0.0
    kind: str = ""  # ceiling | bridge | batch | baseline | peer | backlog | profile | paced
    trace: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, committed fraction, RSS MB)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class _Watcher:
    """Polls one group's state and committed offsets."""

    def __init__(self, admin: AIOKafkaAdminClient, group: str, data: DataSet) -> None:
        self.admin, self.group, self.data = admin, group, data
        self._coordinator: int | None = None

    @property
    def total(self) -> int:
        return sum(self.data.ends.values())

    async def _node(self) -> int:
        if self._coordinator is None:
            self._coordinator = int(await self.admin.find_coordinator(self.group))
        return self._coordinator

    async def stable(self) -> bool:
        """True once the group is Stable with members (it has been assigned and is fetching)."""
        try:
            return await self._stable()
        except KafkaError:  # e.g. the coordinator is still loading (__consumer_offsets being created)
            return False

    async def _stable(self) -> bool:
        responses = await self.admin.describe_consumer_groups([self.group], group_coordinator_id=await self._node())
        groups = responses[0].to_object()["groups"]
        return bool(groups) and groups[0]["state"] == "Stable" and bool(groups[0]["members"])

    async def done(self) -> int:
        committed = await self.admin.list_consumer_group_offsets(self.group, group_coordinator_id=await self._node())
        return sum(min(committed[tp].offset, end) for tp, end in self.data.ends.items() if tp in committed)


@dataclass
class _Paced:
    """A paced producer process: started and connected before the contender, told to go once it is Stable."""

    proc: subprocess.Popen[bytes]
    rate: float
    report: dict[str, Any] = field(default_factory=dict)

    @classmethod
    async def start(cls, spec: dict[str, Any]) -> _Paced:
        proc = _spawn_worker("paced", spec, stdin=subprocess.PIPE)
        assert proc.stdout is not None
        line = await asyncio.to_thread(proc.stdout.readline)
        if b"ready" not in line:
            proc.kill()
            proc.wait()
            raise RuntimeError(f"the paced producer did not start (exit {proc.poll()})")
        return cls(proc, float(spec["rate"]))

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"go\n")
        self.proc.stdin.flush()  # communicate() closes it later

    async def finish(self, bootstrap: str, data: DataSet) -> None:
        out, _ = await asyncio.to_thread(self.proc.communicate)
        if self.proc.returncode != 0:
            raise RuntimeError(f"the paced producer exited with {self.proc.returncode}")
        self.report = orjson.loads(out.splitlines()[-1])
        data.value_bytes = self.report["bytes"]
        data.produce_seconds = self.report["seconds"]
        data.ends = await _end_offsets(bootstrap, data.inputs)
        data.records = sum(data.ends.values())


async def _measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    group: str,
    data: DataSet,
    ctx: dict[str, Any],
    *,
    sandbox: SandboxProcess | None,
    timeout: float,
    paced: _Paced | None = None,
) -> Measurement:
    """Start the contender, time it from group Stable (paced: from the producer's start) to fully committed,
    stop it (SIGTERM) and report."""
    watcher = _Watcher(ctx["admin"], group, data)
    log_path = ctx["logs"] / f"{group}.log"
    proc = _start(argv, env, log_path)
    spawned = time.monotonic()
    sbx = sandbox.pid if sandbox else None
    t_first = cpu0 = sbx0 = wall_first = 0.0
    samples: list[tuple[float, float, float]] = []
    peak = 0.0
    last_note = spawned
    producing: asyncio.Task[None] | None = None
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before finishing; log: {log_path}")
            now = time.monotonic()
            if now - spawned > timeout:
                raise TimeoutError(f"{name} did not finish in {timeout:.0f} s; log: {log_path}")
            if not t_first:
                if await watcher.stable():
                    if paced is not None:
                        paced.go()
                        producing = asyncio.create_task(paced.finish(ctx["bootstrap"], data))
                    t_first, cpu0, wall_first = time.monotonic(), _cpu_seconds(proc.pid), time.time()
                    sbx0 = _cpu_seconds(sbx) if sbx else 0.0
            else:
                if producing is not None and producing.done():
                    producing.result()  # raises if the producer failed
                    producing = None
                ready = bool(data.ends) and producing is None
                done = await watcher.done() if ready else 0
                rss, hwm = _memory_mb(proc.pid)
                peak = max(peak, hwm)
                samples.append((round(now - t_first, 3), done / watcher.total if ready else 0.0, rss))
                if ready and done >= watcher.total:
                    t_end, wall_end = time.monotonic(), time.time()
                    cpu1, sbx1 = _cpu_seconds(proc.pid), (_cpu_seconds(sbx) if sbx else 0.0)
                    break
                if now - last_note >= 10:
                    last_note = now
                    if ready:
                        rate = done / (now - t_first)
                        print(
                            f"  … {name}: {100 * done / watcher.total:3.0f} %, {rate:,.0f} records/s, RSS {rss:.0f} MB"
                        )
                    else:
                        print(f"  … {name}: producing at {paced.rate if paced else 0:,.0f} records/s, RSS {rss:.0f} MB")
            await asyncio.sleep(_POLL)
        exit_code, report = await _stop(proc, log_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if producing is not None:
            producing.cancel()
        if paced is not None and paced.proc.poll() is None:
            paced.proc.kill()
            paced.proc.wait()
    details: dict[str, Any] = {"exit_code": exit_code, "log": str(log_path), "startup_seconds": t_first - spawned}
    if report and "first" in report:  # the ceiling's own clock: how far the outside view is from first/last record
        details["self_timed_records_per_s"] = report["records"] / max(1e-9, report["last"] - report["first"])
        details["stable_to_first_record_s"] = report["first"] - wall_first
        details["last_record_to_committed_seen_s"] = wall_end - report["last"]
    elif report:
        details["own_counters"] = report
    if paced is not None:
        details["paced_producer"] = paced.report
    return Measurement(
        name, data.label, watcher.total, t_end - t_first, cpu1 - cpu0, peak, sbx1 - sbx0,
        trace=samples, details=details,
    )  # fmt: skip


def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        # Only workers print (one JSON line) on stdout; a bridge's log lines go to the file, never to a full pipe.
        stdout = subprocess.PIPE if _WORKER in argv else log
        return subprocess.Popen(argv, env=env, cwd=_ROOT, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL)


async def _stop(proc: subprocess.Popen[bytes], log_path: Path) -> tuple[int, dict[str, Any] | None]:
    """SIGTERM, wait up to 60 s (then SIGKILL); returns the exit code and the last JSON object line it printed
    (a worker's report on stdout, or the baseline's counters in its log)."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = await asyncio.to_thread(proc.communicate)
    if out is None:
        with contextlib.suppress(OSError):
            out = (await asyncio.to_thread(log_path.read_bytes))[-8192:]
    lines = [line for line in (out or b"").splitlines() if line.startswith(b"{") and line.endswith(b"}")]
    report = None
    with contextlib.suppress(orjson.JSONDecodeError):
        report = orjson.loads(lines[-1]) if lines else None
    return int(proc.returncode), report if isinstance(report, dict) else None


# -- the contenders --------------------------------------------------------------------------------------


def _bridge_values(args: argparse.Namespace) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in args.bridge_env)


def _bridge_setting(args: argparse.Namespace, name: str) -> float:
    """A numeric bridge setting as the bridge rows run it (``--bridge-env`` or the default)."""
    value = _bridge_values(args).get(f"BRIDGE_{name.upper()}")
    return float(value) if value is not None else float(BridgeSettings.model_fields[name].default)


def _bridge_env(args: argparse.Namespace, ctx: dict[str, Any], data: DataSet, group: str) -> dict[str, str]:
    sandbox: SandboxProcess = ctx["sandbox"]
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": ctx["bootstrap"],
        "KARD_API_BASE_URL": sandbox.base_url,
        "KARD_CLIENT_ID": sandbox.client_id,
        "KARD_CLIENT_SECRET": sandbox.client_secret,
        "BRIDGE_GROUP_ID": group,
        "BRIDGE_TRANSACTIONS_TOPIC": data.topics.transactions,
        "BRIDGE_ELIGIBILITY_TOPIC": "" if data.only_transactions else data.topics.eligibility,
        "BRIDGE_ATTRIBUTIONS_TOPIC": "" if data.only_transactions else data.topics.attributions,
        "BRIDGE_METRICS_PORT": "0",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    env.update(_bridge_values(args))
    return _clean_env(env)


def _token(sandbox: SandboxProcess) -> str:
    body = {"client_id": sandbox.client_id, "client_secret": sandbox.client_secret}
    response = httpx.post(f"{sandbox.base_url}/v2/auth/token", json=body, timeout=10.0)
    response.raise_for_status()
    return str(response.json()["access_token"])


def _peer_env(args: argparse.Namespace, ctx: dict[str, Any], data: DataSet, group: str) -> dict[str, str]:
    sandbox: SandboxProcess = ctx["sandbox"]
    return _clean_env(
        {
            "PEER_BROKERS": ctx["bootstrap"],
            "PEER_TOPICS": ",".join(data.inputs),
            "PEER_GROUP": group,
            "PEER_URL": sandbox.base_url,
            "PEER_TOKEN": _token(sandbox),
            "PEER_LINGER": f"{1000 * _bridge_setting(args, 'linger'):g}ms",
            "PEER_MAX_IN_FLIGHT": str(int(_bridge_setting(args, "max_in_flight"))),
            "PEER_COMMIT_PERIOD": f"{1000 * _bridge_setting(args, 'commit_interval'):g}ms",
        }
    )


def _launch(
    args: argparse.Namespace, ctx: dict[str, Any], kind: str, data: DataSet, group: str, profile: Path | None
) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of one contender process."""
    if kind == "ceiling":
        spec = {"bootstrap": ctx["bootstrap"], "group": group, "topics": data.inputs, "expected": data.records}
        return [sys.executable, _SELF, _WORKER, "ceiling", orjson.dumps(spec).decode()], _clean_env()
    if kind == "peer":
        return [ctx["peer"]["path"], "run", str(_PEER_CONFIG)], _peer_env(args, ctx, data, group)
    env = _bridge_env(args, ctx, data, group)
    if kind == "baseline":
        return [sys.executable, str(_BASELINE)], env
    if kind == "batch":
        env["BRIDGE_RESULT_MODE"] = "batch"
    return [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "bridge", "run"], env


async def _produced_stamps(ctx: dict[str, Any], data: DataSet) -> dict[str, int]:
    cache: dict[str, dict[str, int]] = ctx["stamps"]
    if data.topics.transactions not in cache:
        cache[data.topics.transactions] = await input_timestamps(ctx["bootstrap"], data.ends, data.topics.transactions)
    return cache[data.topics.transactions]


async def _run_contender(
    args: argparse.Namespace,
    ctx: dict[str, Any],
    kind: str,
    name: str,
    data: DataSet,
    latency_ms: float,
    *,
    profile: Path | None = None,
    paced_rate: float = 0.0,
) -> Measurement:
    """Run one contender (``paced_rate``: while a producer fills ``data`` at that rate) and collect its figures."""
    sandbox: SandboxProcess = ctx["sandbox"]
    uses_api = kind != "ceiling"
    if uses_api:
        sandbox.control.reset()
        if latency_ms:
            sandbox.control.set_faults({"latency": {"fixed": latency_ms / 1000}})
    group = f"bench-{ctx['run_id']}-{kind}-{uuid.uuid4().hex[:6]}"
    before = await _end_offsets(ctx["bootstrap"], data.outputs)
    argv, env = _launch(args, ctx, kind, data, group, profile)
    paced = None
    if paced_rate:
        spec = _producer_spec(args, ctx, data, max(1, int(paced_rate * args.paced_seconds)), 0)
        paced = await _Paced.start(spec | {"rate": paced_rate})
    try:
        row = await _measure(
            name, argv, env, group, data, ctx, sandbox=sandbox if uses_api else None, timeout=args.timeout, paced=paced
        )
    finally:
        if uses_api:
            sandbox.control.clear_faults()
    row.kind = "paced" if paced_rate else kind
    row.details.update(latency_ms=latency_ms, contender_kind=kind, group=group)
    if not uses_api:
        return row
    after = await _end_offsets(ctx["bootstrap"], data.outputs)
    grown = {t: 0 for t in data.outputs}
    for tp, end in after.items():
        grown[tp.topic] += end - before.get(tp, 0)
    results = sum(n for t, n in grown.items() if t.endswith(".results"))
    failures = sum(n for t, n in grown.items() if t.endswith(".dlq"))
    stats = sandbox.control.stats()
    accepted = sum(v["accepted"] for v in stats["items"].values())
    row.details.update(
        result_records=results, failure_records=failures,
        api_requests=stats["requests_total"] - stats["token_requests"],
        api_items_accepted=accepted,
        api_non_2xx=sum(n for c in stats["requests"].values() for s, n in c.items() if not str(s).startswith("2")),
        api_max_in_flight=stats["max_in_flight"],
        api_duplicates=sum(v["extra"] for v in stats["duplicates"].values()),
        api_by_endpoint={
            e: {"requests": sum(c.values()), "items": stats["items"].get(e, {}).get("accepted", 0),
                "max_in_flight": stats["max_in_flight_by_endpoint"].get(e, 0)}
            for e, c in stats["requests"].items()
        },
    )  # fmt: skip
    if kind in ("bridge", "backlog", "profile") and results + failures != data.records:
        print(f"  ! {name}: {results} results + {failures} failures for {data.records} inputs", flush=True)
    if kind in ("baseline", "peer") and accepted < data.records:
        print(f"  ! {name}: the API accepted {accepted} items for {data.records} inputs", flush=True)
    if kind not in ("backlog", "profile"):
        await _latencies(ctx, row, kind, data, before, after)
    return row


async def _latencies(
    ctx: dict[str, Any],
    row: Measurement,
    kind: str,
    data: DataSet,
    before: dict[TopicPartition, int],
    after: dict[TopicPartition, int],
) -> None:
    """Fill ``api_latency_ms`` (every contender) and ``result_latency_ms`` (kard-bridge) from this run."""
    try:
        produced = await _produced_stamps(ctx, data)
        arrivals = await api_arrivals(ctx["sandbox"].base_url)
        samples, missing = api_latencies(arrivals, produced)
        row.details["api_latency_ms"] = percentiles(samples) | {"unmatched": missing}
        if kind in ("bridge", "batch"):
            samples, count = await result_latencies(ctx["bootstrap"], before, after)
            row.details["result_latency_ms"] = percentiles(samples) | {"records": count}
    except (KafkaError, httpx.HTTPError, TimeoutError, KeyError, orjson.JSONDecodeError) as exc:
        row.details["latency_error"] = repr(exc)
        print(f"  ! {row.contender}: latency not measured: {exc!r}", flush=True)


def _batch_mode_problem(args: argparse.Namespace) -> str | None:
    """None when the bridge accepts ``BRIDGE_RESULT_MODE=batch``, else why the contender is n/a."""
    env = _clean_env(_bridge_values(args) | {"BRIDGE_RESULT_MODE": "batch", "BRIDGE_METRICS_PORT": "0"})
    done = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--print-config"], cwd=_ROOT, env=env, capture_output=True,
        text=True, timeout=60, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        first = (done.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"the bridge rejects BRIDGE_RESULT_MODE=batch: {first}"
    try:
        mode = orjson.loads(done.stdout).get("bridge", {}).get("result_mode")
    except orjson.JSONDecodeError:
        return "could not read `python -m bridge run --print-config`"
    if mode == "batch":
        return None
    return "setting not implemented (BRIDGE_RESULT_MODE=batch is ignored: --print-config shows no result_mode)"


def _prepare_peer(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    """Build (or reuse) the peer binary; on failure the peer rows become n/a with the reason."""
    sys.path.insert(0, str(_PEER_DIR))
    import build_connect

    ctx["peer_why"] = build_connect.WHY_NOT_CONNECT
    if args.peer_binary:
        ctx["peer"] = {"path": args.peer_binary, "modules": "given with --peer-binary", "build_seconds": 0.0}
        return
    print("building (or reusing) the peer binary …", flush=True)
    try:
        ctx["peer"] = build_connect.build()
    except RuntimeError as exc:
        ctx["peer_problem"] = f"the peer could not be built: {exc}".splitlines()[0][:300]
        ctx["peer_build_error"] = str(exc)
        print(f"  ! {ctx['peer_problem']}", flush=True)
        return
    info = ctx["peer"]
    print(
        f"peer: {info['path']} ({info['size_mb']:.1f} MB, "
        + ("reused" if info["reused"] else f"built in {info['build_seconds']:.0f} s")
        + f", {info['go']})",
        flush=True,
    )


async def _api_latency(ctx: dict[str, Any], latency_ms: float, requests: int = 20, items: int = 100) -> float:
    """Median client-side time of sequential ``items``-item transaction POSTs at this added latency, in ms."""
    sandbox: SandboxProcess = ctx["sandbox"]
    sandbox.control.reset()
    if latency_ms:
        sandbox.control.set_faults({"latency": {"fixed": latency_ms / 1000}})
    mapper = Baseline()
    names = TopicNames()
    events = generate_events(requests * items * 3, seed=99, prefix=f"probe{latency_ms:g}", topics=names)
    bodies: list[list[dict[str, Any]]] = [[]]
    for event in events:
        if event.event_type in _TXN_KINDS:
            if len(bodies[-1]) == items:
                if len(bodies) == requests:
                    break
                bodies.append([])
            bodies[-1].append(mapper.map(names.transactions, orjson.loads(event.value))[1])
    took: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=30.0) as client:
            client.headers["Authorization"] = f"Bearer {await asyncio.to_thread(_token, sandbox)}"
            for body in bodies:
                started = time.perf_counter()
                response = await client.post("/v2/issuers/org-demo/transactions", json={"data": body})
                took.append(1000 * (time.perf_counter() - started))
                response.raise_for_status()
    finally:
        sandbox.control.clear_faults()
        sandbox.control.reset()
    return statistics.median(took)


Step = tuple[str, str, Callable[[], Awaitable[Measurement]]]


def _find_row(ctx: dict[str, Any], kind: str, data: str, latency_ms: float) -> Measurement | None:
    rows: list[Measurement] = ctx["rows"]
    return next(
        (r for r in rows if r.kind == kind and r.data == data and r.details.get("latency_ms") == latency_ms), None
    )


def _paced_step(
    args: argparse.Namespace, ctx: dict[str, Any], kind: str, label: str, latency_ms: float
) -> Callable[[], Awaitable[Measurement]]:
    """A paced run of ``kind`` at ``--paced-fraction`` of kard-bridge's records/s on ``label`` data."""

    async def run() -> Measurement:
        base = _find_row(ctx, "bridge", label, latency_ms)
        if base is None:
            raise RuntimeError(f"no kard-bridge +{latency_ms:g} ms row on {label} data to take the rate from")
        if latency_ms not in ctx["api_latency_ms"]:
            ctx["api_latency_ms"][latency_ms] = await _api_latency(ctx, latency_ms)
        rate = args.paced_fraction * base.rate
        name = f"paced {rate:,.0f}/s: {_NAMES[kind]} +{latency_ms:g} ms"
        description = f"produced at {rate:,.0f} records/s while {_NAMES[kind]} +{latency_ms:g} ms ran"
        data = await _new_dataset(args, ctx, label, 0, txn=label == "txn", description=description)
        return await _run_contender(args, ctx, kind, name, data, latency_ms, paced_rate=rate)

    return run


async def _contenders(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    """Produce the data, then run every contender in turn; a failed contender is reported and skipped."""
    rows: list[Measurement] = ctx["rows"]
    chosen = set(args.contenders)
    mix = await _make_dataset(args, ctx, "mix", args.records, description="three topics, ~80 % card transactions")
    txn = None
    if "peer" in chosen:
        txn = await _make_dataset(
            args, ctx, "txn", args.peer_records, txn=True,
            description="card-transaction topic only: transaction and matched-transaction events",
        )  # fmt: skip
    backlog = None
    if not args.skip_backlog:
        backlog = await _make_dataset(args, ctx, "backlog", args.backlog, description="backlog for the RSS row")
    skipped: list[dict[str, str]] = ctx["skipped"]
    batch_problem = _batch_mode_problem(args) if "batch" in chosen else None
    peer_problem = ctx.get("peer_problem")
    first = args.latencies[0]
    plan: list[Step] = []

    def add(kind: str, data: DataSet, ms: float, **kw: Any) -> None:
        name = "ceiling (aiokafka + orjson.loads)" if kind == "ceiling" else f"{_NAMES[kind]} +{ms:g} ms"
        if kind == "backlog":
            name += f", {data.records:,} backlog"
        if kind == "profile":
            name += ", cProfile"
        problem = batch_problem if kind == "batch" else peer_problem if kind == "peer" else None
        if problem:
            skipped.append({"contender": f"{name} ({data.label})", "reason": problem})
            return
        plan.append((kind, name, lambda: _run_contender(args, ctx, kind, name, data, ms, **kw)))

    if "ceiling" in chosen:
        add("ceiling", mix, first)
    for ms in args.latencies:
        for kind in ("bridge", "batch", "baseline"):
            if kind in chosen or (kind == "bridge" and args.paced != "none"):
                add(kind, mix, ms)
    if txn is not None:
        if "ceiling" in chosen:
            add("ceiling", txn, first)
        for ms in args.latencies:
            add("bridge", txn, ms)
            if "batch" in chosen:
                add("batch", txn, ms)
            add("peer", txn, ms)
    if backlog is not None:
        add("backlog", backlog, first)
    if args.paced != "none":  # kard-bridge always; with --paced all, every other chosen contender too
        others = args.paced == "all"
        mix_kinds = ["bridge"] + [k for k in ("batch", "baseline") if others and k in chosen]
        mix_kinds = [k for k in mix_kinds if not (k == "batch" and batch_problem)]
        txn_kinds = ["bridge"] + ([] if peer_problem else ["peer"]) if txn is not None and others else []
        for ms in args.latencies:
            steps = [(k, "mix") for k in mix_kinds] + [(k, "txn") for k in txn_kinds]
            for kind, label in steps:
                name = f"paced {_NAMES[kind]} +{ms:g} ms ({label})"
                plan.append(("paced", name, _paced_step(args, ctx, kind, label, ms)))
    if args.profile:
        ctx["profile"] = _RESULTS / f"pipeline-{ctx['stamp']}.prof"
        add("profile", mix, first, profile=ctx["profile"])
    for _kind, name, run in plan:
        try:
            row = await run()
        except Exception as exc:  # one contender's failure (or a harness bug) must not lose the other rows
            print(f"  ! {name} failed: {exc!r}", flush=True)
            ctx["failed"].append({"contender": name, "error": repr(exc)})
            continue
        rows.append(row)
        print(f"  done: {row.contender} ({row.data}): {row.rate:,.0f} records/s in {row.seconds:.1f} s", flush=True)


@contextlib.contextmanager
def _broker(args: argparse.Namespace) -> Iterator[str]:
    if args.bootstrap:
        yield args.bootstrap
        return
    root = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    # C2 on (the devenv default is C1 only, for quick test brokers): a benchmark broker should run at full speed.
    options = tuple(o for o in DEFAULT_JVM_OPTIONS if not o.startswith("-XX:TieredStopAtLevel"))
    try:
        print(f"starting a local Kafka broker in {root} …", flush=True)
        with KafkaCluster.create(root, brokers=1, jvm_options=options) as cluster:
            yield cluster.bootstrap_servers
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def _run(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    log_dir = _RESULTS / f"pipeline-{ctx['stamp']}-logs"  # each contender's stderr/stdout, kept with the figures
    log_dir.mkdir(parents=True, exist_ok=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=ctx["bootstrap"], request_timeout_ms=30000)
    await admin.start()
    ctx.update(admin=admin, logs=log_dir)
    try:
        await _warm_up(admin)
        await _contenders(args, ctx)
    finally:
        if not args.keep_topics and args.bootstrap:
            topics = [t for d in ctx["datasets"] for t in d.inputs + d.outputs]
            with contextlib.suppress(Exception):
                await delete_topics_async(ctx["bootstrap"], topics)
        await admin.close()


async def _warm_up(admin: AIOKafkaAdminClient) -> None:
    """Make the broker create and load ``__consumer_offsets`` now, so the first contender does not pay for it."""
    async with asyncio.timeout(120):
        while True:
            try:
                await admin.find_coordinator("bench-warm-up")
                return
            except KafkaError:
                await asyncio.sleep(0.2)


# -- the report ------------------------------------------------------------------------------------------


def _ceilings(rows: Sequence[Measurement]) -> dict[str, float]:
    return {r.data: r.rate for r in rows if r.kind == "ceiling"}


def _ratios(rows: Sequence[Measurement], latencies: Sequence[float]) -> dict[str, float]:
    """Each throughput row over the ceiling on its data, each latency over the first, and bridge over the others."""
    ceilings = _ceilings(rows)
    out: dict[str, float] = {}
    by = {(r.kind, r.data, r.details.get("latency_ms")): r for r in rows if r.kind not in ("paced", "profile")}
    for (kind, data, ms), row in by.items():
        if kind != "ceiling" and ceilings.get(data):
            out[f"{kind}_{data}_{ms:g}ms_over_ceiling"] = row.rate / ceilings[data]
    first = latencies[0]
    for ms in latencies[1:]:
        for kind in ("bridge", "batch", "baseline", "peer"):
            for data in ("mix", "txn"):
                slow, fast = by.get((kind, data, ms)), by.get((kind, data, first))
                if slow and fast and fast.rate:
                    out[f"{kind}_{data}_{ms:g}ms_over_{first:g}ms"] = slow.rate / fast.rate
    for ms in latencies:
        for other, data in (("baseline", "mix"), ("peer", "txn"), ("batch", "mix")):
            bridge, row = by.get(("bridge", data, ms)), by.get((other, data, ms))
            if bridge and row and row.rate:
                out[f"bridge_over_{other}_{data}_{ms:g}ms"] = bridge.rate / row.rate
        batch, peer = by.get(("batch", "txn", ms)), by.get(("peer", "txn", ms))
        if batch and peer and peer.rate:
            out[f"batch_over_peer_txn_{ms:g}ms"] = batch.rate / peer.rate
    return out


def _trace_lines(row: Measurement) -> list[str]:
    """Committed progress and RSS at fixed fractions of the run's time: flat RSS, and how linear progress is
    (paced rows: RSS only, their end offsets are known only once the producer is done)."""
    marks = []
    for target in (0.1, 0.25, 0.5, 0.75, 1.0):
        later = (sample for sample in row.trace if sample[0] >= target * row.seconds)
        hit = next(later, row.trace[-1] if target == 1.0 and row.trace else None)
        if hit is not None:
            done = "" if row.kind == "paced" else f"{100 * hit[1]:.0f} % committed, "
            marks.append(f"{int(target * 100)} % of time: {done}{hit[2]:.0f} MB")
    return [f"  {row.contender} ({row.data}): " + "; ".join(marks)] if marks else []


def _api_line(row: Measurement) -> str:
    parts = [
        f"{e} {v['requests']:,} req × {v['items'] / max(1, v['requests']):.1f} items, max {v['max_in_flight']} at once"
        for e, v in sorted(row.details.get("api_by_endpoint", {}).items(), key=lambda kv: -kv[1]["requests"])
        if e != "token"
    ]
    return f"  {row.contender} ({row.data}): " + ", ".join(parts)


def _top(profile: Path, key: str, count: int = 15) -> str:
    import io

    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs().sort_stats(key).print_stats(count)
    text = out.getvalue()
    return text[text.find("   ncalls") :].rstrip()


def _peer_description(ctx: dict[str, Any]) -> str:
    info = ctx.get("peer")
    if not info:
        return ctx.get("peer_problem", "not run")
    modules = info.get("modules")
    versions = ", ".join(f"{m}@{v}" for m, v in modules.items()) if isinstance(modules, dict) else str(modules)
    built = "reused from the cache" if info.get("reused") else f"built in {info.get('build_seconds', 0):.0f} s"
    return (
        f"`{info['path']}` ({info.get('size_mb', 0):.1f} MB, {built}, {info.get('go', '')}; {versions}) running "
        f"`bench/peer/connect.yaml`. Why not Redpanda Connect itself: {ctx.get('peer_why', '')}"
    )


def _notes(args: argparse.Namespace, ctx: dict[str, Any], ratios: dict[str, float]) -> list[str]:
    notes = [f"{s['contender']}: n/a: {s['reason']}" for s in ctx["skipped"]]
    notes += [f"FAILED: {f['contender']}: {f['error']}" for f in ctx["failed"]]
    notes += [f"ratio {k}: {v:.2f}" for k, v in ratios.items()]
    for ms, value in ctx["api_latency_ms"].items():
        notes.append(f"API latency at +{ms:g} ms (median of 20 sequential 100-item transaction POSTs): {value:.1f} ms")
    notes += [
        "Timing: from the contender's consumer group first seen Stable (paced rows: from the paced producer's "
        "start) to its committed offsets reaching every input partition's end; kard-bridge commits every "
        f"{_bridge_setting(args, 'commit_interval'):g} s, the peer every commit_period (the same), the baseline "
        "after every poll, the ceiling once at the end.",
        "`CPU s/1k`: user + system CPU seconds of the contender's own process (from /proc) in the window, per "
        "1,000 records; `CPU %` the same over the window; the peer (Go) may use both cores, the Python contenders "
        "one. `peak RSS MB`: the process's VmHWM at the end.",
        "`x ceiling`: records/s over the ceiling's on the same data set (`mix` or `txn`) in this run.",
        "The peer handles card transactions only (its data set `txn` has no fraud markers, eligibility or "
        "attributions), maps without validation, writes no result or dead-letter records and does not keep per-key "
        "order across concurrent batches; kard-bridge runs the same `txn` data in the same run for the comparison.",
        "The baseline (bench/baseline_bridge.py) posts each poll's records grouped per request path, commits after "
        "every poll, writes no result or dead-letter records and does not retry.",
    ]
    return notes


def _report(args: argparse.Namespace, ctx: dict[str, Any], started: float) -> None:
    rows: list[Measurement] = ctx["rows"]
    print()
    text = table(rows, _ceilings(rows), ctx["skipped"])
    print(text)
    ratios = _ratios(rows, args.latencies)
    context = {"linger": _bridge_setting(args, "linger"), "api_latency_ms": ctx["api_latency_ms"]}
    verdicts = targets(rows, args.latencies, context)
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    for failure in ctx["failed"]:
        print(f"FAILED: {failure['contender']}: {failure['error']}")
    print("\ntargets:")
    for t in verdicts:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        print(f"  {t['verdict']:<4} {t['target']}: {value} ({'≤' if t['at_most'] else '≥'} {t['limit']:.2f})")
    print("\nprogress and RSS over time (from the committed offsets and /proc):")
    for row in rows:
        for line in _trace_lines(row):
            print(line)
    print("\nAPI requests per endpoint (sandbox counters):")
    for row in rows:
        if row.details.get("api_by_endpoint"):
            print(_api_line(row))
    ceiling_self = {r.data: r.details.get("self_timed_records_per_s") for r in rows if r.kind == "ceiling"}
    for label, rate in ceiling_self.items():
        if rate:
            print(
                f"ceiling on {label} as timed inside its own process (first fetch to last parse): {rate:,.0f} records/s"
            )
    profile: Path | None = ctx.get("profile")
    if profile and profile.exists():
        for key in ("cumulative", "tottime"):
            print(f"\ncProfile of the bridge process, top 15 by {key} ({profile}):")
            print(_top(profile, key))
    _RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join([f".venv/bin/{Path(sys.executable).name}", *sys.argv]),
        "date": ctx["stamp"],
        "wall_seconds": time.monotonic() - started,
        "git": _git_state(),
        "machine": machine(),
        "load_average_start": ctx["load_start"],
        "peer": {**(ctx.get("peer") or {}), "description": _peer_description(ctx)},
        "data": [
            {k: v for k, v in asdict(d).items() if k not in ("ends", "topics")} | {"partitions": len(d.ends)}
            for d in ctx["datasets"]
        ],
        "rows": [asdict(r) | {"records_per_s": r.rate} for r in rows],
        "ratios": ratios,
        "targets": verdicts,
        "api_latency_ms": ctx["api_latency_ms"],
        "skipped": ctx["skipped"],
        "failed": ctx["failed"],
    }
    doc["data"] = [d for d in doc["data"] if d["records"]]
    path = _RESULTS / f"pipeline-{ctx['stamp']}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"\nfigures written to {path.relative_to(_ROOT)}")
    if args.md:
        md = Path(args.md)
        # The hand-written analysis below ANALYSIS_MARKER survives a rerun; everything above it is regenerated.
        old = md.read_text(encoding="utf-8") if md.exists() else ""
        kept = old[old.index(ANALYSIS_MARKER) :] if ANALYSIS_MARKER in old else ""
        md.write_text(markdown(doc, text, _notes(args, ctx, ratios)) + ("\n" + kept if kept else ""), encoding="utf-8")
        print(f"and to {md}")


def _git_state() -> dict[str, Any]:
    """The commit measured, and whether bridge/ had uncommitted changes (figures are only comparable per code)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "bridge_dirty": bool(git("status", "--porcelain", "bridge"))}


def _parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="events of the mixed data set (default 200k)")
    parser.add_argument("--peer-records", type=int, help="events of the transactions-only data set (default --records)")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="events for the RSS/backlog row (default 1M)")
    parser.add_argument("--skip-backlog", action="store_true", help="leave out the backlog row")
    parser.add_argument("--latencies", default="0,20", help="added API latencies in ms, one row each")
    parser.add_argument(
        "--contenders", default=",".join(_CONTENDERS), help=f"which to run, of {','.join(_CONTENDERS)} (default all)"
    )
    parser.add_argument("--paced", choices=("all", "bridge", "none"), default="all", help="paced latency rows")
    parser.add_argument("--paced-seconds", type=float, default=20.0, help="length of each paced run (default 20 s)")
    parser.add_argument("--paced-fraction", type=float, default=0.5, help="paced rate / the bridge's records/s")
    parser.add_argument("--peer-binary", help="use this peer binary instead of building one")
    parser.add_argument("--bootstrap", help="use this Kafka (topics are deleted after) instead of a local broker")
    parser.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6, the catalogue's)")
    parser.add_argument("--users", type=int, default=2000, help="distinct user ids (record keys)")
    parser.add_argument("--seed", type=int, default=7, help="data generator seed")
    parser.add_argument("--producers", type=int, default=2, help="parallel processes producing the data")
    parser.add_argument("--timeout", type=float, default=3600.0, help="give up on a contender after this many s")
    parser.add_argument("--profile", action="store_true", help="add a bridge run under cProfile and print its top")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics on --bootstrap")
    parser.add_argument("--md", default=str(_ROOT / "BENCHMARKS.md"), help="write the report here (BENCHMARKS.md)")
    parser.add_argument("--no-md", dest="md", action="store_const", const="", help="do not write BENCHMARKS.md")
    parser.add_argument(
        "--bridge-env", action="append", default=[], metavar="NAME=VALUE", help="extra bridge setting (repeatable)"
    )
    args = parser.parse_args(argv)
    args.latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    args.peer_records = args.peer_records or args.records
    unknown = set(args.contenders) - set(_CONTENDERS)
    if unknown:
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if not args.latencies or args.records <= 0 or args.backlog <= 0 or args.peer_records <= 0:
        parser.error("--latencies needs at least one value; --records, --peer-records and --backlog must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run every contender once and print the table (or, with ``--worker``, run one worker job)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == [_WORKER]:
        _worker_main(argv[1], argv[2])
        return
    args = _parse(argv)
    import uvloop

    _RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ctx: dict[str, Any] = {
        "rows": [], "failed": [], "skipped": [], "datasets": [], "stamps": {}, "api_latency_ms": {},
        "run_id": uuid.uuid4().hex[:8], "stamp": datetime.now().strftime("%Y-%m-%d-%H%M%S"),
        "load_start": os.getloadavg(),
    }  # fmt: skip
    if "peer" in args.contenders:
        _prepare_peer(args, ctx)
    with _broker(args) as bootstrap, start_sandbox(record="ids") as sandbox:
        print(f"kafka {bootstrap}, sandbox {sandbox.base_url} (pid {sandbox.pid})", flush=True)
        ctx.update(bootstrap=bootstrap, sandbox=sandbox)
        uvloop.run(_run(args, ctx))
    _report(args, ctx, started)


if __name__ == "__main__":
    main()
