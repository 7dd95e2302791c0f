"""``kard-bridge demo``: the whole pipeline on one machine, no credentials needed.

Starts a local Apache Kafka (KRaft, from the pinned Maven jars), the Kard sandbox, applies the topic
catalogue, produces a few thousand events of all three kinds (plus the catalogue's invalid examples),
runs one bridge in-process with a live progress line, then drains it and prints a summary: forwarded
per route, failures by reason, throughput, and whether every record got exactly the outcome it
should. Exit code 0 only when every valid event reached the sandbox, every invalid one was
dead-lettered, and all offsets were committed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="local Kafka + Kard sandbox + bridge + sample events, with progress and a summary",
        description="Run the whole pipeline locally: Kafka (KRaft), the Kard sandbox, sample events, the bridge.",
    )
    parser.add_argument("--events", type=int, default=5000, help="valid events to produce (default 5000)")
    parser.add_argument("--no-invalid", action="store_true", help="do not add the catalogue's invalid examples")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="latency the sandbox adds to each request")
    parser.add_argument("--data-dir", help="where Kafka keeps its data (default: a temporary directory)")
    parser.add_argument("--bootstrap", help="use this Kafka instead of starting one (host:port,...)")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
    parser.set_defaults(func=_demo)


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _demo(args: argparse.Namespace) -> int:
    from bridge.devenv.kafka import KafkaCluster
    from bridge.sandbox.process import start_sandbox

    with contextlib.ExitStack() as stack:
        bootstrap = args.bootstrap
        if not bootstrap:
            tmp = args.data_dir or stack.enter_context(tempfile.TemporaryDirectory(prefix="kard-demo-"))
            data_dir = Path(tmp)
            _say(f"starting Apache Kafka (KRaft, 1 broker) in {data_dir}")
            started = time.monotonic()
            cluster = stack.enter_context(KafkaCluster.create(data_dir / "kafka", brokers=1))
            bootstrap = cluster.bootstrap_servers
            _say(f"Kafka ready at {bootstrap} after {time.monotonic() - started:.1f}s")
        faults: dict[str, Any] | None = None
        if args.latency_ms:
            faults = {"latency": {"fixed": args.latency_ms / 1000}}
        sandbox = stack.enter_context(start_sandbox(record="ids", faults=faults))
        _say(f"Kard sandbox listening at {sandbox.base_url}")
        return asyncio.run(_run(args, bootstrap, sandbox.base_url, sandbox.client_id, sandbox.client_secret, sandbox))
    return 1  # pragma: no cover - unreachable, keeps mypy's flow analysis simple


async def _run(
    args: argparse.Namespace, bootstrap: str, base_url: str, client_id: str, secret: str, sandbox: Any
) -> int:
    from bridge.app import Bridge
    from bridge.config import load_settings
    from bridge.devenv.generate import generate_events, invalid_examples
    from bridge.kafka.admin import apply_topics
    from bridge.observability.logging import configure_logging
    from bridge.topics_cli import catalogue_for

    log_path = Path(tempfile.gettempdir()) / "kard-bridge-demo.log"
    log_file = log_path.open("w", encoding="utf-8")
    configure_logging("INFO", "json", stream=log_file)
    settings = load_settings(
        kafka={"bootstrap_servers": bootstrap, "session_timeout": 10.0},
        kard={"api_base_url": base_url, "client_id": client_id, "client_secret": secret},
        bridge={"group_id": "kard-bridge-demo", "metrics_port": 0, "linger": 0.02, "commit_interval": 0.5},
    )
    catalogue = catalogue_for(settings, replication_factor=1)
    reports = await apply_topics(settings.kafka.common_kwargs(), catalogue.all_topics())
    _say("topics: " + ", ".join(f"{r.name} ({r.status})" for r in reports))

    produced, valid_by_type, invalid = await _produce(bootstrap, args, generate_events, invalid_examples)
    _say(
        f"produced {produced} events: "
        + ", ".join(f"{n} {t}" for t, n in sorted(valid_by_type.items()))
        + f", {invalid} invalid"
    )
    ends = await _end_offsets(bootstrap, settings.bridge.input_topics)

    bridge = Bridge(settings)
    _say(f"running the bridge (logs: {log_path})")
    started = time.monotonic()
    async with asyncio.TaskGroup() as tasks:
        task = tasks.create_task(bridge.run())
        ok = await _progress(bridge, sandbox, ends, started, args.timeout, task)
        bridge.stop()
    elapsed = time.monotonic() - started
    log_file.close()
    return _summary(bridge, sandbox, produced, invalid, elapsed, ok and _all_committed(bridge, ends))


async def _produce(
    bootstrap: str, args: argparse.Namespace, generate: Any, invalid_examples: Any
) -> tuple[int, Counter[str], int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=10, enable_idempotence=True)
    await producer.start()
    by_type: Counter[str] = Counter()
    futures = []
    try:
        for event in generate(args.events, organization_id=None):
            futures.append(await producer.send(event.topic, event.value, key=event.key))
            by_type[event.event_type] += 1
        invalid = 0
        if not args.no_invalid:
            for topic, value in invalid_examples():
                futures.append(await producer.send(topic, value, key=b"invalid"))
                invalid += 1
        await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return args.events + invalid, by_type, invalid


async def _end_offsets(bootstrap: str, topics: tuple[str, ...]) -> dict[tuple[str, int], int]:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from bridge.devenv.kafka_admin import describe_partitions_async

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [
            TopicPartition(t, s.partition) for t in topics for s in await describe_partitions_async(bootstrap, t)
        ]
        if not tps:
            raise RuntimeError(f"no partitions found for {topics}")
        ends = await consumer.end_offsets(tps)
        return {(tp.topic, tp.partition): off for tp, off in ends.items()}
    finally:
        await consumer.stop()


def _all_committed(bridge: Any, ends: dict[tuple[str, int], int]) -> bool:
    committed = {(tp.topic, tp.partition): off for tp, off in bridge.committed.items()}
    return all(committed.get(tp, 0) >= end for tp, end in ends.items() if end > 0)


async def _progress(
    bridge: Any, sandbox: Any, ends: dict[tuple[str, int], int], started: float, timeout: float, task: Any
) -> bool:
    total = sum(ends.values())
    tty = sys.stdout.isatty()
    last = 0.0
    while not task.done():
        await asyncio.sleep(0.25)
        now = time.monotonic()
        committed = sum(min(off, ends.get((tp.topic, tp.partition), 0)) for tp, off in bridge.committed.items())
        stats = bridge.statistics()
        rate = stats.consumed / max(now - started, 1e-6)
        line = (
            f"consumed {stats.consumed:>7}/{total}  forwarded {bridge.results:>7}  "
            f"dead-lettered {bridge.failures:>5}  committed {committed:>7}  "
            f"{rate:8.0f} rec/s{'  [paused]' if stats.paused else ''}"
        )
        if tty:
            print("\r" + line, end="", flush=True)
        elif now - last >= 2.0:
            print(line, flush=True)
            last = now
        if _all_committed(bridge, ends):
            if tty:
                print(flush=True)
            return True
        if now - started > timeout:
            print(flush=True)
            _say(f"timed out after {timeout:.0f}s")
            return False
    return False


def _summary(bridge: Any, sandbox: Any, produced: int, invalid: int, elapsed: float, committed: bool) -> int:
    stats = sandbox.control.stats()
    accepted = {endpoint: counts.get("accepted", 0) for endpoint, counts in stats.get("items", {}).items()}
    print()
    print("Summary")
    print(f"  records produced            {produced}")
    print(f"  forwarded (results)         {bridge.results}")
    for endpoint, count in sorted(accepted.items()):
        print(f"    {endpoint:<26}{count}")
    print(f"  dead-lettered               {bridge.failures}")
    for reason, count in sorted(bridge.failures_by_reason.items(), key=lambda kv: -kv[1]):
        print(f"    {reason:<26}{count}")
    print(f"  elapsed                     {elapsed:.1f}s  ({produced / max(elapsed, 1e-6):.0f} records/s end to end)")
    duplicates = sum(d.get("extra", 0) for d in stats.get("duplicates", {}).values())
    print(f"  API-side duplicates         {duplicates}")
    print(f"  all offsets committed       {'yes' if committed else 'NO'}")
    expected_valid = produced - invalid
    ok = committed and bridge.results == expected_valid and bridge.failures == invalid
    ok = ok and sum(accepted.values()) >= expected_valid
    print(f"  result                      {'OK: every record has its outcome' if ok else 'FAILED'}")
    return 0 if ok else 1
