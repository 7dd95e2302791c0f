"""End-to-end throughput and memory of kard-bridge against the ceiling for a Python Kafka consumer, in one run.

Run: ``.venv/bin/python bench/bench_pipeline.py [--records 200000] [--backlog 1000000 | --skip-backlog]
[--latencies 0,20] [--bootstrap HOST:PORT] [--profile]``. Without ``--bootstrap`` a local single KRaft broker
starts in a temp dir (bridge.devenv) and stops at the end; the Kard sandbox always runs as a child process.

Data: ``--records`` realistic events (bridge.devenv.generate: ~80 % card transactions, 350-900 bytes, keyed
by user id) are produced into three fresh input topics before any contender starts, and ``--backlog`` more
into three other fresh topics, by ``--producers`` parallel processes (batched ``send_batch``).

Contenders, each a separate process with a fresh consumer group reading its topics from the beginning:

* **ceiling**: an aiokafka consumer (same consumer settings as the bridge, on uvloop) that ``orjson.loads``
  every value and does nothing else, then commits once;
* **kard-bridge +N ms**: ``python -m bridge run`` (default settings) against the sandbox with N ms fixed
  latency added to every API answer, one row per ``--latencies`` value, on the ``--records`` data;
* **kard-bridge backlog**: the same at the first latency on the ``--backlog`` data, started only after all
  of it is in Kafka; its RSS is sampled from /proc while it works through the backlog (bounded buffers:
  the RSS-by-progress line should stay flat).

Every contender is timed the same way from outside: from the moment its group is first seen ``Stable`` (it
is assigned and starts fetching) to the moment its committed offsets reach the end offset of every input
partition (polled every 50 ms). The bridge commits every ``BRIDGE_COMMIT_INTERVAL`` (1 s), so its figure
includes up to 1 s of commit delay. CPU seconds come from /proc/<pid>/stat over that window; peak RSS is
the kernel's VmHWM of the process. Machines are noisy (2 cores shared with the broker and the sandbox), so
read the ratios, which come from one run on one machine state. Figures are printed and written as JSON to
``bench/results/pipeline-<date>.json``. ``--profile`` adds one bridge run under cProfile (not in the ratios)
and prints the top functions by cumulative and by own time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from bridge.config import KafkaSettings
from bridge.devenv.generate import TopicNames, generate_events
from bridge.devenv.kafka import KafkaCluster
from bridge.devenv.kafka_admin import create_topics_async, delete_topics_async, describe_partitions_async
from bridge.devenv.kafka_node import DEFAULT_JVM_OPTIONS
from bridge.sandbox.process import SandboxProcess, start_sandbox

__all__ = ["main"]

_TICKS = os.sysconf("SC_CLK_TCK")
_ROOT = Path(__file__).resolve().parent.parent
_RESULTS = _ROOT / "bench" / "results"
_POLL = 0.05
_WORKER = "--worker"
_SCRUB = ("KAFKA_", "KARD_", "BRIDGE_")
_SELF = str(Path(__file__).resolve())


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
    """Three input topics holding ``records`` events; ``ends`` is every input partition's end offset."""

    label: str
    topics: TopicNames
    records: int
    ends: dict[TopicPartition, int] = field(default_factory=dict)
    produce_seconds: float = 0.0
    value_bytes: int = 0

    @property
    def inputs(self) -> list[str]:
        return [self.topics.transactions, self.topics.eligibility, self.topics.attributions]

    @property
    def outputs(self) -> list[str]:
        return [f"{t}{suffix}" for t in self.inputs for suffix in (".results", ".dlq")]


async def _produce_part(spec: dict[str, Any]) -> dict[str, Any]:
    """Worker: generate one share of the events and produce them in per-partition batches, unawaited."""
    names = TopicNames(*spec["topics"])
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
        for event in generate_events(
            spec["count"], users=spec["users"], seed=spec["seed"], prefix=spec["prefix"], topics=names
        ):
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


async def _end_offsets(bootstrap: str, topics: Sequence[str]) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = [TopicPartition(t, p.partition) for t in topics for p in await describe_partitions_async(bootstrap, t)]
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def _make_dataset(args: argparse.Namespace, bootstrap: str, label: str, count: int, run_id: str) -> DataSet:
    prefix = f"bench-{run_id}-{label}"
    data = DataSet(
        label, TopicNames(f"{prefix}.card-transactions", f"{prefix}.eligibility", f"{prefix}.attributions"), count
    )
    await create_topics_async(bootstrap, data.inputs + data.outputs, partitions=args.partitions)
    shares = [count // args.producers + (i < count % args.producers) for i in range(args.producers)]
    started = time.perf_counter()
    procs = [
        _spawn_worker(
            "produce",
            {
                "bootstrap": bootstrap,
                "topics": data.inputs,
                "partitions": args.partitions,
                "count": n,
                "users": args.users,
                "seed": args.seed * 1000 + i,
                "prefix": f"{label}{i}",
            },
        )
        for i, n in enumerate(shares)
        if n
    ]
    reports = [await _worker_result(p) for p in procs]
    data.produce_seconds = time.perf_counter() - started
    data.value_bytes = sum(r["bytes"] for r in reports)
    data.ends = await _end_offsets(bootstrap, data.inputs)
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


def _spawn_worker(kind: str, spec: dict[str, Any]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, _SELF, _WORKER, kind, orjson.dumps(spec).decode()]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=_clean_env())


async def _worker_result(proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    out, _ = await asyncio.to_thread(proc.communicate)
    if proc.returncode != 0:
        raise RuntimeError(f"data producer worker exited with {proc.returncode}")
    result: dict[str, Any] = orjson.loads(out.splitlines()[-1])
    return result


def _worker_main(kind: str, spec_json: str) -> None:
    import uvloop

    spec = orjson.loads(spec_json)
    job = {"produce": _produce_part, "ceiling": _ceiling}[kind]
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
    kind: str = ""  # ceiling | bridge | backlog | profile
    trace: list[tuple[float, float, float]] = field(default_factory=list)  # (seconds, committed fraction, RSS MB)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


class _Watcher:
    """Polls one group's state and committed offsets and the contender's /proc figures."""

    def __init__(self, admin: AIOKafkaAdminClient, group: str, data: DataSet) -> None:
        self.admin, self.group, self.data = admin, group, data
        self.total = sum(data.ends.values())
        self._coordinator: int | None = None

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


async def _measure(
    name: str,
    argv: list[str],
    env: dict[str, str],
    group: str,
    data: DataSet,
    admin: AIOKafkaAdminClient,
    sandbox: SandboxProcess | None,
    *,
    timeout: float,
    log_dir: Path,
) -> Measurement:
    """Start the contender, time it from group Stable to fully committed, stop it (SIGTERM) and report."""
    watcher = _Watcher(admin, group, data)
    log_path = log_dir / f"{group}.log"
    proc = _start(argv, env, log_path)
    spawned = time.monotonic()
    sbx = sandbox.pid if sandbox else None
    t_first = cpu0 = sbx0 = 0.0
    samples: list[tuple[float, float, float]] = []
    peak = 0.0
    last_note = spawned
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode} before finishing; log: {log_path}")
            now = time.monotonic()
            if now - spawned > timeout:
                raise TimeoutError(f"{name} did not finish in {timeout:.0f} s; log: {log_path}")
            if not t_first:
                if await watcher.stable():
                    t_first, cpu0, wall_first = time.monotonic(), _cpu_seconds(proc.pid), time.time()
                    sbx0 = _cpu_seconds(sbx) if sbx else 0.0
            else:
                done = await watcher.done()
                rss, hwm = _memory_mb(proc.pid)
                peak = max(peak, hwm)
                samples.append((round(now - t_first, 3), done / watcher.total, rss))
                if done >= watcher.total:
                    t_end, wall_end = time.monotonic(), time.time()
                    cpu1, sbx1 = _cpu_seconds(proc.pid), (_cpu_seconds(sbx) if sbx else 0.0)
                    break
                if now - last_note >= 10:
                    last_note = now
                    rate = done / (now - t_first)
                    print(f"  … {name}: {100 * done / watcher.total:3.0f} %, {rate:,.0f} records/s, RSS {rss:.0f} MB")
            await asyncio.sleep(_POLL)
        exit_code, report = await _stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    details: dict[str, Any] = {"exit_code": exit_code, "log": str(log_path), "startup_seconds": t_first - spawned}
    if report:  # the ceiling's own clock: how far the outside view (Stable → committed) is from first/last record
        details["self_timed_records_per_s"] = report["records"] / max(1e-9, report["last"] - report["first"])
        details["stable_to_first_record_s"] = report["first"] - wall_first
        details["last_record_to_committed_seen_s"] = wall_end - report["last"]
    return Measurement(
        name, data.label, watcher.total, t_end - t_first, cpu1 - cpu0, peak, sbx1 - sbx0,
        trace=samples, details=details,
    )  # fmt: skip


def _start(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    with open(log_path, "wb") as log:
        # Only workers print (one JSON line) on stdout; a bridge's log lines go to the file, never to a full pipe.
        stdout = subprocess.PIPE if _WORKER in argv else log
        return subprocess.Popen(argv, env=env, cwd=_ROOT, stdout=stdout, stderr=log, stdin=subprocess.DEVNULL)


async def _stop(proc: subprocess.Popen[bytes]) -> tuple[int, dict[str, Any] | None]:
    """SIGTERM, wait up to 60 s (then SIGKILL); returns the exit code and a worker's JSON report, if any."""
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = await asyncio.to_thread(proc.communicate)
    lines = [line for line in (out or b"").splitlines() if line.startswith(b"{")]
    report = orjson.loads(lines[-1]) if lines else None
    return int(proc.returncode), report


# -- the run ---------------------------------------------------------------------------------------------


def _bridge_env(
    args: argparse.Namespace, bootstrap: str, sandbox: SandboxProcess, data: DataSet, group: str
) -> dict[str, str]:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KARD_API_BASE_URL": sandbox.base_url,
        "KARD_CLIENT_ID": sandbox.client_id,
        "KARD_CLIENT_SECRET": sandbox.client_secret,
        "BRIDGE_GROUP_ID": group,
        "BRIDGE_TRANSACTIONS_TOPIC": data.topics.transactions,
        "BRIDGE_ELIGIBILITY_TOPIC": data.topics.eligibility,
        "BRIDGE_ATTRIBUTIONS_TOPIC": data.topics.attributions,
        "BRIDGE_METRICS_PORT": "0",
        "BRIDGE_LOG_LEVEL": "WARNING",
    }
    env.update(dict(kv.split("=", 1) for kv in args.bridge_env))
    return _clean_env(env)


async def _run_bridge(
    args: argparse.Namespace,
    ctx: dict[str, Any],
    name: str,
    data: DataSet,
    latency_ms: float,
    *,
    profile: Path | None = None,
) -> Measurement:
    sandbox: SandboxProcess = ctx["sandbox"]
    sandbox.control.reset()
    if latency_ms:
        sandbox.control.set_faults({"latency": {"fixed": latency_ms / 1000}})
    group = f"bench-{ctx['run_id']}-bridge-{uuid.uuid4().hex[:6]}"
    before = await _end_offsets(ctx["bootstrap"], data.outputs)
    argv = [sys.executable, *(["-m", "cProfile", "-o", str(profile)] if profile else []), "-m", "bridge", "run"]
    env = _bridge_env(args, ctx["bootstrap"], sandbox, data, group)
    row = await _measure(name, argv, env, group, data, ctx["admin"], sandbox, timeout=args.timeout, log_dir=ctx["logs"])
    after = await _end_offsets(ctx["bootstrap"], data.outputs)
    grown = {tp.topic: 0 for tp in after}
    for tp, end in after.items():
        grown[tp.topic] += end - before.get(tp, 0)
    results = sum(n for t, n in grown.items() if t.endswith(".results"))
    failures = sum(n for t, n in grown.items() if t.endswith(".dlq"))
    stats = sandbox.control.stats()
    row.details.update(
        latency_ms=latency_ms, result_records=results, failure_records=failures,
        api_requests=stats["requests_total"],
        api_items_accepted=sum(v["accepted"] for v in stats["items"].values()),
        api_non_2xx=sum(n for c in stats["requests"].values() for s, n in c.items() if not str(s).startswith("2")),
        api_max_in_flight=stats["max_in_flight"],
        api_by_endpoint={
            e: {"requests": sum(c.values()), "items": stats["items"].get(e, {}).get("accepted", 0),
                "max_in_flight": stats["max_in_flight_by_endpoint"].get(e, 0)}
            for e, c in stats["requests"].items()
        },
    )  # fmt: skip
    if results + failures != data.records:
        print(f"  ! {name}: {results} results + {failures} failures for {data.records} inputs", flush=True)
    sandbox.control.clear_faults()
    return row


async def _run_ceiling(args: argparse.Namespace, ctx: dict[str, Any], data: DataSet) -> Measurement:
    group = f"bench-{ctx['run_id']}-ceiling-{uuid.uuid4().hex[:6]}"
    spec = {"bootstrap": ctx["bootstrap"], "group": group, "topics": data.inputs, "expected": data.records}
    argv = [sys.executable, _SELF, _WORKER, "ceiling", orjson.dumps(spec).decode()]
    name = "ceiling"
    return await _measure(
        name, argv, _clean_env(), group, data, ctx["admin"], None, timeout=args.timeout, log_dir=ctx["logs"]
    )


async def _contenders(args: argparse.Namespace, ctx: dict[str, Any]) -> None:
    """Produce the data, then run every contender in turn; a failed contender is reported and skipped."""
    run_id: str = ctx["run_id"]
    rows: list[Measurement] = ctx["rows"]
    data = await _make_dataset(args, ctx["bootstrap"], "tput", args.records, run_id)
    backlog = (
        None if args.skip_backlog else await _make_dataset(args, ctx["bootstrap"], "backlog", args.backlog, run_id)
    )
    ctx["datasets"] = [d for d in (data, backlog) if d]
    first = args.latencies[0]
    plan: list[tuple[str, str, Callable[[], Awaitable[Measurement]]]] = [
        ("ceiling", "ceiling (aiokafka + orjson.loads)", lambda: _run_ceiling(args, ctx, data))
    ]
    for ms in args.latencies:
        plan.append(
            ("bridge", f"kard-bridge +{ms:g} ms", partial(_run_bridge, args, ctx, f"kard-bridge +{ms:g} ms", data, ms))
        )
    if backlog is not None:
        name = f"kard-bridge +{first:g} ms, {backlog.records:,} backlog"
        plan.append(("backlog", name, partial(_run_bridge, args, ctx, name, backlog, first)))
    if args.profile:
        ctx["profile"] = _RESULTS / f"pipeline-{ctx['stamp']}.prof"
        name = f"kard-bridge +{first:g} ms, cProfile"
        plan.append(("profile", name, partial(_run_bridge, args, ctx, name, data, first, profile=ctx["profile"])))
    for kind, name, run in plan:
        try:
            row = await run()
        except (RuntimeError, TimeoutError, OSError, KafkaError) as exc:
            print(f"  ! {name} failed: {exc}", flush=True)
            ctx["failed"].append({"contender": name, "error": str(exc)})
            continue
        row.contender, row.kind = name, kind
        rows.append(row)
        print(f"  done: {row.contender}: {row.rate:,.0f} records/s in {row.seconds:.1f} s", flush=True)


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


async def _run(args: argparse.Namespace, bootstrap: str, sandbox: SandboxProcess, stamp: str) -> dict[str, Any]:
    log_dir = _RESULTS / f"pipeline-{stamp}-logs"  # each contender's stderr/stdout, kept with the figures
    log_dir.mkdir(parents=True, exist_ok=True)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=30000)
    await admin.start()
    ctx: dict[str, Any] = {"bootstrap": bootstrap, "sandbox": sandbox, "admin": admin, "rows": [], "logs": log_dir,
                           "failed": [], "run_id": uuid.uuid4().hex[:8], "stamp": stamp, "datasets": []}  # fmt: skip
    try:
        await _warm_up(admin)
        await _contenders(args, ctx)
    finally:
        if not args.keep_topics and args.bootstrap:
            topics = [t for d in ctx["datasets"] for t in d.inputs + d.outputs]
            with contextlib.suppress(Exception):
                await delete_topics_async(bootstrap, topics)
        await admin.close()
    return ctx


async def _warm_up(admin: AIOKafkaAdminClient) -> None:
    """Make the broker create and load ``__consumer_offsets`` now, so the first contender does not pay for it."""
    async with asyncio.timeout(120):
        while True:
            try:
                await admin.find_coordinator("bench-warm-up")
                return
            except KafkaError:
                await asyncio.sleep(0.2)


def _table(rows: Sequence[Measurement]) -> str:
    """One line per contender; the API columns come from the sandbox's own counters."""
    ceiling = _ceiling_rate(rows)
    header = (
        f"{'contender':<38} {'records':>9} {'seconds':>8} {'records/s':>10} {'x ceiling':>9} {'CPU s/1k':>8} "
        f"{'CPU %':>6} {'peak RSS MB':>11} {'API CPU %':>9} {'API req':>8} {'items/req':>9} {'max conc':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        cpu_k = 1000 * r.cpu_seconds / r.records if r.records else 0.0
        ratio = r.rate / ceiling if ceiling else 0.0
        line = (
            f"{r.contender:<38} {r.records:>9,} {r.seconds:>8.2f} {r.rate:>10,.0f} {ratio:>9.2f} {cpu_k:>8.3f} "
            f"{100 * r.cpu_seconds / r.seconds:>5.0f}% {r.peak_rss_mb:>11.0f}"
        )
        requests = r.details.get("api_requests")
        if requests:
            line += (
                f" {100 * r.sandbox_cpu_seconds / r.seconds:>8.0f}% {requests:>8,} "
                f"{r.details['api_items_accepted'] / requests:>9.1f} {r.details['api_max_in_flight']:>8}"
            )
        lines.append(line)
    return "\n".join(lines)


def _ceiling_rate(rows: Sequence[Measurement]) -> float:
    return next((r.rate for r in rows if r.kind == "ceiling"), 0.0)


def _ratios(rows: Sequence[Measurement], latencies: Sequence[float]) -> dict[str, float]:
    """b/a (bridge at the first latency over the ceiling) and c/b (each other latency over the first)."""
    by_latency = {r.details.get("latency_ms"): r for r in rows if r.kind == "bridge"}
    out: dict[str, float] = {}
    base = by_latency.get(latencies[0])
    ceiling = _ceiling_rate(rows)
    if base and ceiling:
        out[f"bridge_{latencies[0]:g}ms_over_ceiling"] = base.rate / ceiling
    for ms in latencies[1:]:
        row = by_latency.get(ms)
        if row and base and base.rate:
            out[f"bridge_{ms:g}ms_over_bridge_{latencies[0]:g}ms"] = row.rate / base.rate
    return out


def _trace_lines(row: Measurement) -> list[str]:
    """Committed progress and RSS at fixed fractions of the run's time: flat RSS, and how linear progress is."""
    marks = []
    for target in (0.1, 0.25, 0.5, 0.75, 1.0):
        later = (sample for sample in row.trace if sample[0] >= target * row.seconds)
        hit = next(later, row.trace[-1] if target == 1.0 and row.trace else None)
        if hit is not None:
            marks.append(f"{int(target * 100)} % of time: {100 * hit[1]:.0f} % committed, {hit[2]:.0f} MB")
    return [f"  {row.contender}: " + "; ".join(marks)] if marks else []


def _api_line(row: Measurement) -> str:
    parts = [
        f"{e} {v['requests']:,} req × {v['items'] / max(1, v['requests']):.1f} items, max {v['max_in_flight']} at once"
        for e, v in sorted(row.details.get("api_by_endpoint", {}).items(), key=lambda kv: -kv[1]["requests"])
        if e != "token"
    ]
    return f"  {row.contender}: " + ", ".join(parts)


def _top(profile: Path, key: str, count: int = 15) -> str:
    import io

    out = io.StringIO()
    stats = pstats.Stats(str(profile), stream=out)
    stats.strip_dirs().sort_stats(key).print_stats(count)
    text = out.getvalue()
    return text[text.find("   ncalls") :].rstrip()


def _report(args: argparse.Namespace, ctx: dict[str, Any], started: float, stamp: str) -> None:
    rows: list[Measurement] = ctx["rows"]
    print()
    print(_table(rows))
    ratios = _ratios(rows, args.latencies)
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}")
    for failure in ctx["failed"]:
        print(f"FAILED: {failure['contender']}: {failure['error']}")
    print("\nprogress and RSS over time (from the committed offsets and /proc):")
    for row in rows:
        for line in _trace_lines(row):
            print(line)
    print("\nAPI requests per endpoint (sandbox counters):")
    for row in rows:
        if row.details.get("api_by_endpoint"):
            print(_api_line(row))
    ceiling_self = next((r.details.get("self_timed_records_per_s") for r in rows if r.kind == "ceiling"), None)
    if ceiling_self:
        print(f"ceiling as timed inside its own process (first fetch to last parse): {ceiling_self:,.0f} records/s")
    profile: Path | None = ctx.get("profile")
    if profile and profile.exists():
        for key in ("cumulative", "tottime"):
            print(f"\ncProfile of the bridge process, top 15 by {key} ({profile}):")
            print(_top(profile, key))
    _RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": stamp,
        "wall_seconds": time.monotonic() - started,
        "git": _git_state(),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": os.getloadavg(),
        },
        "data": [
            {k: v for k, v in asdict(d).items() if k != "ends"} | {"partitions": len(d.ends)} for d in ctx["datasets"]
        ],
        "rows": [asdict(r) | {"records_per_s": r.rate} for r in rows],
        "ratios": ratios,
        "failed": ctx["failed"],
    }
    path = _RESULTS / f"pipeline-{stamp}.json"
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS))
    print(f"\nfigures written to {path.relative_to(_ROOT)}")


def _git_state() -> dict[str, Any]:
    """The commit measured, and whether bridge/ had uncommitted changes (figures are only comparable per code)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], cwd=_ROOT, capture_output=True, text=True, check=False)
        return done.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "bridge_dirty": bool(git("status", "--porcelain", "bridge"))}


def _parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000, help="events for the throughput rows (default 200k)")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="events for the RSS/backlog row (default 1M)")
    parser.add_argument("--skip-backlog", action="store_true", help="leave out the backlog row")
    parser.add_argument("--latencies", default="0,20", help="added API latencies in ms, one bridge row each")
    parser.add_argument("--bootstrap", help="use this Kafka (topics are deleted after) instead of a local broker")
    parser.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6, the catalogue's)")
    parser.add_argument("--users", type=int, default=2000, help="distinct user ids (record keys)")
    parser.add_argument("--seed", type=int, default=7, help="data generator seed")
    parser.add_argument("--producers", type=int, default=2, help="parallel processes producing the data")
    parser.add_argument("--timeout", type=float, default=1200.0, help="give up on a contender after this many s")
    parser.add_argument("--profile", action="store_true", help="add a bridge run under cProfile and print its top")
    parser.add_argument("--keep-topics", action="store_true", help="do not delete the topics on --bootstrap")
    parser.add_argument(
        "--bridge-env", action="append", default=[], metavar="NAME=VALUE", help="extra bridge setting (repeatable)"
    )
    args = parser.parse_args(argv)
    args.latencies = [float(x) for x in args.latencies.split(",") if x.strip()]
    if not args.latencies or args.records <= 0 or args.backlog <= 0:
        parser.error("--latencies needs at least one value; --records and --backlog must be positive")
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
    stamp = datetime.now().strftime("%Y-%m-%d-%H%M%S")
    with _broker(args) as bootstrap, start_sandbox(record="none") as sandbox:
        print(f"kafka {bootstrap}, sandbox {sandbox.base_url} (pid {sandbox.pid})", flush=True)
        ctx = uvloop.run(_run(args, bootstrap, sandbox, stamp))
    _report(args, ctx, started, stamp)


if __name__ == "__main__":
    main()
