"""Dispatcher: sends closed batches to the Kard API with bounded concurrency, per-key order and retries.

One task per request (with its retries) runs in the dispatcher's own TaskGroup. The number of
records submitted is bounded by the flow control upstream (buffered records), and the number of
requests actually on the wire by ``max_in_flight`` (slots, kept ≤ the HTTP pool size so a pool
timeout means a bug). With an
:class:`~bridge.pipeline.concurrency.AdaptiveConcurrency` limiter (``BRIDGE_ADAPTIVE_CONCURRENCY``) the
number of slots follows the limiter instead, between 1 and ``max_in_flight``: every attempt reports its
round-trip time, and transient failures (408, 429, 5xx, timeouts, connection errors) report
back-pressure. A lowered limit revokes nothing: requests above it finish, and nobody new starts until
the count is below the limit.

Ordering (bookkeeping in :mod:`bridge.pipeline.keyorder`): every unfinished record waits in a queue per
ordering key (the user id) of its partition, in input order (``hold``), and a record may be sent only
while it is the oldest unfinished record of its key: a later record for a key is never sent while an
earlier one is in flight, yet one busy key does not hold back the others. On endpoints that can answer
207 (transactions, fraud), two records of one key never share a request (a partial success could
otherwise let the later one through alone); on all-or-nothing endpoints (per-user attributions) a run of
one key's records travels together, in order. Different keys proceed in parallel. A record becomes free
again for its key's next record as soon as it is terminal (its outcome published), not when the rest of
its request is.

Requests are formed per route, not per batch: a submitted batch's entries join their route's *pool*,
and each request takes the free entries of the pool, oldest first, up to the batch limits (items and
bytes). An entry whose key is busy stays in the pool and goes in a later request of its route, with
whatever else is free by then, instead of the batch waiting or splitting into one request per wave.
When a request of the route is already out and fewer than a full request's worth are free, the free
entries wait for that answer (it frees more keys) or at most ``_GATHER_WAIT``, whichever comes first;
full requests never wait, so a backlog keeps several requests in flight.

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
import contextlib
import functools
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import structlog

from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.responses import BatchResponse, ItemOutcome, OutcomeKind
from bridge.pipeline.batcher import Batch, BatchEntry
from bridge.pipeline.concurrency import AdaptiveConcurrency
from bridge.pipeline.keyorder import KeyOrder, Pool
from bridge.pipeline.retry import RetryPolicy
from bridge.records import TopicPartition
from bridge.routes import MappedItem, Route

__all__ = ["BatchSender", "DeliveryFailure", "Dispatcher", "DispatcherStatistics", "OutcomeSink"]

_log = structlog.get_logger("bridge.dispatch")

#: Longest time free entries of a route wait for its request in flight to answer (and free more keys)
#: before they go on their own, in a request that is not full.
_GATHER_WAIT = 0.05


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
    concurrency_limit: int = 0  # requests allowed on the wire now (max_in_flight unless adaptive)


class _Slots:
    """In-flight request slots whose number may change while requests are out (a resizable semaphore).

    Lowering :attr:`limit` revokes nothing: holders above it finish and release, and nobody new gets a
    slot until ``in_flight < limit``. Waiters are served first in, first out. A slot is handed over when
    a waiter is woken, so a waiter cancelled after that gives it back instead of leaking it.
    """

    __slots__ = ("_waiters", "in_flight", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.in_flight < self.limit and not self._waiters:
            self.in_flight += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.cancelled():  # still waiting: leave the queue (unless _wake already dropped it)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                self._wake()
            else:  # a slot was handed over just before the cancellation arrived
                self.release()
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def resize(self, limit: int) -> None:
        self.limit = limit
        self._wake()

    def _wake(self) -> None:
        waiters = self._waiters
        while waiters and self.in_flight < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self.in_flight += 1
                waiter.set_result(None)


class Dispatcher:
    """Owns the in-flight batches; an async context manager wrapping one TaskGroup.

    Args:
        sender: the Kard client (or a test double).
        sink: where outcomes go.
        max_in_flight: requests on the wire at most (the HTTP pool size).
        policy: retry back-off and budget.
        concurrency: an adaptive limiter; the number of requests on the wire then follows its
            ``limit`` (≤ ``max_in_flight``). ``None``: a static ``max_in_flight``.
        clock: monotonic seconds (latency, back-off and the limiter's windows).
        rand: uniform in ``[0, 1)`` for jitter.

    Raises:
        ValueError: ``concurrency.max_limit`` is above ``max_in_flight``.
    """

    def __init__(
        self,
        sender: BatchSender,
        sink: OutcomeSink,
        *,
        max_in_flight: int,
        policy: RetryPolicy,
        concurrency: AdaptiveConcurrency | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        if concurrency is not None and concurrency.max_limit > max_in_flight:
            raise ValueError(
                f"the adaptive limit's ceiling ({concurrency.max_limit}) is above max_in_flight ({max_in_flight})"
            )
        self._sender = sender
        self._sink = sink
        self._limiter = concurrency
        self._slots = _Slots(concurrency.limit if concurrency is not None else max_in_flight)
        self._policy = policy
        self._clock = clock
        self._rand = rand
        self._tg: asyncio.TaskGroup | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._order = KeyOrder()
        self._jobs = self._order.jobs  # submitted batches not finished
        self._dirty: dict[Route, Pool] = {}  # pools to look at on the next loop iteration
        self._dirty_scheduled = False
        self._idle = asyncio.Event()
        self._idle.set()
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
        tg = self._tg
        if tg is None:
            return
        if exc_info[0] is None and self._jobs:
            # Entries waiting in a pool are not tasks: wait for them as the group waits for its tasks.
            try:
                await self._idle.wait()
            except BaseException as exc:
                self._tg = None
                self.cancel_all()
                await tg.__aexit__(type(exc), exc, exc.__traceback__)
                raise
        elif exc_info[0] is not None:
            self.cancel_all()
        self._tg = None
        await tg.__aexit__(*exc_info)  # type: ignore[arg-type]

    # -- submission ----------------------------------------------------------------------------------

    def submit(self, batch: Batch) -> None:
        """Start delivering ``batch``; returns at once (the caller bounds how much is submitted).

        Its entries join their route's pool; requests are formed on the next loop iteration, so batches
        submitted together (one fetch's worth) share requests.
        """
        if self._tg is None:
            raise RuntimeError("dispatcher is not running")
        if batch.entries:
            self._idle.clear()
            self._mark(self._order.submit(batch))

    def hold(self, entry: BatchEntry) -> None:
        """Announce a record in input order, before its batch is closed.

        A record waiting in an open batch of one route then holds back later records of its key that
        travel in another route's batch (a transaction, then a fraud marker for the same user), so batches
        never have to be closed early to keep a key's order.
        """
        self._order.hold(entry)

    def forget(self, entries: Sequence[BatchEntry]) -> None:
        """Drop held records that will not be sent here (their partition was revoked)."""
        self._release(entries)

    def cancel_all(self) -> int:
        """Cancel every unfinished batch (end of a drain budget); their records stay uncommitted.

        Requests out are cancelled and entries not yet sent dropped; returns the number of batches concerned.
        """
        count = len(self._jobs)
        for task in self._tasks:
            task.cancel()
        for pool in self._order.pools.values():
            if pool.timer is not None:
                pool.timer.cancel()
                pool.timer = None
        self._release(self._order.unsent_entries())
        return count

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
            requests_in_flight=self._slots.in_flight,
            requests_sent=self._sent,
            retries=self._retries,
            bisections=self._bisections,
            auth_failures=self._auth_failures,
            holding_back=self._failing_since is not None,
            concurrency_limit=self._slots.limit,
        )

    # -- delivery ------------------------------------------------------------------------------------

    def _mark(self, pool: Pool) -> None:
        """Look at ``pool`` on the next loop iteration (once, however many changes come before)."""
        self._dirty[pool.route] = pool
        if not self._dirty_scheduled:
            self._dirty_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_dirty)

    def _flush_dirty(self) -> None:
        self._dirty_scheduled = False
        dirty, self._dirty = self._dirty, {}
        for pool in dirty.values():
            self._dispatch(pool, force=False)

    def _gathered(self, pool: Pool) -> None:
        pool.timer = None
        self._dispatch(pool, force=True)

    def _dispatch(self, pool: Pool, *, force: bool) -> None:
        """Start the requests ``pool`` should send now.

        Full requests go at once. Less than a full request goes at once when no request of the route is
        awaiting its answer, or with ``force`` (the gather wait is over); otherwise it waits for that
        answer, which frees more keys, or for the gather timer, whichever comes first.
        """
        tg = self._tg
        if tg is None:
            return
        free = pool.free
        while free:
            if not force and pool.waiting and len(free) < pool.max_items:
                if pool.timer is None:
                    pool.timer = asyncio.get_running_loop().call_later(_GATHER_WAIT, self._gathered, pool)
                return
            entries = self._order.take(pool)
            pool.waiting += 1
            pool.tasks += 1
            task = tg.create_task(self._deliver(pool, entries))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._request_done, pool, entries))
        if pool.timer is not None:
            pool.timer.cancel()
            pool.timer = None
        self._order.discard_if_idle(pool)

    def _request_done(self, pool: Pool, entries: list[BatchEntry], task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        pool.waiting -= 1
        pool.tasks -= 1
        owners = self._order.owners
        left = [entry for entry in entries if id(entry) in owners]
        if left:  # cancelled (or failed): do not block later records of these keys forever
            self._release(left)
        self._mark(pool)

    def _release(self, entries: Sequence[BatchEntry]) -> None:
        """``entries`` are terminal (or dropped): later records of their keys may go."""
        for pool in self._order.release(entries):
            self._mark(pool)
        if not self._jobs:
            self._idle.set()

    async def _deliver(self, pool: Pool, entries: Sequence[BatchEntry]) -> None:
        """Deliver ``entries`` until each is terminal (result or failure record published, then released)."""
        route = pool.route
        pending = list(entries)
        state = self._policy.new_state()
        attempts = 0
        first_failure_wall: float | None = None
        while pending:
            attempts += 1
            started = self._clock()
            try:
                response = await self._send(route, pending)
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
                await self._back_off(pool, delay)
                continue
            self._failing_since = None
            latency = self._clock() - started
            pending, retry_after, halves = await self._settle(route, pending, response, attempts, latency)
            if halves:
                self._bisections += 1
                for half in halves:
                    await self._deliver(pool, half)
                return
            if pending:
                now = self._clock()
                first_failure_wall = first_failure_wall or time.time()
                delay = state.next_delay(now, retry_after, self._rand())
                if state.exhausted(now):
                    await self._give_up(route, pending, attempts, first_failure_wall, None)
                    return
                self._retries += 1
                await self._back_off(pool, delay)

    async def _back_off(self, pool: Pool, delay: float) -> None:
        """Sleep before a retry; meanwhile the route's free entries need not wait for this request."""
        pool.waiting -= 1
        self._mark(pool)
        try:
            await asyncio.sleep(delay)
        finally:
            pool.waiting += 1

    async def _send(self, route: Route, entries: Sequence[BatchEntry]) -> BatchResponse:
        """One request in an in-flight slot; its outcome feeds the adaptive limiter, when there is one."""
        slots, limiter = self._slots, self._limiter
        await slots.acquire()
        try:
            self._sent += 1
            if limiter is None:
                return await self._sender.send_batch(route, [e.item for e in entries])
            limiter.on_start(slots.in_flight)
            sent_at = self._clock()
            try:
                response = await self._sender.send_batch(route, [e.item for e in entries])
            except TransientDeliveryError:  # 408/429/5xx, timeout, connection error: back-pressure
                now = self._clock()
                limiter.on_back_pressure(now, now - sent_at)
                raise
            else:  # any HTTP answer the API processed (2xx, 207, 4xx): a latency sample
                now = self._clock()
                limiter.on_response(now, now - sent_at)
            finally:  # refused credentials and bugs say nothing about load: no observation
                slots.resize(limiter.limit)
            return response
        finally:
            slots.release()

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
        self._release(pending)

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
            self._release(done)
        if failures:
            await self._sink.undeliverable(route, failures)
            self._release([entry for entry, _ in failures])
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
