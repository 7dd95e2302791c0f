"""Throughput of the sans-I/O core (offset tracker, batcher, flow control, backoff), in operations per second.

Run: ``.venv/bin/python bench/bench_core.py [--records N]``. Each figure is the best of three runs of a
loop that mimics the hot path for N records; compare figures from one run on one machine only (the
target order of magnitude for the whole bridge is 50k records/s, so each step should be far above it).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable

from bridge.pipeline.batcher import BatchEntry, Batcher
from bridge.pipeline.flow import FlowControl
from bridge.pipeline.offsets import OffsetTracker
from bridge.pipeline.retry import Backoff, RetryPolicy
from bridge.records import RecordRef, TopicPartition
from bridge.routes import Endpoint, MappedItem, Route

__all__ = ["main"]

PARTITIONS = 12


def _refs(n: int) -> list[RecordRef]:
    return [RecordRef("payments", i % PARTITIONS, i // PARTITIONS) for i in range(n)]


def bench_tracker_in_order(refs: list[RecordRef]) -> int:
    """track + finish in offset order, one committable() per 500 records: 2 ops per record."""
    tracker = OffsetTracker()
    for p in range(PARTITIONS):
        tracker.assign(TopicPartition("payments", p), committed=0)
    for i, ref in enumerate(refs):
        tracker.track(ref)
        tracker.finish(ref)
        if i % 500 == 0:
            tracker.mark_committed(tracker.committable())
    return 2 * len(refs)


def bench_tracker_shuffled(refs: list[RecordRef]) -> int:
    """track everything in windows of 1000, then finish each window in random order: 2 ops per record."""
    tracker = OffsetTracker()
    for p in range(PARTITIONS):
        tracker.assign(TopicPartition("payments", p), committed=0)
    rng = random.Random(7)
    window = 1000
    for start in range(0, len(refs), window):
        chunk = refs[start : start + window]
        for ref in chunk:
            tracker.track(ref)
        shuffled = chunk[:]
        rng.shuffle(shuffled)
        for ref in shuffled:
            tracker.finish(ref)
        tracker.mark_committed(tracker.committable())
    return 2 * len(refs)


def _entries(refs: list[RecordRef], routes: int) -> list[BatchEntry]:
    encoded = b'{"id":"tx-0000000000","amount":1234,"currency":"USD","userId":"u-000000","status":"APPROVED"}'
    route_list = [Route(Endpoint.TRANSACTIONS, f"org-{r}") for r in range(routes)]
    return [BatchEntry(ref, MappedItem(route_list[i % routes], {}, str(i), "u", encoded)) for i, ref in enumerate(refs)]


def _bench_batcher(entries: list[BatchEntry]) -> int:
    batcher = Batcher(max_bytes=1_000_000, linger=0.05, max_items=500)
    now = 0.0
    for i, entry in enumerate(entries):
        now += 0.00002
        for batch in batcher.add(entry, now):
            _ = batch.body_bytes
        if i % 256 == 0:
            for batch in batcher.due(now):
                _ = batch.body_bytes
    for batch in batcher.flush_all():
        _ = batch.body_bytes
    return len(entries)


def bench_flow(refs: list[RecordRef]) -> int:
    """admit + should_pause + release + should_resume per record: 4 ops per record."""
    control = FlowControl(high_records=10_000, low_records=5_000, high_bytes=64 << 20, low_bytes=32 << 20)
    for _ in refs:
        control.admit(1, 100)
        if control.should_pause():
            control.mark_paused()
        control.release(1, 100)
        if control.should_resume():
            control.mark_resumed()
    return 4 * len(refs)


def bench_backoff(refs: list[RecordRef]) -> int:
    """One RetryState.next_delay per record (a new state every 10 failures): 1 op per record."""
    policy = RetryPolicy(backoff=Backoff(), max_retry_time=600.0)
    state = policy.new_state()
    rand = random.Random(3).random
    for i, _ in enumerate(refs):
        if i % 10 == 0:
            state.reset()
        state.next_delay(float(i), None if i % 3 else 1.0, rand())
        state.exhausted(float(i))
    return len(refs)


def _best(fn: Callable[[], int], repeat: int = 3) -> float:
    best = 0.0
    for _ in range(repeat):
        start = time.perf_counter()
        ops = fn()
        elapsed = time.perf_counter() - start
        best = max(best, ops / elapsed)
    return best


def main() -> None:
    """Run every benchmark and print one line each: name, ops/s, and what one op is."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=200_000)
    args = parser.parse_args()
    refs = _refs(args.records)
    one_route = _entries(refs, 1)
    many_routes = _entries(refs, 1000)
    cases: list[tuple[str, Callable[[], int], str]] = [
        ("offsets.in_order", lambda: bench_tracker_in_order(refs), "track or finish"),
        ("offsets.shuffled_1000", lambda: bench_tracker_shuffled(refs), "track or finish"),
        ("batcher.one_route", lambda: _bench_batcher(one_route), "add (incl. body build)"),
        ("batcher.1000_routes", lambda: _bench_batcher(many_routes), "add (incl. body build)"),
        ("flow.admit_release", lambda: bench_flow(refs), "admit/release/decision"),
        ("retry.next_delay", lambda: bench_backoff(refs), "next_delay + exhausted"),
    ]
    print(f"records per run: {args.records}, best of 3")
    for name, fn, unit in cases:
        print(f"{name:<24} {_best(fn):>14,.0f} ops/s   (op = {unit})")


if __name__ == "__main__":
    main()
