"""Producing outcome records: a loop of ``OutputProducer.send`` against ``OutputProducer.send_many``, in one run.

Run: ``.venv/bin/python bench/bench_produce.py [--records 100000] [--chunk 300] [--rounds 3] [--partitions 6]
[--value-bytes 700] [--event-loop asyncio|uvloop] [--bootstrap HOST:PORT]``. Without ``--bootstrap`` a local
single KRaft broker starts in a temp dir (bridge.devenv, C2 JIT on as in bench_pipeline.py) and stops at the end.

What runs: one ``OutputProducer`` (the bridge's settings: idempotent, ``acks=all``, 5 ms linger) produces
``--records`` result-like JSON values (``--value-bytes`` on average, the shape of a ``<input>.results``
record) keyed by user id (``user-NNNNNN``, 2,000 users) to a fresh ``--partitions`` topic, the way the
bridge's ``OutcomePublisher`` does: ``--chunk`` records at a time (one API batch), each record's ack future
gets a done callback, and nothing waits for acks between chunks. Mode ``send``: an awaited ``send`` per
record; mode ``send_many``: one ``send_many`` per chunk. A run ends when every ack has arrived. Rounds
alternate the order of the two modes (send first, then send_many first, ...) after one untimed warm-up of each.

Per run: records/s (wall clock) and **process CPU seconds per 1,000 records** (``time.process_time`` of this
process: the broker is another process), then the medians and send/send_many ratios. The machine is small
and shared: compare the two modes within one run, not across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from bridge.devenv.kafka import KafkaCluster
from bridge.devenv.kafka_admin import create_topics, delete_topics
from bridge.devenv.kafka_node import DEFAULT_JVM_OPTIONS
from bridge.kafka import OutputProducer
from bridge.kafka.producer import Message

MODES = ("send", "send_many")


@dataclass(frozen=True)
class Run:
    mode: str
    records: int
    seconds: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.records / self.seconds

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu / self.records * 1000


def make_messages(topic: str, count: int, value_bytes: int, seed: int = 7) -> list[Message]:
    """Result-like values (what ``build_result_value`` writes) of about ``value_bytes`` bytes, user-id keys."""
    rng = random.Random(seed)
    messages: list[Message] = []
    for offset in range(count):
        user = f"user-{rng.randrange(2000):06d}"
        document: dict[str, Any] = {
            "schema_version": 1,
            "outcome": "delivered",
            "source": {
                "topic": "kard.card-transactions",
                "partition": offset % 6,
                "offset": 1_000_000 + offset,
                "key": user,
                "key_encoding": "utf-8",
                "timestamp_ms": 1_735_689_600_000 + offset,
            },
            "event_id": f"gen-{offset:09d}",
            "item_id": f"{rng.getrandbits(128):032x}",
            "route": {"endpoint": "transactions", "path": "/v2/issuers/transactions", "organization_id": "org-1"},
            "http_status": 201,
            "response": {"job_id": f"job-{offset // 300:08d}", "job_status": "ACCEPTED", "total_processed": 300},
            "attempts": 1,
            "latency_ms": round(rng.uniform(5, 80), 3),
            "first_attempt_at": "2025-01-01T00:00:00.000Z",
            "completed_at": "2025-01-01T00:00:00.042Z",
            "bridge": {"instance_id": "bench-instance-0", "version": "0.0.0"},
        }
        base = len(orjson.dumps(document))
        pad = max(0, value_bytes - base + rng.randint(-60, 60) - len(',"note":""'))
        document["note"] = "x" * pad  # stands in for the longer ids and summaries of real responses
        messages.append((topic, orjson.dumps(document), user.encode(), ()))
    return messages


async def produce(producer: OutputProducer, messages: Sequence[Message], mode: str, chunk: int) -> Run:
    """Produce ``messages`` in chunks like OutcomePublisher does; returns when every ack arrived."""
    loop = asyncio.get_running_loop()
    total = len(messages)
    finished: asyncio.Future[None] = loop.create_future()
    counts = {"acked": 0, "failed": 0}

    def acked(fut: asyncio.Future[Any]) -> None:
        if fut.cancelled() or fut.exception() is not None:
            counts["failed"] += 1
        counts["acked"] += 1
        if counts["acked"] == total and not finished.done():
            finished.set_result(None)

    cpu0, wall0 = time.process_time(), time.perf_counter()
    for start in range(0, total, chunk):
        part = messages[start : start + chunk]
        if mode == "send":
            for topic, value, key, headers in part:
                fut = await producer.send(topic, value, key, headers)
                fut.add_done_callback(acked)
        else:
            for fut in await producer.send_many(part):
                fut.add_done_callback(acked)
        await asyncio.sleep(0)  # the bridge does other work between two batches' outcomes
    await finished
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    if counts["failed"]:
        raise RuntimeError(f"{mode}: {counts['failed']} of {total} records were not acknowledged")
    return Run(mode, total, wall, cpu)


async def bench(args: argparse.Namespace, bootstrap: str) -> list[Run]:
    topic = f"bench-produce-{uuid.uuid4().hex[:8]}"
    create_topics(bootstrap, [topic], partitions=args.partitions, replication_factor=1)
    messages = make_messages(topic, args.records, args.value_bytes)
    sizes = [len(m[1] or b"") for m in messages]
    print(
        f"topic {topic}: {args.partitions} partitions, {len(messages):,} records, values "
        f"{min(sizes)}-{max(sizes)} B (mean {statistics.fmean(sizes):.0f}), chunks of {args.chunk}",
        flush=True,
    )
    runs: list[Run] = []
    try:
        async with OutputProducer({"bootstrap_servers": bootstrap}, client_id="bench-produce") as producer:
            warm = messages[: min(len(messages), 20 * args.chunk)]
            for mode in MODES:
                await produce(producer, warm, mode, args.chunk)
            for rnd in range(args.rounds):
                order = MODES if rnd % 2 == 0 else MODES[::-1]
                for mode in order:
                    run = await produce(producer, messages, mode, args.chunk)
                    runs.append(run)
                    print(
                        f"  round {rnd + 1} {mode:<9} {run.rate:>9,.0f} records/s  "
                        f"{run.cpu_per_1k * 1000:7.1f} ms CPU per 1k records  "
                        f"({run.seconds:.2f} s, {run.cpu:.2f} CPU s)",
                        flush=True,
                    )
    finally:
        with contextlib.suppress(Exception):
            delete_topics(bootstrap, [topic])
    return runs


def report(runs: Sequence[Run]) -> None:
    by_mode = {mode: [r for r in runs if r.mode == mode] for mode in MODES}
    print("\nmedians over rounds:")
    med: dict[str, tuple[float, float]] = {}
    for mode, rows in by_mode.items():
        med[mode] = (statistics.median(r.rate for r in rows), statistics.median(r.cpu_per_1k for r in rows))
        print(f"  {mode:<9} {med[mode][0]:>9,.0f} records/s  {med[mode][1] * 1000:7.1f} ms CPU per 1k records")
    pairs = list(zip(by_mode["send"], by_mode["send_many"], strict=True))
    cpu_ratios = [s.cpu_per_1k / m.cpu_per_1k for s, m in pairs]
    rate_ratios = [m.rate / s.rate for s, m in pairs]
    print(
        "send / send_many CPU per record, per round: "
        + ", ".join(f"{r:.2f}x" for r in cpu_ratios)
        + f" (median {statistics.median(cpu_ratios):.2f}x)"
    )
    print(
        "send_many / send records/s, per round:      "
        + ", ".join(f"{r:.2f}x" for r in rate_ratios)
        + f" (median {statistics.median(rate_ratios):.2f}x)"
    )


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    root = Path(tempfile.mkdtemp(prefix="bench-kafka-"))
    options = tuple(o for o in DEFAULT_JVM_OPTIONS if not o.startswith("-XX:TieredStopAtLevel"))
    try:
        print(f"starting a local Kafka broker in {root} …", flush=True)
        with KafkaCluster.create(root, brokers=1, jvm_options=options) as cluster:
            yield cluster.bootstrap_servers
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--chunk", type=int, default=300, help="records per send_many call (one bridge batch)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--value-bytes", type=int, default=700)
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio")
    parser.add_argument("--bootstrap", help="use this Kafka (the topic is deleted after) instead of a local broker")
    args = parser.parse_args()
    with broker(args.bootstrap) as bootstrap:
        print(f"kafka {bootstrap}, event loop {args.event_loop}", flush=True)
        if args.event_loop == "uvloop":
            import uvloop

            runs = uvloop.run(bench(args, bootstrap))
        else:
            runs = asyncio.run(bench(args, bootstrap))
    report(runs)


if __name__ == "__main__":
    main()
