"""Latency figures for bench_pipeline.py: from an input record's produce timestamp to its result.

Two measures, both against the input record's Kafka timestamp (CreateTime, set by the producer when the
record was appended to its batch; all processes share this machine's wall clock):

* **to result** (kard-bridge only): the result record's own Kafka timestamp (CreateTime, set by the bridge's
  producer when it produced the result) minus the input's timestamp, which the result value carries
  (``source.timestamp_ms``, see bridge/events/outcomes.py). Per-batch result records are read too when they
  list their sources (``sources``/``records``/``items`` entries with ``timestamp_ms`` or a ``source``).
* **to API** (every contender that calls the API): the time the sandbox started handling the request that
  carried the item (its request log, ``--record ids``) minus the input's timestamp. Only transaction and
  matched-transaction items can be matched back to their input (their item id is the event id); fraud
  markers, eligibility and attribution items cannot, so this covers about 76 % of the mixed data and all of
  the transactions-only data. A re-sent item counts at its first arrival.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import httpx
import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition

__all__ = ["api_arrivals", "api_latencies", "input_timestamps", "percentiles", "read_range", "result_latencies"]

_TRANSACTION_TYPES = {"transaction", "matched_transaction"}


def percentiles(samples: Sequence[float], points: Iterable[float] = (0.5, 0.99)) -> dict[str, float]:
    """Nearest-rank percentiles (``p50``, ``p99``, ...) plus ``max`` and ``n``; empty dict without samples."""
    if not samples:
        return {}
    ordered = sorted(samples)
    out = {f"p{round(100 * q):d}": ordered[max(0, math.ceil(q * len(ordered)) - 1)] for q in points}
    out["max"] = ordered[-1]
    out["n"] = len(ordered)
    return out


async def read_range(
    bootstrap: str, ranges: Mapping[TopicPartition, tuple[int, int]], *, timeout: float = 300.0
) -> list[Any]:
    """Every record with ``start <= offset < end`` of each partition (plain consumer, no group)."""
    wanted = {tp: (start, end) for tp, (start, end) in ranges.items() if end > start}
    if not wanted:
        return []
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        isolation_level="read_committed",  # results written in Kafka transactions count once they are committed
    )
    await consumer.start()
    out: list[Any] = []
    try:
        consumer.assign(list(wanted))
        for tp, (start, _end) in wanted.items():
            consumer.seek(tp, start)
        remaining = dict(wanted)
        async with asyncio.timeout(timeout):
            while remaining:
                polled = await consumer.getmany(timeout_ms=500, max_records=20_000)
                for tp, messages in polled.items():
                    end = wanted[tp][1]
                    out.extend(m for m in messages if m.offset < end)
                for tp, (_start, end) in list(remaining.items()):
                    # the position, not the last record: transaction markers take offsets but are never returned
                    if await consumer.position(tp) >= end:
                        del remaining[tp]
                        consumer.pause(tp)
    finally:
        await consumer.stop()
    return out


async def input_timestamps(
    bootstrap: str, ends: Mapping[TopicPartition, int], transactions_topic: str
) -> dict[str, int]:
    """``{event id: produce timestamp ms}`` of the transaction and matched-transaction records of a data set."""
    ranges = {tp: (0, end) for tp, end in ends.items() if tp.topic == transactions_topic}
    out: dict[str, int] = {}
    loads = orjson.loads
    for message in await read_range(bootstrap, ranges):
        event = loads(message.value)
        if event.get("event_type") in _TRANSACTION_TYPES:
            out[event["event_id"]] = message.timestamp
    return out


def _source_stamps(doc: Any) -> list[int]:
    if not isinstance(doc, dict):
        return []
    source = doc.get("source")
    if isinstance(source, dict) and isinstance(source.get("timestamp_ms"), int):
        return [source["timestamp_ms"]]
    stamps: list[int] = []
    for name in ("sources", "records", "items"):
        entries = doc.get(name)
        if isinstance(entries, list):
            for entry in entries:
                if isinstance(entry, dict):
                    stamp = entry.get("timestamp_ms", entry.get("source", {}).get("timestamp_ms"))
                    if isinstance(stamp, int):
                        stamps.append(stamp)
    return stamps


async def result_latencies(
    bootstrap: str, before: Mapping[TopicPartition, int], after: Mapping[TopicPartition, int]
) -> tuple[list[float], int]:
    """(ms from each input's produce timestamp to its result record's timestamp, result records read)."""
    ranges = {tp: (before.get(tp, 0), end) for tp, end in after.items() if tp.topic.endswith(".results")}
    samples: list[float] = []
    records = await read_range(bootstrap, ranges)
    for message in records:
        samples.extend(float(message.timestamp - stamp) for stamp in _source_stamps(orjson.loads(message.value)))
    return samples, len(records)


async def api_arrivals(base_url: str, endpoint: str = "transactions") -> dict[str, float]:
    """``{item key: first arrival time (epoch s)}`` from the sandbox's store (``--record ids`` or ``full``)."""
    out: dict[str, float] = {}
    params = {"endpoint": endpoint, "format": "jsonl"}
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=120.0) as client,
        client.stream("GET", "/_sandbox/received", params=params) as response,
    ):
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line:
                entry = orjson.loads(line)
                out.setdefault(entry["key"], entry["time"])
    return out


def api_latencies(arrivals: Mapping[str, float], produced: Mapping[str, int]) -> tuple[list[float], int]:
    """(ms from produce to API arrival for every item found in both, items produced but never seen)."""
    samples = [1000.0 * arrivals[key] - stamp for key, stamp in produced.items() if key in arrivals]
    return samples, len(produced) - len(samples)
