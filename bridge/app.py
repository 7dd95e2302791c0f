"""Composition root: builds the components, runs the consume→map→batch→dispatch pump, commits, drains.

The pump is one coroutine; everything it starts runs in TaskGroups owned by components entered
through one ``AsyncExitStack`` (dispatcher, Kard client, producer, consumer, health server).

Per record: ``track`` (offsets) → ``admit`` (flow) → ``map_record`` → ``Batcher.add`` → ``Dispatcher``
→ outcome record acked → ``finish`` + ``release``. Poison records skip the API: their failure record
is produced (and acked) right in the pump, so they never fail their neighbours.

Backpressure: when buffered records/bytes pass the high watermarks every assigned partition is
paused while polling continues (the member is not evicted, PITFALLS A5); pauses are re-applied after
each rebalance (A6) by the consumer façade.

Commit order (I1, I2, I3): outcome acked → offset finished → ``OffsetTracker.committable()`` →
explicit commit of owned partitions only. On revoke: drop unsent entries of the revoked partitions,
wait (bounded) for their in-flight batches, commit what finished, forget the partitions.

Shutdown (SIGTERM/SIGINT): stop fetching, flush open batches, drain in-flight within
``drain_timeout``, flush the producer, commit, leave the group, exit 0.

Exactly-once mode (``KAFKA_EXACTLY_ONCE``): outcomes are staged in memory (``TransactionalOutcomes``) and
finishing an offset releases nothing; each commit is one Kafka transaction holding the staged outcomes
below the committable offsets and those offsets (sent to the group through the transaction), after which
the records are released. An aborted transaction keeps everything staged for the next commit; a fatal
transaction error (fenced, producer broken, result unknown) stops the bridge at once with exit code 75,
without draining: the restart re-reads from the last committed offsets. Before adding its offsets, each
transaction checks that this member still belongs to the group generation (``TxnOffsetCommit`` v0 is not
fenced by generation, PITFALLS A9). On revoke, the drain leaves time to commit before the group moves on,
and the commit is followed by a wait until the group coordinator shows the committed offsets
(transaction markers are written asynchronously).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable
from typing import NamedTuple

import structlog

from bridge.config import Settings
from bridge.dispatch import Dispatcher
from bridge.errors import RecordError
from bridge.events.common import EventKind
from bridge.kafka import BridgeConsumer, KafkaUnreachable, OutputProducer
from bridge.kafka.producer import TransactionAborted, TransactionFatal
from bridge.kard.client import KardClient, KardClientConfig
from bridge.mapping import MappingContext, map_record
from bridge.observability.health import HealthReport, ObservabilityServer
from bridge.observability.metrics import BridgeMetrics
from bridge.outputs import NotAMember, OutcomePublisher, TransactionalOutcomes
from bridge.pipeline.batcher import Batch, BatchEntry, Batcher
from bridge.pipeline.concurrency import AdaptiveConcurrency
from bridge.pipeline.flow import FlowControl
from bridge.pipeline.offsets import OffsetTracker
from bridge.pipeline.retry import Backoff, RetryPolicy
from bridge.records import SourceRecord, TopicPartition

__all__ = ["Bridge", "BridgeStatistics", "mapping_context", "run_bridge"]

_log = structlog.get_logger("bridge.app")

#: Exit code after a fatal transaction error in exactly-once mode (EX_TEMPFAIL: restart me).
EXIT_TRANSACTION_FAILED = 75
#: Consecutive aborted transactions after which the bridge gives up and exits (a restart gets a fresh producer).
_MAX_ABORTED_IN_A_ROW = 5


class BridgeStatistics(NamedTuple):
    """Counters for the demo's progress line, metrics and tests."""

    consumed: int
    mapped: int
    poison: int
    committed_partitions: int
    paused: bool


class Bridge:
    """One bridge instance: a consumer group member that forwards its partitions to the Kard API."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        b = settings.bridge
        self.tracker = OffsetTracker()
        self.flow = FlowControl(
            high_records=b.buffer_max_records,
            low_records=b.buffer_max_records // 2,
            high_bytes=b.buffer_max_bytes,
            low_bytes=b.buffer_max_bytes // 2,
        )
        self.batcher = Batcher(max_bytes=b.batch_max_bytes, linger=b.linger, max_items=b.batch_max_items)
        self.mapping = mapping_context(settings)
        self.stopping = asyncio.Event()
        self.ready = asyncio.Event()
        self.consumed = 0
        self.mapped = 0
        self.poison = 0
        self.committed: dict[TopicPartition, int] = {}
        self._consumer: BridgeConsumer | None = None
        self._dispatcher: Dispatcher | None = None
        self._outputs: OutcomePublisher | None = None
        self._producer: OutputProducer | None = None
        self._client: KardClient | None = None
        self._commit_lock = asyncio.Lock()
        self._held: dict[TopicPartition, list[int]] = {}  # per partition: [records, bytes] not finished
        self.exactly_once = settings.kafka.exactly_once
        self._transactions: TransactionalOutcomes | None = None
        self._aborted_in_a_row = 0
        self._transaction_broken = False
        self._known_committed: dict[TopicPartition, int] = {}  # exactly-once: offsets known committed (probes)
        self.metrics = BridgeMetrics(self)
        self.exit_code = 0
        self.observability: ObservabilityServer | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until :meth:`stop` (or a signal) and drain; raises only on non-data errors."""
        s = self.settings
        client_config = KardClientConfig(
            base_url=s.kard.api_base_url,
            client_id=s.kard.client_id,
            client_secret=s.kard.client_secret,
            connect_timeout=s.kard.connect_timeout,
            read_timeout=s.kard.read_timeout,
            write_timeout=s.kard.write_timeout,
            pool_timeout=s.kard.pool_timeout,
            max_connections=s.bridge.max_in_flight,
            max_keepalive_connections=s.bridge.max_in_flight,
            keepalive_expiry=s.kard.keepalive_expiry,
            request_deadline=s.kard.request_deadline,
            token_refresh_skew=s.kard.token_refresh_skew,
        )
        policy = RetryPolicy(
            backoff=Backoff(base=s.bridge.retry_base, cap=s.bridge.retry_cap),
            max_retry_time=s.bridge.max_retry_time,
            max_retry_after=s.bridge.max_retry_after,
        )
        async with contextlib.AsyncExitStack() as stack:
            self.observability = await stack.enter_async_context(
                ObservabilityServer(
                    self,
                    self.metrics,
                    host=s.bridge.metrics_host,
                    port=s.bridge.metrics_port,
                    on_watchdog=self._watchdog_tripped,
                )
            )
            self._client = await stack.enter_async_context(
                KardClient(client_config, on_request=self.metrics.observe_request)
            )
            transactional_id = s.kafka.transactional_id_for(s.bridge.group_id, s.bridge.instance_id)
            self._producer = await stack.enter_async_context(
                OutputProducer(
                    s.kafka.common_kwargs(),
                    client_id=f"{s.kafka.client_id}-outputs",
                    transactional_id=transactional_id,
                    transaction_timeout=s.kafka.transaction_timeout,
                )
            )  # with a transactional id, start() fenced any predecessor and waited for its transaction to end
            if transactional_id is not None:
                self._transactions = TransactionalOutcomes(
                    self._producer, s, on_finished=self._finished, metrics=self.metrics
                )
                self._outputs = self._transactions
            else:
                self._outputs = OutcomePublisher(self._producer, s, on_finished=self._finished, metrics=self.metrics)
            self._dispatcher = await stack.enter_async_context(
                Dispatcher(
                    self._client,
                    self._outputs,
                    max_in_flight=s.bridge.max_in_flight,
                    policy=policy,
                    concurrency=AdaptiveConcurrency(
                        s.bridge.max_in_flight,
                        initial=s.bridge.adaptive_initial_concurrency,
                        decrease_ratio=s.bridge.adaptive_decrease_ratio,
                        rtt_deviation_scale=s.bridge.adaptive_rtt_deviation_scale,
                    )
                    if s.bridge.adaptive_concurrency
                    else None,
                )
            )
            self._consumer = BridgeConsumer(
                s.bridge.input_topics,
                group_id=s.bridge.group_id,
                handler=self,
                consumer_kwargs=s.kafka.to_consumer_kwargs(),
            )
            await stack.enter_async_context(self._consumer)
            tasks = await stack.enter_async_context(asyncio.TaskGroup())
            retries = tasks.create_task(self._outputs.run_retries())
            _log.info(
                "bridge_started",
                topics=list(s.bridge.input_topics),
                group_id=s.bridge.group_id,
                exactly_once=transactional_id is not None,
                transactional_id=transactional_id,
            )
            try:
                await self._pump()
            finally:
                await self._drain()
                retries.cancel()

    def _watchdog_tripped(self, report: HealthReport) -> None:
        """Liveness failed for too long (e.g. a consumer stuck after a broker restart): exit non-zero."""
        _log.error("watchdog_tripped", failing=report.failing())
        self.exit_code = 70
        self.stop()

    # Read-only views for metrics and health (``bridge.observability.metrics.BridgeView``).
    @property
    def dispatcher(self) -> Dispatcher | None:
        return self._dispatcher

    @property
    def client(self) -> KardClient | None:
        return self._client

    @property
    def outputs(self) -> OutcomePublisher | None:
        return self._outputs

    @property
    def consumer(self) -> BridgeConsumer | None:
        return self._consumer

    @property
    def producer(self) -> OutputProducer | None:
        return self._producer

    def stop(self) -> None:
        """Ask the bridge to drain and exit (idempotent; safe from a signal handler)."""
        self.stopping.set()

    @property
    def results(self) -> int:
        """Result records produced so far (each input is finished only once its result is acked)."""
        return self._outputs.results if self._outputs else 0

    @property
    def failures(self) -> int:
        """Failure (dead-letter) records produced so far."""
        return self._outputs.failures if self._outputs else 0

    @property
    def failures_by_reason(self) -> dict[str, int]:
        return dict(self._outputs.failures_by_reason) if self._outputs else {}

    def statistics(self) -> BridgeStatistics:
        return BridgeStatistics(
            consumed=self.consumed,
            mapped=self.mapped,
            poison=self.poison,
            committed_partitions=len(self.committed),
            paused=self._consumer.holding_back if self._consumer else False,
        )

    # -- the pump ------------------------------------------------------------------------------------

    async def _pump(self) -> None:
        consumer, _ = self._require()
        interval = self.settings.bridge.commit_interval
        next_commit = time.monotonic() + interval
        while not self.stopping.is_set():
            due = self.batcher.next_due()
            now = time.monotonic()
            timeout = 0.1 if due is None else min(0.1, max(0.0, due - now))
            records = await consumer.getmany(timeout=timeout, max_records=500)
            if records:
                await self._ingest(records)
                # getmany returns without suspending while aiokafka holds fetched records: without this the
                # pump would starve the dispatcher's requests until the buffer is full.
                await asyncio.sleep(0)
            now = time.monotonic()
            self._submit(self.batcher.due(now))
            self._apply_backpressure(consumer)
            if now >= next_commit:
                await self.commit()
                next_commit = now + interval

    async def _ingest(self, records: list[SourceRecord]) -> None:
        consumer, dispatcher = self._require()
        outputs = self._outputs
        assert outputs is not None
        now = time.monotonic()
        poison: list[tuple[SourceRecord, RecordError]] = []
        ctx = self.mapping
        rewind: dict[TopicPartition, int] = {}
        for record in records:
            if record.tp in rewind:
                continue  # an earlier record of this fetch is being fetched again, and this one with it
            try:
                if not self.tracker.track(record.ref):
                    if record.tp in consumer.assignment():
                        # Fetched after the group assigned the partition but before on_assigned registered
                        # it (on_assigned awaits the committed offsets): dropping it would let the tracker
                        # commit past it. Fetch it again once the partition is registered.
                        rewind[record.tp] = record.offset
                    continue  # otherwise fetched just before its partition was revoked: the next owner has it
            except ValueError:
                continue  # re-delivery of an offset already tracked or committed in this assignment
            self.consumed += 1
            self.metrics.count_consumed(record.topic)
            size = len(record.value or b"")
            self.flow.admit(1, size)
            held = self._held.setdefault(record.tp, [0, 0])
            held[0] += 1
            held[1] += size
            try:
                item = map_record(record, ctx)
            except RecordError as exc:
                poison.append((record, exc))
                continue
            self.mapped += 1
            entry = BatchEntry(record.ref, item, record)
            dispatcher.hold(entry)  # in input order: keeps a key's order across routes
            self._submit(self.batcher.add(entry, now))
        for tp, offset in rewind.items():
            consumer.seek(tp, offset)
            _log.info("fetch_rewound", partition=str(tp), offset=offset)
        if poison:
            self.poison += len(poison)
            await outputs.record_failures(poison)

    def _submit(self, batches: list[Batch]) -> None:
        """Hand closed batches to the dispatcher, in order; their keys are no longer in an open batch."""
        _, dispatcher = self._require()
        for batch in batches:
            self.metrics.observe_batch(str(batch.route), len(batch.entries), batch.size)
            dispatcher.submit(batch)

    def _apply_backpressure(self, consumer: BridgeConsumer) -> None:
        if not consumer.holding_back and self.flow.should_pause():
            consumer.pause_all()
            self.flow.mark_paused()
            _log.info("partitions_paused", buffered=self.flow.statistics().records)
        elif consumer.holding_back and self.flow.should_resume():
            consumer.resume_all()
            self.flow.mark_resumed()
            _log.info("partitions_resumed", buffered=self.flow.statistics().records)

    def _finished(self, record: SourceRecord) -> bool:
        """An outcome record for ``record`` was acked by Kafka (exactly-once: staged): its offset may be committed.

        Returns whether the record was tracked and unfinished. In exactly-once mode the record stays counted
        as buffered until the transaction with its outcome commits (:meth:`_release`).
        """
        if not self.tracker.finish(record.ref):
            return False
        if not self.exactly_once:
            self._release(record)
        return True

    def _release(self, record: SourceRecord) -> None:
        size = len(record.value or b"")
        self.flow.release(1, size)
        held = self._held.get(record.tp)
        if held is not None:
            held[0] -= 1
            held[1] -= size

    async def commit(self) -> dict[TopicPartition, int]:
        """Commit every partition whose contiguous finished watermark advanced."""
        consumer, _ = self._require()
        async with self._commit_lock:
            if self._transactions is not None:
                return await self._commit_transaction(consumer, self._transactions)
            offsets = self.tracker.committable()
            if not offsets:
                return {}
            started = time.monotonic()
            done = await consumer.commit(offsets)
            self.metrics.observe_commit(time.monotonic() - started, ok=bool(done))
            if done:
                self.tracker.mark_committed(done)
                self.committed.update(done)
                _log.debug("offsets_committed", partitions=len(done))
            return done

    async def _commit_transaction(
        self, consumer: BridgeConsumer, transactions: TransactionalOutcomes
    ) -> dict[TopicPartition, int]:
        """Exactly-once commit: one transaction with the staged outcomes below the committable offsets."""
        if self._transaction_broken:
            return {}
        owned = consumer.assignment()
        offsets = {tp: off for tp, off in self.tracker.committable().items() if tp in owned}
        if not offsets:
            return {}
        started = time.monotonic()
        try:
            records = await transactions.commit(offsets, self.settings.bridge.group_id, still_member=self._still_member)
        except NotAMember:
            # A rebalance took (or is taking) the partitions: their revoke drops what is staged for them.
            self.metrics.observe_commit(time.monotonic() - started, ok=False)
            _log.warning("transaction_aborted_not_a_member", partitions=len(offsets))
            return {}
        except TransactionAborted as exc:
            self.metrics.observe_commit(time.monotonic() - started, ok=False)
            self._aborted_in_a_row += 1
            _log.warning("transaction_aborted", error=str(exc), in_a_row=self._aborted_in_a_row)
            if self._aborted_in_a_row >= _MAX_ABORTED_IN_A_ROW:
                self._transaction_failed(exc)
            return {}
        except TransactionFatal as exc:
            self.metrics.observe_commit(time.monotonic() - started, ok=False)
            self._transaction_failed(exc)
            return {}
        self._aborted_in_a_row = 0
        self.metrics.observe_commit(time.monotonic() - started, ok=True)
        self.tracker.mark_committed(offsets)
        self.committed.update(offsets)
        self._known_committed.update(offsets)
        for record in records:
            self._release(record)
        _log.debug("transaction_committed", partitions=len(offsets), outcomes=len(records))
        return offsets

    async def _still_member(self) -> bool:
        """Probe the group generation (``BridgeConsumer.confirm_membership``); skipped before any known commit."""
        consumer, _ = self._require()
        owned = consumer.assignment()
        for tp, offset in self._known_committed.items():
            if tp in owned:
                return await consumer.confirm_membership((tp, offset))
        return True

    def _transaction_failed(self, exc: Exception) -> None:
        """The transactional producer cannot go on: stop without draining; the restart re-reads from Kafka."""
        _log.error("transaction_failed", error=str(exc), cause=type(exc.__cause__).__name__ if exc.__cause__ else None)
        self._transaction_broken = True
        self.exit_code = EXIT_TRANSACTION_FAILED
        self.stop()

    # -- rebalance (called by the consumer façade inside aiokafka's rebalance task) -------------------

    async def on_revoked(self, partitions: frozenset[TopicPartition]) -> None:
        _, dispatcher = self._require()
        self.ready.clear()  # not ready during a rebalance; the watchdog sees one that never finishes
        dropped = self.batcher.remove_partitions(partitions)  # never sent; the next owner sends them
        dispatcher.forget(dropped)
        budget = min(self.settings.bridge.drain_timeout, self.settings.kafka.session_timeout * 0.8)
        if self.exactly_once:
            budget = self._transactional_revoke_budget()
        started = time.monotonic()
        drained = await dispatcher.wait_partitions(partitions, timeout=budget)
        if self._outputs is not None:
            drained &= await self._outputs.wait_settled(max(0.0, budget - (time.monotonic() - started)))
        await self.commit()
        # Under the commit lock until the partitions are out of the tracker: the pump's periodic commit runs
        # concurrently with this callback and must not commit them after the handover (the chaos suite's
        # exactly-once run caught a transaction committing a revoked partition's outcomes a second time).
        async with self._commit_lock:
            if self._transactions is not None:
                await self._settle_transactional_handover(partitions, budget - (time.monotonic() - started))
            for tp in partitions:
                # Unfinished records stay uncommitted for the next owner; stop counting them as buffered
                # (a late ack finds the partition revoked and releases nothing twice).
                records, size = self._held.pop(tp, (0, 0))
                if records:
                    self.flow.release(records, size)
                self.tracker.revoke(tp)
                self.committed.pop(tp, None)
                self._known_committed.pop(tp, None)
        _log.info("revoke_handled", partitions=len(partitions), dropped=len(dropped), drained=drained)

    def _transactional_revoke_budget(self) -> float:
        """Exactly-once: drain for less, so the commit lands before the rebalance timeout (heard a heartbeat late)."""
        k = self.settings.kafka
        rebalance = k.rebalance_timeout or k.session_timeout
        return max(0.5, min(self.settings.bridge.drain_timeout, rebalance * 0.8) - k.heartbeat_interval - 0.5)

    async def _settle_transactional_handover(self, partitions: frozenset[TopicPartition], budget: float) -> None:
        """Before giving partitions up: wait until their transactional commits are visible, drop what is staged."""
        consumer, _ = self._require()
        assert self._transactions is not None
        ours = {tp: self.committed[tp] for tp in partitions if tp in self.committed}
        wait = min(2.0, max(0.5, budget))
        visible = await consumer.wait_committed(ours, timeout=wait) if ours else True
        # Outcomes staged behind an unfinished record were never produced: the next owner redoes those records.
        dropped = self._transactions.drop_partitions(partitions)
        if not visible or dropped:
            _log.info("transactional_handover", partitions=len(partitions), visible=visible, dropped_staged=dropped)

    async def on_assigned(self, partitions: frozenset[TopicPartition]) -> None:
        consumer, _ = self._require()
        for tp in partitions:
            committed = await consumer.committed(tp)
            if tp in self.tracker.assigned():
                self.tracker.revoke(tp)
            self.tracker.assign(tp, committed)
            if committed is not None and self.exactly_once:
                self._known_committed[tp] = committed
        self.ready.set()

    # -- shutdown ------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        consumer, dispatcher = self._require()
        deadline = time.monotonic() + self.settings.bridge.drain_timeout
        consumer.pause_all()  # stop fetching; the group membership stays until we leave it below
        if self._transaction_broken:
            # Nothing can be committed any more: sending more requests would only add API repeats.
            cancelled = dispatcher.cancel_all()
            staged = self._transactions.staged if self._transactions is not None else 0
            _log.warning("bridge_stopped_without_drain", batches_cancelled=cancelled, staged=staged)
            return
        self._submit(self.batcher.flush_all())
        idle = await dispatcher.wait_idle(timeout=max(0.0, deadline - time.monotonic()))
        if not idle:
            cancelled = dispatcher.cancel_all()
            _log.warning("drain_timed_out", batches_cancelled=cancelled)
        if self._outputs is not None:
            idle &= await self._outputs.wait_settled(max(0.0, deadline - time.monotonic()))
        if self._producer is not None:
            with contextlib.suppress(TimeoutError):
                await self._producer.flush(timeout=max(1.0, deadline - time.monotonic()))
        await self.commit()
        _log.info("bridge_drained", consumed=self.consumed, poison=self.poison, clean=idle)

    def _require(self) -> tuple[BridgeConsumer, Dispatcher]:
        if self._consumer is None or self._dispatcher is None:
            raise RuntimeError("bridge is not running")
        return self._consumer, self._dispatcher


def mapping_context(settings: Settings) -> MappingContext:
    """The mapping's view of the settings: which kind each input topic carries, org, modes, hook."""
    b = settings.bridge
    kinds = {
        b.transactions_topic: EventKind.CARD_TRANSACTION,
        b.eligibility_topic: EventKind.ELIGIBILITY,
        b.attributions_topic: EventKind.ATTRIBUTION,
    }
    return MappingContext(
        kind_by_topic={topic: kind for topic, kind in kinds.items() if topic},
        organization_id=settings.kard.organization_id or None,
        attribution_mode=b.attribution_mode,
        max_value_bytes=b.max_value_bytes,
        hook=MappingContext.load_hook(b.mapping_hook) if b.mapping_hook else None,
    )


async def run_bridge(settings: Settings, *, on_started: Callable[[Bridge], None] | None = None) -> int:
    """Run one bridge until SIGTERM/SIGINT, then drain; returns the exit code (0 after a clean drain)."""
    bridge = Bridge(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, bridge.stop)
    if on_started is not None:
        on_started(bridge)
    try:
        await _run_until_kafka_answers(bridge)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return bridge.exit_code


async def _run_until_kafka_answers(bridge: Bridge, backoff: Backoff | None = None) -> None:
    """``bridge.run()``, started again with backoff while Kafka cannot be reached before the first assignment.

    A replica that starts during a network cut or a broker restart waits for Kafka instead of exiting 1 and
    counting on its supervisor (found by the chaos suite's Kafka cut). Once it owned partitions, errors
    propagate as before; SIGTERM while waiting ends it with exit code 0.
    """
    policy = backoff or Backoff(base=1.0, cap=15.0)
    attempt = 0
    while True:
        try:
            await bridge.run()
            return
        except (KafkaUnreachable, TimeoutError) as exc:
            if bridge.ready.is_set() or bridge.stopping.is_set():
                raise
            attempt += 1
            delay = max(0.5, policy.delay(attempt, random.random()))
            _log.warning(
                "kafka_unreachable_at_startup", attempt=attempt, retry_in=round(delay, 2), error=type(exc).__name__
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(bridge.stopping.wait(), delay)
            if bridge.stopping.is_set():
                return
