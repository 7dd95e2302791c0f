"""Where the bridge's small requests come from: the real Batcher + Dispatcher fed like the pump feeds them.

Run: ``.venv/bin/python bench/bench_batching.py [--data mix|txn|both] [--records 20000] [--users 2000]
[--partitions 6] [--sender sandbox|fake] [--latency-ms 0] [--repeat 1]`` (well under a minute per data set).

No Kafka. Events come from ``bridge.devenv.generate`` (the benchmark's data: APPROVED then SETTLED per
transaction, keyed by one of ``--users`` user ids), are partitioned by Kafka's default partitioner
(murmur2 of the key) and handed out in *fetches* the way ``aiokafka``'s ``getmany(max_records=2000)``
hands out a backlog: whole runs of one partition, then the next (a fetch response holds megabytes of each
partition, and ``getmany`` drains partitions one after the other). The loop below is ``Bridge._pump`` and
``Bridge._ingest`` without Kafka: ``map_record`` per record, ``Dispatcher.hold``, ``Batcher.add``,
``Dispatcher.submit`` of every batch that closed, ``Batcher.due`` after each fetch; fetching stops while
more than ``--buffer`` records are unfinished (``BRIDGE_BUFFER_MAX_RECORDS``).

Senders: ``sandbox`` (default) is the real :class:`~bridge.kard.client.KardClient` against the Kard sandbox
(``start_sandbox(record="none")``, ``--latency-ms`` of fixed latency added by a fault rule), so the costs
are the production ones; ``fake`` accepts everything after ``--latency-ms`` and burns ``--request-cpu-us``
of CPU per request (an httpx request costs a few hundred µs), for runs without a second process.

Printed per data set:

* records/s (first fetch to last outcome), the CPU seconds of this process per 1k records;
* requests and items per request, per endpoint, a histogram of request sizes, and how many requests were
  on the wire at once (max, and the mean seen by each new request);
* how batches closed (``count``: the route's item limit; ``bytes``; ``linger``; ``flush`` at the end);
* at the moment each batch was handed to the dispatcher, what each entry had to wait for: nothing
  (``free``), an earlier record of its key *in the same batch* (``same-batch``: on 207 endpoints the two
  never share a request), an earlier record in *another submitted batch* (``other batch``: queued or in
  flight), or one still in an *open batch* of another route (``open batch``: e.g. a fraud marker);
* how many requests a batch's entries were spread over, and how many requests carried entries of
  more than one batch (``coalesced``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import sys
import time
from collections import Counter, defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2
from pydantic import SecretStr

from bridge.dispatch import DeliveryFailure, Dispatcher
from bridge.events.common import EventKind
from bridge.kard.client import KardClient, KardClientConfig
from bridge.kard.responses import ACCEPTED, BatchResponse, ItemOutcome
from bridge.mapping.context import MappingContext
from bridge.mapping.mapper import map_record
from bridge.observability.logging import configure_logging
from bridge.pipeline.batcher import Batch, BatchEntry, Batcher
from bridge.pipeline.retry import RetryPolicy
from bridge.records import SourceRecord
from bridge.routes import MappedItem, Route
from bridge.sandbox.process import start_sandbox

__all__ = ["main"]

_ORG = "org-bench"
_TICKS = os.sysconf("SC_CLK_TCK")
_TXN_KINDS = frozenset({"transaction", "matched_transaction"})


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


# -- data -------------------------------------------------------------------------------------------------


def _records(kind: str, count: int, users: int, partitions: int, seed: int) -> list[list[SourceRecord]]:
    """The data set as per-partition record lists (offsets from 0), partitions in a fixed order."""
    from bridge.devenv.generate import generate_events

    events: Iterator[Any] = generate_events(count * (3 if kind == "txn" else 1), users=users, seed=seed)
    if kind == "txn":
        events = (e for e in events if e.event_type in _TXN_KINDS)
    parts: dict[tuple[str, int], list[SourceRecord]] = {}
    by_key: dict[bytes, int] = {}
    for event in itertools.islice(events, count):
        part = by_key.get(event.key)
        if part is None:
            part = by_key[event.key] = (murmur2(event.key) & 0x7FFFFFFF) % partitions
        records = parts.setdefault((event.topic, part), [])
        records.append(SourceRecord(event.topic, part, len(records), event.key, event.value, (), 0))
    return [parts[tp] for tp in sorted(parts)]


class Fetcher:
    """``getmany(max_records)`` over a backlog: drains one partition's run, then the next, round robin."""

    def __init__(self, partitions: list[list[SourceRecord]], max_records: int) -> None:
        self.queues = deque(deque(p) for p in partitions if p)
        self.max_records = max_records

    def fetch(self) -> list[SourceRecord]:
        out: list[SourceRecord] = []
        while self.queues and len(out) < self.max_records:
            queue = self.queues[0]
            take = min(len(queue), self.max_records - len(out))
            out.extend(queue.popleft() for _ in range(take))
            if not queue:
                self.queues.popleft()
            else:
                self.queues.rotate(-1)  # the next fetch starts with another partition
        return out

    def __bool__(self) -> bool:
        return bool(self.queues)


# -- instrumentation ------------------------------------------------------------------------------------


@dataclass
class Stats:
    records: int = 0
    finished: int = 0
    closes: Counter[str] = field(default_factory=Counter)
    batch_sizes: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    waits: Counter[str] = field(default_factory=Counter)  # per entry at submission
    requests: Counter[str] = field(default_factory=Counter)
    items: Counter[str] = field(default_factory=Counter)
    sizes: list[int] = field(default_factory=list)
    in_flight_seen: list[int] = field(default_factory=list)
    max_in_flight: int = 0
    requests_per_batch: Counter[int] = field(default_factory=Counter)  # batch id -> requests
    coalesced: int = 0
    out_of_order: int = 0
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


class Shadow:
    """The bench's own record of every unfinished entry per key, to say what a submitted entry waits for."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        self.keys: dict[tuple[str, int, str], list[int]] = defaultdict(list)  # key -> unfinished ids, in order
        self.batch_of: dict[int, int] = {}  # id(entry) -> batch number (absent while in an open batch)
        self.next_batch = 0
        self.delivered: dict[tuple[str, int, str], int] = {}  # key -> last delivered offset (order check)

    @staticmethod
    def key(entry: BatchEntry) -> tuple[str, int, str]:
        return (entry.ref.topic, entry.ref.partition, entry.item.ordering_key)

    def hold(self, entry: BatchEntry) -> None:
        self.keys[self.key(entry)].append(id(entry))

    def submit(self, batch: Batch, reason: str) -> None:
        number = self.next_batch
        self.next_batch += 1
        self.stats.closes[reason] += 1
        self.stats.batch_sizes[batch.route.endpoint.value].append(len(batch.entries))
        for entry in batch.entries:
            self.batch_of[id(entry)] = number
        for entry in batch.entries:
            earlier = self.keys[self.key(entry)]
            wait = "free"
            for other in earlier:
                if other == id(entry):
                    break
                owner = self.batch_of.get(other)
                if owner is None:
                    wait = "open batch"
                    break
                wait = "same-batch" if owner == number and wait != "other batch" else "other batch"
            self.stats.waits[wait] += 1

    def finish(self, entries: Sequence[BatchEntry]) -> None:
        for entry in entries:
            key = self.key(entry)
            ids = self.keys[key]
            ids.remove(id(entry))
            if not ids:
                del self.keys[key]
            last = self.delivered.get(key, -1)
            if entry.ref.offset < last:
                self.stats.out_of_order += 1
            self.delivered[key] = max(last, entry.ref.offset)
            self.batch_of.pop(id(entry), None)
        self.stats.finished += len(entries)


class Sink:
    def __init__(self, shadow: Shadow) -> None:
        self.shadow = shadow
        self.progress = asyncio.Event()

    async def delivered(
        self,
        route: Route,
        entries: Sequence[BatchEntry],
        response: BatchResponse,
        outcomes: Sequence[ItemOutcome],
        attempts: int,
        latency: float,
    ) -> None:
        self.shadow.finish(entries)
        self.progress.set()

    async def undeliverable(self, route: Route, failures: Sequence[tuple[BatchEntry, DeliveryFailure]]) -> None:
        self.shadow.finish([e for e, _ in failures])
        self.progress.set()


class CountingSender:
    """Wraps the real sender: counts requests, sizes, concurrency and which batches each request drew from."""

    def __init__(self, inner: Any, shadow: Shadow, by_item: dict[int, int]) -> None:
        self.inner = inner
        self.shadow = shadow
        self.by_item = by_item  # id(MappedItem) -> batch number
        self.in_flight = 0

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        stats = self.shadow.stats
        endpoint = route.endpoint.value
        stats.requests[endpoint] += 1
        stats.items[endpoint] += len(items)
        stats.sizes.append(len(items))
        stats.in_flight_seen.append(self.in_flight)
        batches = {self.by_item.get(id(i), -1) for i in items}
        if len(batches) > 1:
            stats.coalesced += 1
        for b in batches:
            stats.requests_per_batch[b] += 1
        self.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, self.in_flight)
        sent = time.perf_counter()
        try:
            return await self.inner.send_batch(route, items)  # type: ignore[no-any-return]
        finally:
            self.in_flight -= 1
            stats.latency[endpoint].append(time.perf_counter() - sent)


class FakeSender:
    def __init__(self, latency: float, cpu: float) -> None:
        self.latency = latency
        self.cpu = cpu

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        end = time.perf_counter() + self.cpu
        while time.perf_counter() < end:
            pass
        await asyncio.sleep(self.latency)
        return BatchResponse(202, 0.0, {}, tuple(ACCEPTED for _ in items))


# -- the pump -------------------------------------------------------------------------------------------


async def _run_once(kind: str, args: argparse.Namespace, sender_inner: Any) -> tuple[Stats, float, float]:
    parts = _records(kind, args.records, args.users, args.partitions, args.seed)
    topics = sorted({p[0].topic for p in parts})
    from bridge.devenv.generate import TopicNames

    names = TopicNames()
    kinds = {
        names.transactions: EventKind.CARD_TRANSACTION,
        names.eligibility: EventKind.ELIGIBILITY,
        names.attributions: EventKind.ATTRIBUTION,
    }
    ctx = MappingContext(kind_by_topic={t: kinds[t] for t in topics}, organization_id=_ORG)
    stats = Stats(records=sum(len(p) for p in parts))
    shadow = Shadow(stats)
    sink = Sink(shadow)
    by_item: dict[int, int] = {}
    sender = CountingSender(sender_inner, shadow, by_item)
    batcher = Batcher(max_bytes=args.max_bytes, linger=args.linger, max_items=args.max_items)
    fetcher = Fetcher(parts, args.fetch)
    dispatcher = _dispatcher_class(args.dispatcher_file)(
        sender, sink, max_in_flight=args.max_in_flight, policy=RetryPolicy()
    )

    def submit(batches: list[Batch], reason: str | None) -> None:
        for batch in batches:
            why = reason
            if why is None:  # closed by add(): full by count or by bytes
                why = "count" if len(batch.entries) >= batcher.item_limit(batch.route) else "bytes"
            for entry in batch.entries:
                by_item[id(entry.item)] = shadow.next_batch
            shadow.submit(batch, why)
            dispatcher.submit(batch)

    consumed = 0
    started = time.monotonic()
    cpu0 = time.process_time()
    async with dispatcher:
        while fetcher or batcher.next_due() is not None:
            if fetcher and consumed - stats.finished < args.buffer:
                await asyncio.sleep(0)  # getmany with prefetched data: returns at once, after one yield
                records = fetcher.fetch()
                now = time.monotonic()
                consumed += len(records)
                for record in records:
                    item = map_record(record, ctx)
                    entry = BatchEntry(record.ref, item, record)
                    shadow.hold(entry)
                    dispatcher.hold(entry)
                    submit(batcher.add(entry, now), None)
            else:
                due = batcher.next_due()
                timeout = 0.1 if due is None else min(0.1, max(0.0, due - time.monotonic()))
                sink.progress.clear()
                try:
                    async with asyncio.timeout(timeout):
                        await sink.progress.wait()
                except TimeoutError:
                    pass
            submit(batcher.due(time.monotonic()), "linger")
        submit(batcher.flush_all(), "flush")
        if not await dispatcher.wait_idle(timeout=120):
            raise SystemExit("the dispatcher did not finish within 120 s")
    elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu0
    if stats.finished != stats.records:
        raise SystemExit(f"{stats.finished} outcomes for {stats.records} records")
    return stats, elapsed, cpu


def _dispatcher_class(path: str | None) -> type[Dispatcher]:
    """The real Dispatcher, or the one defined in ``path`` (another version of bridge/dispatch.py, for A/B runs)."""
    if path is None:
        return Dispatcher
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_dispatch", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module.Dispatcher  # type: ignore[no-any-return]


def _report(kind: str, stats: Stats, elapsed: float, cpu: float, server_cpu: float | None) -> None:
    n = stats.records
    total_req = sum(stats.requests.values())
    total_items = sum(stats.items.values())
    srv = f", sandbox CPU {100 * server_cpu / elapsed:.0f}%" if server_cpu is not None else ""
    print(f"\n== {kind}: {n:,} records in {elapsed:.2f} s = {n / elapsed:,.0f} records/s; "
          f"CPU {cpu:.2f} s ({1000 * cpu / n:.3f} s/1k){srv}")  # fmt: skip
    print(f"requests {total_req:,}, items/request {total_items / max(1, total_req):.1f}; "
          f"in flight: max {stats.max_in_flight}, mean seen by a new request "
          f"{statistics.fmean(stats.in_flight_seen or [0]):.2f}")  # fmt: skip
    for endpoint in sorted(stats.requests):
        sizes = stats.batch_sizes.get(endpoint, [])
        lat = sorted(stats.latency[endpoint]) or [0.0]
        p50, p99 = lat[len(lat) // 2] * 1000, lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000
        print(f"  {endpoint:<18} requests {stats.requests[endpoint]:>6,}  items {stats.items[endpoint]:>6,}  "
              f"items/req {stats.items[endpoint] / stats.requests[endpoint]:>6.1f}   "
              f"batches {len(sizes):>5,} (mean {statistics.fmean(sizes or [0]):.1f} entries)   "
              f"request p50/p99 {p50:.1f}/{p99:.1f} ms")  # fmt: skip
    edges = [(1, 1), (2, 9), (10, 99), (100, 499), (500, 10**9)]
    hist = ", ".join(
        f"{lo}{'' if lo == hi else ('+' if hi > 10**6 else f'-{hi}')}: {sum(lo <= s <= hi for s in stats.sizes)}"
        for lo, hi in edges
    )
    print(f"request sizes (items: requests): {hist}")
    closes = ", ".join(f"{k} {v}" for k, v in stats.closes.most_common())
    print(f"batches closed by: {closes}")
    waits = stats.waits
    total = sum(waits.values()) or 1
    print("entries at submission wait for: "
          + ", ".join(f"{k} {v:,} ({100 * v / total:.0f}%)" for k, v in waits.most_common()))  # fmt: skip
    rpb = list(stats.requests_per_batch.values())
    spread = Counter(min(r, 5) for r in rpb)
    print(f"requests a batch's entries went in: mean {statistics.fmean(rpb or [0]):.2f}, max {max(rpb or [0])} "
          f"(1: {spread[1]}, 2: {spread[2]}, 3: {spread[3]}, 4: {spread[4]}, 5+: {spread[5]}); "
          f"requests carrying several batches: {stats.coalesced}")  # fmt: skip
    if stats.out_of_order:
        print(f"!! {stats.out_of_order} records reached the API before an earlier record of their key")


async def _main(args: argparse.Namespace) -> None:
    kinds = ["mix", "txn"] if args.data == "both" else [args.data]
    if args.dispatcher_file:
        print(f"dispatcher from {args.dispatcher_file}")
    print(f"records {args.records:,}, users {args.users:,}, {args.partitions} partitions per topic, "
          f"fetches of {args.fetch}, batches ≤{args.max_items} items / {args.linger * 1000:g} ms linger, "
          f"max_in_flight {args.max_in_flight}, sender {args.sender} +{args.latency_ms:g} ms")  # fmt: skip
    for kind in kinds:
        for _ in range(args.repeat):
            if args.sender == "fake":
                stats, elapsed, cpu = await _run_once(
                    kind, args, FakeSender(args.latency_ms / 1000, args.request_cpu_us / 1e6)
                )
                _report(kind, stats, elapsed, cpu, None)
                continue
            faults = {"latency": {"fixed": args.latency_ms / 1000}} if args.latency_ms else None
            with start_sandbox(record="none", faults=faults) as sb:
                config = KardClientConfig(
                    base_url=sb.base_url,
                    client_id=sb.client_id,
                    client_secret=SecretStr(sb.client_secret),
                    max_connections=args.max_in_flight,
                    max_keepalive_connections=args.max_in_flight,
                )
                async with KardClient(config) as client:
                    srv0 = _cpu_seconds(sb.pid)
                    stats, elapsed, cpu = await _run_once(kind, args, client)
                    _report(kind, stats, elapsed, cpu, _cpu_seconds(sb.pid) - srv0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", choices=("mix", "txn", "both"), default="both")
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=2000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fetch", type=int, default=2000, help="max records per fetch (the pump's getmany)")
    parser.add_argument("--buffer", type=int, default=20_000, help="unfinished records above which fetching stops")
    parser.add_argument("--max-items", type=int, default=500)
    parser.add_argument("--max-bytes", type=int, default=4 * 1024 * 1024)
    parser.add_argument("--linger", type=float, default=0.05)
    parser.add_argument("--max-in-flight", type=int, default=16)
    parser.add_argument("--sender", choices=("sandbox", "fake"), default="sandbox")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="API latency added to every request")
    parser.add_argument("--request-cpu-us", type=float, default=300.0, help="fake sender: CPU per request")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--dispatcher-file", help="use the Dispatcher of this file (e.g. an older bridge/dispatch.py) instead"
    )
    args = parser.parse_args()
    configure_logging("ERROR", "console", sys.stderr)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(args))
        return
    uvloop.run(_main(args))


if __name__ == "__main__":
    main()
