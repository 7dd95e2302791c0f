"""Dispatcher: sends closed batches to the Kard API with bounded concurrency, per-key order and retries.

One task per submitted batch runs in the dispatcher's own TaskGroup. The number of such tasks is
bounded by the flow control upstream (buffered records), and the number of requests actually on the
wire by ``max_in_flight`` (a semaphore, kept ≤ the HTTP pool size so a pool timeout means a bug).

Ordering: a batch waits until every earlier batch that shares an ordering key (the user id) of the
same partition is finished, so a later record for a key is never sent while an earlier one is in
flight. On endpoints that can answer 207 (transactions, fraud), the items of one key in one batch are
split into *waves* (first occurrences, second
occurrences, ...) sent one after the other, so a partial failure (207) of an earlier event can never
let a later event of the same key overtake it. Different keys proceed in parallel.

Per-item outcomes (see ``bridge.kard.responses``): accepted/unconfirmed → result; rejected → failure
record; retry/not_attempted → re-sent (after back-off for retry); bisect → the batch is halved until the
culprit stands alone. Whole-request transient errors (connection, timeout, 408, 429, 5xx) are retried
with full-jitter back-off honouring ``Retry-After``; while the API is down the records stay in flight
(the consumer pauses when buffers fill) until ``max_retry_time`` turns them into ``retries_exhausted``
failures. Credentials refused (``AuthError``) are never dead-lettered: the dispatcher holds back and
keeps retrying, and readiness reports it.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

import structlog

from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.responses import BatchResponse, ItemOutcome, OutcomeKind
from bridge.pipeline.batcher import Batch, BatchEntry
from bridge.pipeline.retry import RetryPolicy
from bridge.records import TopicPartition
from bridge.routes import Endpoint, MappedItem, Route

__all__ = ["BatchSender", "DeliveryFailure", "Dispatcher", "DispatcherStatistics", "OutcomeSink"]

_log = structlog.get_logger("bridge.dispatch")

#: Endpoints that may accept part of a request (HTTP 207): there, two events of one key never share a request.
_PARTIAL_SUCCESS = frozenset({Endpoint.TRANSACTIONS, Endpoint.FRAUD})


class BatchSender(Protocol):
    """What the dispatcher needs from the Kard client."""

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse: ...


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """Why an item could not be delivered; becomes the failure record's headers."""

    reason: str  # rejected | retries_exhausted
    message: str
    attempts: int
    first_failure_at: float  # epoch seconds
    last_failure_at: float
    http_status: int | None = None
    api_detail: str | None = None
    api_pointer: str | None = None


class OutcomeSink(Protocol):
    """Publishes outcome records and finishes offsets once Kafka acknowledged them."""

    async def delivered(
        self,
        route: Route,
        entries: Sequence[BatchEntry],
        response: BatchResponse,
        outcomes: Sequence[ItemOutcome],
        attempts: int,
        latency: float,
    ) -> None: ...

    async def undeliverable(self, route: Route, failures: Sequence[tuple[BatchEntry, DeliveryFailure]]) -> None: ...


class DispatcherStatistics(NamedTuple):
    """A snapshot for metrics and health."""

    batches_pending: int  # submitted, not finished (waiting for order, slots, back-off or in flight)
    requests_in_flight: int
    requests_sent: int
    retries: int
    bisections: int
    auth_failures: int
    holding_back: bool  # the API is refusing credentials or unavailable right now


@dataclass(slots=True, eq=False)
class _Job:
    batch: Batch
    done: asyncio.Event = field(default_factory=asyncio.Event)
    partitions: frozenset[TopicPartition] = frozenset()


class Dispatcher:
    """Owns the in-flight batches; an async context manager wrapping one TaskGroup."""

    def __init__(
        self,
        sender: BatchSender,
        sink: OutcomeSink,
        *,
        max_in_flight: int,
        policy: RetryPolicy,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._sender = sender
        self._sink = sink
        self._slots = asyncio.Semaphore(max_in_flight)
        self._policy = policy
        self._clock = clock
        self._rand = rand
        self._tg: asyncio.TaskGroup | None = None
        self._jobs: set[_Job] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_by_key: dict[tuple[str, int, str], _Job] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._in_flight = 0
        self._sent = 0
        self._retries = 0
        self._bisections = 0
        self._auth_failures = 0
        self._failing_since: float | None = None

    async def __aenter__(self) -> Dispatcher:
        if self._tg is not None:
            raise RuntimeError("dispatcher already started")
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            await tg.__aexit__(*exc_info)  # type: ignore[arg-type]

    # -- submission ----------------------------------------------------------------------------------

    def submit(self, batch: Batch) -> None:
        """Start delivering ``batch``; returns at once (the caller bounds how much is submitted)."""
        if self._tg is None:
            raise RuntimeError("dispatcher is not running")
        job = _Job(batch, partitions=frozenset(e.ref.tp for e in batch.entries))
        deps: list[_Job] = []
        for entry in batch.entries:
            key = _order_key(entry)
            prev = self._last_by_key.get(key)
            if prev is not None and prev is not job and not prev.done.is_set() and prev not in deps:
                deps.append(prev)
            self._last_by_key[key] = job
        self._jobs.add(job)
        self._idle.clear()
        task = self._tg.create_task(self._run(job, deps))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> int:
        """Cancel every unfinished batch (end of a drain budget); their records stay uncommitted."""
        for task in self._tasks:
            task.cancel()
        return len(self._tasks)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until every submitted batch is finished; False when ``timeout`` ran out first."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def wait_partitions(self, partitions: Collection[TopicPartition], timeout: float) -> bool:
        """Wait until no unfinished batch holds a record of ``partitions`` (used on revoke)."""
        wanted = frozenset(partitions)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    pending = [j for j in self._jobs if j.partitions & wanted]
                    if not pending:
                        return True
                    await pending[0].done.wait()
        except TimeoutError:
            return False

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            batches_pending=len(self._jobs),
            requests_in_flight=self._in_flight,
            requests_sent=self._sent,
            retries=self._retries,
            bisections=self._bisections,
            auth_failures=self._auth_failures,
            holding_back=self._failing_since is not None,
        )

    # -- delivery ------------------------------------------------------------------------------------

    async def _run(self, job: _Job, deps: list[_Job]) -> None:
        try:
            for dep in deps:
                await dep.done.wait()
            route = job.batch.route
            if route.endpoint in _PARTIAL_SUCCESS:
                for wave in _waves(job.batch.entries):
                    await self._deliver(route, wave)
            else:
                # All-or-nothing endpoints (no 207): nothing of a refused request was accepted, so a later
                # event of a key cannot overtake an earlier one; one request keeps per-user batches whole.
                await self._deliver(route, job.batch.entries)
        finally:
            job.done.set()
            self._jobs.discard(job)
            for entry in job.batch.entries:
                key = _order_key(entry)
                if self._last_by_key.get(key) is job:
                    del self._last_by_key[key]
            if not self._jobs:
                self._idle.set()

    async def _deliver(self, route: Route, entries: Sequence[BatchEntry]) -> None:
        """Deliver ``entries`` until each is terminal (result or failure record published)."""
        pending = list(entries)
        state = self._policy.new_state()
        attempts = 0
        first_failure_wall: float | None = None
        while pending:
            attempts += 1
            started = self._clock()
            try:
                async with self._slots:
                    self._in_flight += 1
                    self._sent += 1
                    try:
                        response = await self._sender.send_batch(route, [e.item for e in pending])
                    finally:
                        self._in_flight -= 1
            except (TransientDeliveryError, AuthError) as exc:
                now = self._clock()
                first_failure_wall = first_failure_wall or time.time()
                self._failing_since = self._failing_since or now
                retry_after = exc.retry_after if isinstance(exc, TransientDeliveryError) else None
                delay = state.next_delay(now, retry_after, self._rand())
                if isinstance(exc, AuthError):
                    # Refused credentials are never the records' fault: hold back, never dead-letter.
                    self._auth_failures += 1
                    _log.error("kard_auth_refused", route=str(route), status=exc.status, attempt=attempts)
                elif state.exhausted(now):
                    await self._give_up(route, pending, attempts, first_failure_wall, exc)
                    return
                else:
                    _log.warning(
                        "batch_send_failed",
                        route=str(route),
                        status=exc.status,
                        attempt=attempts,
                        items=len(pending),
                        error=exc.message,
                        retry_in=round(delay, 3),
                    )
                self._retries += 1
                await asyncio.sleep(delay)
                continue
            self._failing_since = None
            latency = self._clock() - started
            pending, retry_after, halves = await self._settle(route, pending, response, attempts, latency)
            if halves:
                self._bisections += 1
                for half in halves:
                    await self._deliver(route, half)
                return
            if pending:
                now = self._clock()
                first_failure_wall = first_failure_wall or time.time()
                delay = state.next_delay(now, retry_after, self._rand())
                if state.exhausted(now):
                    await self._give_up(route, pending, attempts, first_failure_wall, None)
                    return
                self._retries += 1
                await asyncio.sleep(delay)

    async def _give_up(
        self,
        route: Route,
        pending: Sequence[BatchEntry],
        attempts: int,
        first_failure_wall: float,
        error: TransientDeliveryError | None,
    ) -> None:
        cause = error.message if error is not None else "items kept failing transiently"
        failure = DeliveryFailure(
            reason="retries_exhausted",
            message=f"gave up after {attempts} attempts: {cause}",
            attempts=attempts,
            first_failure_at=first_failure_wall,
            last_failure_at=time.time(),
            http_status=error.status if error is not None else None,
            api_detail=error.detail if error is not None else None,
        )
        _log.error("batch_retries_exhausted", route=str(route), items=len(pending), attempts=attempts)
        await self._sink.undeliverable(route, [(e, failure) for e in pending])

    async def _settle(
        self,
        route: Route,
        sent: list[BatchEntry],
        response: BatchResponse,
        attempts: int,
        latency: float,
    ) -> tuple[list[BatchEntry], float | None, list[list[BatchEntry]]]:
        """Publish terminal outcomes; return (to re-send, back-off hint or None, halves to bisect)."""
        done: list[BatchEntry] = []
        done_outcomes: list[ItemOutcome] = []
        failures: list[tuple[BatchEntry, DeliveryFailure]] = []
        again: list[BatchEntry] = []
        backoff_needed = False
        bisect: list[BatchEntry] = []
        now_wall = time.time()
        for entry, outcome in zip(sent, response.outcomes, strict=True):
            kind = outcome.kind
            if kind is OutcomeKind.ACCEPTED or kind is OutcomeKind.UNCONFIRMED:
                done.append(entry)
                done_outcomes.append(outcome)
            elif kind is OutcomeKind.REJECTED:
                failures.append(
                    (
                        entry,
                        DeliveryFailure(
                            reason="rejected",
                            message=outcome.title or f"HTTP {outcome.status}",
                            attempts=attempts,
                            first_failure_at=now_wall,
                            last_failure_at=now_wall,
                            http_status=outcome.status,
                            api_detail=outcome.detail,
                            api_pointer=outcome.pointer,
                        ),
                    )
                )
            elif kind is OutcomeKind.BISECT:
                bisect.append(entry)
            else:  # RETRY or NOT_ATTEMPTED
                again.append(entry)
                backoff_needed = backoff_needed or kind is OutcomeKind.RETRY
        if done:
            await self._sink.delivered(route, done, response, done_outcomes, attempts, latency)
        if failures:
            await self._sink.undeliverable(route, failures)
        halves: list[list[BatchEntry]] = []
        if bisect:
            rest = bisect + again  # keep original order: bisection re-sends everything not yet terminal
            rest.sort(key=sent.index)
            mid = max(1, len(rest) // 2)
            halves = [rest[:mid], rest[mid:]] if len(rest) > 1 else [rest]
            return [], None, [h for h in halves if h]
        # Items refused only because of others (not_attempted) go again at once; transient ones back off.
        hint = response.retry_after if backoff_needed else 0.0
        return again, hint, []


def _order_key(entry: BatchEntry) -> tuple[str, int, str]:
    """Order is kept per ordering key *within a partition*: Kafka orders nothing across partitions."""
    ref = entry.ref
    return (ref.topic, ref.partition, entry.item.ordering_key)


def _waves(entries: Sequence[BatchEntry]) -> list[list[BatchEntry]]:
    """Split entries so that no ordering key appears twice in one wave, keeping per-key order."""
    seen: dict[str, int] = {}
    waves: list[list[BatchEntry]] = []
    for entry in entries:
        key = entry.item.ordering_key
        n = seen.get(key, 0)
        seen[key] = n + 1
        if n == len(waves):
            waves.append([])
        waves[n].append(entry)
    return waves
