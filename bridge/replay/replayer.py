"""The replay loop: select failure records, republish them, and commit each only after its copy is acked.

Commit order, per chunk of at most :data:`CHUNK` records (smaller under ``--rate``, so a chunk lasts
about a second): decide every record (:func:`~bridge.replay.selection.select`) → enqueue the copies
of the selected ones on the idempotent ``acks=all`` producer → wait for every ack → commit, per DLQ
partition, the offset after the last record whose copy was acked (skipped, blocked and invalid records
are *handled* and committed too). An interrupted run therefore resumes where it stopped, and repeats
at most the one chunk whose acks had arrived but whose commit had not. If a copy is not acked the
partition is committed only up to that record and the run stops with an error: the next run starts
there (the acked copies after it in the same chunk would be republished again).

A dry run decides exactly what a real run would, but neither produces nor commits. The loop spawns
no tasks; a stop request (SIGINT/SIGTERM in the CLI) ends it after the current chunk's acks and commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import structlog

from bridge.config import Settings
from bridge.errors import ConfigError, OutputError
from bridge.events.outcomes import HEADER_PREFIX, HEADER_REPLAY_COUNT
from bridge.kafka import OutputProducer
from bridge.kafka.dlq_reader import DlqReader, PartitionSpan
from bridge.records import Header, SourceRecord
from bridge.replay.selection import Action, Filters, Verdict, select

__all__ = [
    "CHUNK",
    "HEADER_REPLAYED_FROM",
    "HEADER_REPLAY_ID",
    "Pacer",
    "ReplayObserver",
    "ReplayOptions",
    "ReplayProducer",
    "ReplaySource",
    "ReplayStats",
    "Replayer",
    "StopReason",
    "republish_headers",
    "run_replay",
]

_log = structlog.get_logger("bridge.replay")

HEADER_REPLAY_ID = "kard-bridge.replay-id"  # one UUID per replay run
HEADER_REPLAYED_FROM = "kard-bridge.replayed-from"  # "<dlq topic>:<partition>:<offset>"
CHUNK = 100  # records decided, acked and committed together (the duplicate window of a hard kill)

StopReason = Literal["end", "max", "interrupted", "error"]


def republish_headers(
    headers: Sequence[Header], *, replay_id: str, replay_count: int, replayed_from: str
) -> tuple[Header, ...]:
    """The replayed copy's headers: the input's own headers (every ``kard-bridge.*`` header removed,
    including an earlier replay's provenance) followed by this replay's provenance headers."""
    kept = tuple(h for h in headers if not h[0].startswith(HEADER_PREFIX))
    return (
        *kept,
        (HEADER_REPLAY_ID, replay_id.encode()),
        (HEADER_REPLAY_COUNT, str(replay_count).encode()),
        (HEADER_REPLAYED_FROM, replayed_from.encode()),
    )


class Pacer:
    """``--rate``: spaces sends ``1/rate`` seconds apart (no bursts); time is passed in (sans-I/O)."""

    def __init__(self, rate: float | None) -> None:
        if rate is not None and rate <= 0:
            raise ValueError("rate must be positive")
        self._interval = 1.0 / rate if rate else 0.0
        self._next: float | None = None

    def delay(self, now: float) -> float:
        """Seconds to wait before the next send at ``now``; reserves that send's slot."""
        if not self._interval:
            return 0.0
        if self._next is None or self._next < now:
            self._next = now
        wait = self._next - now
        self._next += self._interval
        return wait


@dataclass(frozen=True, slots=True)
class ReplayOptions:
    """One replay run. ``max_records`` caps the records replayed (``--max``); ``rate`` is records/s."""

    topic: str
    group_id: str
    filters: Filters = field(default_factory=Filters)
    to_topic: str | None = None
    dry_run: bool = False
    max_records: int | None = None
    rate: float | None = None
    replay_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    fetch_timeout: float = 1.0
    idle_timeout: float = 120.0


@dataclass(slots=True)
class ReplayStats:
    """The run's counters; ``replayed`` counts acked copies (would-be copies in a dry run)."""

    replay_id: str
    topic: str
    group_id: str
    dry_run: bool
    total: int = 0  # records between the group's positions and the end offsets at start
    examined: int = 0
    replayed: int = 0
    skipped: int = 0
    blocked: int = 0
    invalid: int = 0
    errors: int = 0  # copies that could not be produced or were not acked
    committed: dict[int, int] = field(default_factory=dict)  # DLQ partition -> committed next offset
    stopped: StopReason | None = None
    error: str | None = None
    started_at: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_at

    @property
    def exit_code(self) -> int:
        """0: done (blocked and invalid records are reported, not errors); 1: stopped by an error; 130: interrupted."""
        if self.stopped == "interrupted":
            return 130
        return 1 if self.errors or self.stopped == "error" else 0


class ReplayProducer(Protocol):
    """What the replayer needs of a producer (``bridge.kafka.OutputProducer`` fits)."""

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Sequence[Header] = ()
    ) -> asyncio.Future[Any]: ...


class ReplaySource(Protocol):
    """What the replayer needs of the failures-topic side (:class:`~bridge.kafka.dlq_reader.DlqReader` fits)."""

    @property
    def finished(self) -> bool: ...

    async def open(self) -> dict[int, PartitionSpan]: ...

    async def fetch(self, timeout: float, max_records: int) -> list[SourceRecord]: ...

    async def commit(self, offsets: Mapping[int, int]) -> None: ...

    async def topic_exists(self, name: str) -> bool: ...


class ReplayObserver(Protocol):
    """Receives the run's events (the CLI's table, JSON lines and progress); must not block."""

    def started(self, stats: ReplayStats, spans: Mapping[int, PartitionSpan]) -> None: ...

    def record(self, record: SourceRecord, verdict: Verdict, target: str | None) -> None: ...

    def progress(self, stats: ReplayStats) -> None: ...

    def finished(self, stats: ReplayStats) -> None: ...


class Replayer:
    """Runs one replay: ``reader`` (entered by the caller; opened here), ``producer`` (None for a dry run)."""

    def __init__(
        self,
        options: ReplayOptions,
        reader: ReplaySource,
        producer: ReplayProducer | None,
        observer: ReplayObserver,
    ) -> None:
        if producer is None and not options.dry_run:
            raise ValueError("a producer is required unless dry_run")
        self.options = options
        self.stats = ReplayStats(options.replay_id, options.topic, options.group_id, options.dry_run)
        self._reader = reader
        self._producer = producer
        self._observer = observer
        self._pacer = Pacer(options.rate)
        self._chunk = CHUNK if not options.rate else max(1, min(CHUNK, int(options.rate)))
        self._selected = 0  # REPLAY decisions so far (the --max budget)
        self._stop_requested = asyncio.Event()

    def request_stop(self) -> None:
        """Finish the current chunk (acks and commit), then stop; safe to call from a signal handler."""
        self._stop_requested.set()

    async def run(self) -> ReplayStats:
        """Replay up to the end offsets seen at start (or ``--max``, or a stop request).

        Raises:
            ConfigError: the DLQ topic or the ``--to`` topic does not exist.
        """
        opts, stats = self.options, self.stats
        spans = await self._reader.open()
        stats.total = sum(span.size for span in spans.values())
        if opts.to_topic and not opts.dry_run and not await self._reader.topic_exists(opts.to_topic):
            raise ConfigError(f"topic {opts.to_topic!r} (--to) does not exist")
        _log.info("replay_started", topic=opts.topic, group=opts.group_id, records=stats.total, dry_run=opts.dry_run)
        self._observer.started(stats, spans)
        loop = asyncio.get_running_loop()
        last_record_at = loop.time()
        try:
            while stats.stopped is None:
                if self._reader.finished:
                    stats.stopped = "end"
                elif self._stop_requested.is_set():
                    stats.stopped = "interrupted"
                elif opts.max_records is not None and self._selected >= opts.max_records:
                    stats.stopped = "max"
                else:
                    records = await self._reader.fetch(opts.fetch_timeout, self._chunk)
                    if records:
                        last_record_at = loop.time()
                        await self._handle(records)
                    elif loop.time() - last_record_at > opts.idle_timeout:
                        self._fail(f"no records arrived for {opts.idle_timeout:.0f} s before the end offsets")
                    self._observer.progress(stats)
        except OutputError as exc:
            self._fail(str(exc))
        _log.info(
            "replay_finished",
            topic=opts.topic,
            stopped=stats.stopped,
            replayed=stats.replayed,
            skipped=stats.skipped,
            blocked=stats.blocked,
            invalid=stats.invalid,
            errors=stats.errors,
        )
        self._observer.finished(stats)
        return stats

    async def _handle(self, records: Sequence[SourceRecord]) -> None:
        """Decide, send, await the acks, commit: one chunk (see the module docstring for the order)."""
        opts, stats = self.options, self.stats
        handled: list[tuple[SourceRecord, asyncio.Future[Any] | None]] = []
        for record in records:
            if self._stop_requested.is_set():
                stats.stopped = "interrupted"
                break
            if opts.max_records is not None and self._selected >= opts.max_records:
                stats.stopped = "max"
                break
            verdict = select(record.headers, opts.filters, key=record.key)
            target = None
            future: asyncio.Future[Any] | None = None
            if verdict.action is Action.REPLAY and verdict.failure is not None:
                target = opts.to_topic or verdict.failure.source_topic
                if not opts.dry_run:
                    sent = await self._send(record, verdict, target)
                    if sent is None:
                        break  # the run stops; this record stays uncommitted
                    future = sent
                self._selected += 1
            handled.append((record, future))
            self._count(verdict.action)
            self._observer.record(record, verdict, target)
        await self._settle(handled)

    async def _send(self, record: SourceRecord, verdict: Verdict, target: str) -> asyncio.Future[Any] | None:
        """Enqueue the copy (after the pacer's delay); None when the run must stop instead."""
        assert self._producer is not None
        if not await self._reader.topic_exists(target):
            self._fail(f"target topic {target!r} does not exist (replay to another topic with --to)")
            return None
        wait = self._pacer.delay(asyncio.get_running_loop().time())
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), wait)
            if self._stop_requested.is_set():
                self.stats.stopped = "interrupted"
                return None
        headers = republish_headers(
            record.headers,
            replay_id=self.options.replay_id,
            replay_count=verdict.replay_count + 1,
            replayed_from=f"{record.topic}:{record.partition}:{record.offset}",
        )
        try:
            return await self._producer.send(target, record.value, record.key, headers)
        except OutputError as exc:
            self.stats.errors += 1
            self._fail(str(exc))
            return None

    async def _settle(self, handled: Sequence[tuple[SourceRecord, asyncio.Future[Any] | None]]) -> None:
        """Wait for the chunk's acks, then commit each partition up to its first unacked copy."""
        stats = self.stats
        commit: dict[int, int] = {}
        failed: dict[int, str] = {}
        for record, future in handled:
            if future is not None:
                await asyncio.wait([future])
                problem = "cancelled" if future.cancelled() else _name(future.exception())
                if problem:
                    stats.errors += 1
                    failed.setdefault(record.partition, problem)
                    _log.warning(
                        "replay_copy_not_acked",
                        topic=record.topic,
                        partition=record.partition,
                        offset=record.offset,
                        error=problem,
                    )
                    continue
                stats.replayed += 1
            if record.partition not in failed:
                commit[record.partition] = record.offset + 1
        if not self.options.dry_run and commit:
            await self._reader.commit(commit)
            stats.committed.update(commit)
        if failed:
            self._fail("a replayed copy was not acknowledged: " + ", ".join(sorted(set(failed.values()))))

    def _count(self, action: Action) -> None:
        stats = self.stats
        stats.examined += 1
        if action is Action.REPLAY and self.options.dry_run:
            stats.replayed += 1
        elif action is Action.SKIP:
            stats.skipped += 1
        elif action is Action.BLOCK:
            stats.blocked += 1
        elif action is Action.INVALID:
            stats.invalid += 1

    def _fail(self, message: str) -> None:
        if self.stats.error is None:
            self.stats.error = message
        self.stats.stopped = "error"


def _name(exc: BaseException | None) -> str:
    return "" if exc is None else type(exc).__name__


async def run_replay(
    settings: Settings, options: ReplayOptions, observer: ReplayObserver, *, handle_signals: bool = True
) -> ReplayStats:
    """Build the DLQ reader and (unless ``dry_run``) the idempotent ``acks=all`` producer, then replay.

    With ``handle_signals`` (and on the main thread) the first SIGINT/SIGTERM asks the run to stop
    after its current chunk; a second one acts as usual.

    Raises:
        ConfigError: the DLQ topic or the ``--to`` topic does not exist.
        OutputError: Kafka cannot be reached.
    """
    kafka = settings.kafka
    async with contextlib.AsyncExitStack() as stack:
        reader = await stack.enter_async_context(
            DlqReader(
                options.topic,
                group_id=options.group_id,
                consumer_kwargs={**kafka.to_consumer_kwargs(), "client_id": f"{kafka.client_id}-replay"},
                common_kwargs=kafka.common_kwargs(),
            )
        )
        producer = None
        if not options.dry_run:
            try:
                producer = await stack.enter_async_context(
                    OutputProducer(kafka.common_kwargs(), client_id=f"{kafka.client_id}-replay")
                )
            except TimeoutError as exc:
                raise OutputError("cannot start the producer: timed out") from exc
        replayer = Replayer(options, reader, producer, observer)
        if handle_signals and threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM)

            def stop() -> None:
                replayer.request_stop()
                for sig in signals:
                    loop.remove_signal_handler(sig)

            for sig in signals:
                loop.add_signal_handler(sig, stop)
            stack.callback(lambda: [loop.remove_signal_handler(sig) for sig in signals])
        return await replayer.run()
