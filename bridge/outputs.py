"""Outcome records: one result or one failure record per input record, and the acks that finish offsets.

Every input record ends in exactly one outcome (I1): a *result* on ``<input>.results`` when the API
took it, or a *failure* on ``<input>.dlq`` when it cannot be delivered (poison, rejected, retries
exhausted). Only when Kafka acknowledged that outcome record is the input offset *finished*
(``on_finished``), which lets the offset tracker move the commit watermark past it.

Failure records keep the input's key, value and headers byte for byte and add ``kard-bridge.*``
headers (see ``bridge.events.outcomes``), which is all ``kard-bridge replay`` needs. An outcome record
whose produce fails is produced again with back-off until it succeeds: its input offset stays
unfinished (and uncommitted) meanwhile, and the flow control pauses the consumer if that lasts.

Exactly-once mode (``KAFKA_EXACTLY_ONCE``, :class:`TransactionalOutcomes`): an outcome is *staged* in memory
instead (the input offset is finished at once), and :meth:`TransactionalOutcomes.commit` produces, in one
Kafka transaction, exactly the staged outcomes below the offsets it then commits with them. Outcomes are
never produced ahead of their offset: records finish out of order (different keys run in parallel), and
an outcome committed above its partition's committed offset would be produced again after a crash.
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog

from bridge import __version__
from bridge.config import Settings
from bridge.dispatch import DeliveryFailure
from bridge.errors import OutputError, RecordError
from bridge.events.outcomes import (
    ApiSummary,
    FailureHeaders,
    ReasonClass,
    build_batch_result_value,
    build_result_value,
    replay_count_of,
    sanitize_text,
)
from bridge.kafka import OutputProducer
from bridge.kafka.producer import TransactionAborted, TransactionFatal
from bridge.kard.responses import BatchResponse, ItemOutcome
from bridge.observability.metrics import BridgeMetrics
from bridge.pipeline.batcher import BatchEntry
from bridge.records import Header, SourceRecord, TopicPartition
from bridge.routes import MappedItem, Route

__all__ = ["NotAMember", "OutcomePublisher", "TransactionalOutcomes"]

_log = structlog.get_logger("bridge.outputs")

#: (topic, value, key, headers, the input records this outcome record finishes once acked)
_Message = tuple[str, bytes | None, bytes | None, Sequence[Header], tuple[SourceRecord, ...]]
#: most input records one batch result record lists (~250 B each: far below the producer's request limit)
_BATCH_RESULT_MAX = 1000
#: replay provenance headers survive a new failure (the loop guard counts on them); see bridge.replay
_PROVENANCE = frozenset({"kard-bridge.replay-id", "kard-bridge.replayed-from"})


class OutcomePublisher:
    """Builds outcome records, produces them, and reports each input record once its outcome is acked."""

    def __init__(
        self,
        producer: OutputProducer,
        settings: Settings,
        *,
        on_finished: Callable[[SourceRecord], object],
        metrics: BridgeMetrics | None = None,
    ) -> None:
        self._producer = producer
        self._bridge = settings.bridge
        self._on_finished = on_finished
        self._metrics = metrics
        self._instance = settings.bridge.instance_id
        self.results = 0
        self.failures = 0
        self.failures_by_reason: dict[str, int] = {}
        self.produce_retries = 0
        self._outstanding = 0  # enqueued, not acked yet
        self._retry: list[_Message] = []
        self._retry_wakeup = asyncio.Event()
        self._settled = asyncio.Event()

    # -- OutcomeSink (called by the dispatcher) -----------------------------------------------------

    async def delivered(
        self,
        route: Route,
        entries: Sequence[BatchEntry],
        response: BatchResponse,
        outcomes: Sequence[ItemOutcome],
        attempts: int,
        latency: float,
    ) -> None:
        """Publish a result record for each accepted entry, then finish their offsets."""
        completed = datetime.now(UTC)
        first_attempt = datetime.fromtimestamp(completed.timestamp() - latency, UTC)
        summary = response.summary
        api = ApiSummary(
            job_id=summary.get("job_id"),
            job_status=summary.get("job_status"),
            total_processed=summary.get("total_processed"),
            batch_items=len(response.outcomes) or None,
            partial=response.status == 207,
        )
        self.results += len(entries)
        if self._metrics is not None:
            self._metrics.count_forwarded(str(route), (e.ref.topic for e in entries))
        common: dict[str, Any] = {
            "http_status": response.status,
            "response": api,
            "attempts": attempts,
            "latency_ms": latency * 1000,
            "first_attempt_at": first_attempt,
            "completed_at": completed,
            "instance_id": self._instance,
            "bridge_version": __version__,
        }
        # unconfirmed items (bulk count mismatch) are logged by the client
        if self._bridge.result_mode == "batch":
            messages = self._batch_results(entries, common)
        else:
            messages = []
            for entry in entries:
                record = _record(entry)
                value = build_result_value(record, entry.item, **common)
                messages.append((self._bridge.results_topic(record.topic), value, record.key, (), (record,)))
        await self._publish(messages)

    def _batch_results(self, entries: Sequence[BatchEntry], common: dict[str, Any]) -> list[_Message]:
        """One result record per input topic (and per :data:`_BATCH_RESULT_MAX` records) for one request."""
        by_topic: dict[str, list[tuple[SourceRecord, MappedItem]]] = {}
        for entry in entries:
            record = _record(entry)
            by_topic.setdefault(record.topic, []).append((record, entry.item))
        messages: list[_Message] = []
        for topic, delivered in by_topic.items():
            for start in range(0, len(delivered), _BATCH_RESULT_MAX):
                chunk = delivered[start : start + _BATCH_RESULT_MAX]
                value = build_batch_result_value(chunk, **common)
                first_key = chunk[0][0].key
                key = first_key if all(record.key == first_key for record, _ in chunk) else None
                records = tuple(record for record, _ in chunk)
                messages.append((self._bridge.results_topic(topic), value, key, (), records))
        return messages

    async def undeliverable(self, route: Route, failures: Sequence[tuple[BatchEntry, DeliveryFailure]]) -> None:
        """Publish a failure record for each entry the API would not take."""
        messages: list[_Message] = []
        for entry, failure in failures:
            record = _record(entry)
            reason_class = ReasonClass.REJECTED if failure.reason == "rejected" else ReasonClass.RETRIES_EXHAUSTED
            messages.append(
                self._failure_message(
                    record,
                    reason=failure.reason,
                    reason_class=reason_class,
                    message=failure.message,
                    http_status=failure.http_status,
                    api_detail=failure.api_detail,
                    api_pointer=failure.api_pointer,
                    attempts=failure.attempts,
                    first_failure_at=failure.first_failure_at,
                    last_failure_at=failure.last_failure_at,
                    event_id=entry.item.event_id or None,
                    item_id=entry.item.item_id,
                    route=route,
                )
            )
        await self._publish(messages)

    # -- poison records (called by the pump) --------------------------------------------------------

    async def record_failures(self, poison: Sequence[tuple[SourceRecord, RecordError]]) -> None:
        """Dead-letter records that could not be decoded, validated or mapped (never sent to the API)."""
        now = time.time()
        messages = [
            self._failure_message(
                record,
                reason=error.reason,
                reason_class=ReasonClass(error.reason_class),
                message=error.message,
                pointer=error.pointer,
                attempts=0,
                first_failure_at=now,
                last_failure_at=now,
            )
            for record, error in poison
        ]
        await self._publish(messages)

    # -- producing ----------------------------------------------------------------------------------

    def _failure_message(
        self,
        record: SourceRecord,
        *,
        reason: str,
        reason_class: ReasonClass,
        message: str,
        attempts: int,
        first_failure_at: float,
        last_failure_at: float,
        pointer: str | None = None,
        http_status: int | None = None,
        api_detail: str | None = None,
        api_pointer: str | None = None,
        event_id: str | None = None,
        item_id: str | None = None,
        route: Route | None = None,
    ) -> _Message:
        """The DLQ record: the input's key, value and headers verbatim, plus ``kard-bridge.*`` headers."""
        failure = FailureHeaders.model_validate(
            {
                "reason": reason,
                "reason_class": reason_class,
                "message": sanitize_text(message),
                "pointer": sanitize_text(pointer) if pointer else None,
                "http_status": http_status,
                "api_detail": sanitize_text(api_detail) if api_detail else None,
                "api_pointer": sanitize_text(api_pointer) if api_pointer else None,
                "attempts": attempts,
                "first_failure_at": datetime.fromtimestamp(first_failure_at, UTC),
                "last_failure_at": datetime.fromtimestamp(last_failure_at, UTC),
                "source_topic": record.topic,
                "source_partition": record.partition,
                "source_offset": record.offset,
                "source_timestamp": record.timestamp_ms,
                "event_id": event_id,
                "item_id": item_id,
                "route": route.endpoint if route else None,
                "bridge_version": __version__,
                "bridge_instance": self._instance,
                "replay_count": replay_count_of(record.headers),
            },
            by_name=True,
        )
        # Earlier kard-bridge.* headers (from a previous failure of a replayed record) are replaced.
        kept = [h for h in record.headers if not h[0].startswith("kard-bridge.") or h[0] in _PROVENANCE]
        headers = kept + list(failure.to_headers())
        self.failures += 1
        self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
        if self._metrics is not None:
            self._metrics.count_failed(record.topic, reason)
        _log.info(
            "record_dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            reason=reason,
            status=http_status,
        )
        return (self._bridge.dlq_topic(record.topic), record.value, record.key, headers, (record,))

    async def _publish(self, messages: Sequence[_Message]) -> None:
        """Enqueue the outcome records; each input is finished when its record's ack arrives.

        Returning once the records are *enqueued* (not acked) keeps the broker round trip off the
        dispatcher's critical path: the next wave of a batch does not wait for the previous wave's
        acks. One ``send_many`` call enqueues them all (far cheaper than a send per record); a record it
        could not enqueue, or whose produce fails, comes back through :meth:`_acked` and is re-produced
        by :meth:`run_retries` until it is acked.
        """
        if not messages:
            return
        acks = await self._producer.send_many([message[:4] for message in messages])
        self._outstanding += len(acks)
        for message, ack in zip(messages, acks, strict=True):
            ack.add_done_callback(functools.partial(self._acked, message))

    def _acked(self, message: _Message, fut: asyncio.Future[Any]) -> None:
        self._outstanding -= 1
        if fut.cancelled() or fut.exception() is not None:
            error = "cancelled" if fut.cancelled() else type(fut.exception()).__name__
            _log.warning("outcome_not_acked", topic=message[0], error=error)
            self._retry.append(message)
            self._retry_wakeup.set()
        else:
            for record in message[4]:
                self._on_finished(record)
        if self._outstanding == 0 and not self._retry:
            self._settled.set()

    async def run_retries(self) -> None:
        """Re-produce outcome records that were not acked, with back-off; runs for the bridge's life."""
        attempt = 0
        while True:
            await self._retry_wakeup.wait()
            self._retry_wakeup.clear()
            while self._retry:
                attempt += 1
                await asyncio.sleep(min(30.0, 0.1 * 2**attempt) * (0.5 + random.random() / 2))
                todo, self._retry = self._retry, []
                self.produce_retries += len(todo)
                await self._publish(todo)
            attempt = 0

    async def wait_settled(self, timeout: float) -> bool:
        """Wait until every enqueued outcome record is acked (or being retried: then False at timeout)."""
        if self._outstanding == 0 and not self._retry:
            return True
        self._settled.clear()
        try:
            async with asyncio.timeout(timeout):
                while self._outstanding or self._retry:
                    await self._settled.wait()
                    self._settled.clear()
        except TimeoutError:
            return False
        return True


class TransactionalOutcomes(OutcomePublisher):
    """Exactly-once mode: outcome records wait in memory until a transaction commits them with their offsets.

    ``on_finished(record)`` is called when an outcome is *staged* and must return whether the record is
    still tracked (owned, unfinished); only then is the outcome kept, so every finished offset has exactly
    one staged or committed outcome. :meth:`commit` runs one transaction: begin, produce the staged
    outcomes below the given offsets (in offset order), wait for their acks, add the offsets, commit. Only
    after a successful commit do they leave the stage: an aborted transaction is simply tried again.
    """

    def __init__(
        self,
        producer: OutputProducer,
        settings: Settings,
        *,
        on_finished: Callable[[SourceRecord], bool],
        metrics: BridgeMetrics | None = None,
    ) -> None:
        super().__init__(producer, settings, on_finished=on_finished, metrics=metrics)
        self._track = on_finished
        self._staged: dict[TopicPartition, dict[int, _Message]] = {}
        self.staged = 0

    async def _publish(self, messages: Sequence[_Message]) -> None:
        """Stage the outcomes of records that are still ours (a revoked partition's next owner redoes the rest)."""
        for message in messages:
            (record,) = message[4]  # one outcome per input record here (batch results are refused with EOS)
            if self._track(record):
                self._staged.setdefault(record.tp, {})[record.offset] = message
                self.staged += 1

    def drop_partitions(self, partitions: frozenset[TopicPartition]) -> int:
        """Forget the staged outcomes of revoked partitions (their offsets are not committed); returns how many."""
        dropped = 0
        for tp in partitions:
            dropped += len(self._staged.pop(tp, {}))
        self.staged -= dropped
        return dropped

    async def commit(
        self,
        offsets: Mapping[TopicPartition, int],
        group_id: str,
        *,
        still_member: Callable[[], Awaitable[bool]] | None = None,
    ) -> list[SourceRecord]:
        """One transaction with the staged outcomes below ``offsets`` and ``offsets`` themselves.

        ``offsets`` must be contiguous finished watermarks (``OffsetTracker.committable``): every record
        below them has its outcome staged here or committed earlier. Returns the records whose outcomes
        this transaction committed. ``still_member`` is asked once the outcomes are acked, just before the
        offsets are added: aiokafka's ``TxnOffsetCommit`` v0 carries no group generation, so nothing else
        stops a member that lost its partitions in a rebalance from committing them (PITFALLS A9); when it
        answers False the transaction is aborted. It must come *before* the offsets: the check is a plain
        offset commit, and the group coordinator drops a transaction's offset for a partition when a plain
        commit of that partition was written after it (it would undo this transaction's offsets).

        Raises:
            TransactionAborted: the transaction was aborted; everything stays staged for the next attempt.
            TransactionFatal: the producer cannot go on; the caller must stop (see ``bridge.app``).
        """
        chosen: list[tuple[TopicPartition, int]] = []
        messages: list[_Message] = []
        for tp, upto in offsets.items():
            staged = self._staged.get(tp)
            if not staged:
                continue
            for offset in sorted(o for o in staged if o < upto):
                chosen.append((tp, offset))
                messages.append(staged[offset])
        producer = self._producer
        member = True
        await producer.begin()
        try:
            async with asyncio.timeout(producer.send_timeout):
                acks = await producer.send_many([message[:4] for message in messages])
                # aiokafka would commit a transaction with a failed batch: every ack is checked first.
                await producer.wait_acked(acks)
            member = still_member is None or await still_member()
            if member:
                await producer.send_offsets(offsets, group_id)
        except TransactionFatal:
            raise
        except (OutputError, TimeoutError) as exc:
            await producer.fail(exc, "produce")
        if not member:
            await producer.abort()
            raise NotAMember("not a member of the group generation any more: transaction aborted")
        await producer.commit()
        removed = 0
        for tp, offset in chosen:  # a partition dropped meanwhile has nothing left to remove
            bucket = self._staged.get(tp)
            if bucket is not None and bucket.pop(offset, None) is not None:
                removed += 1
        self.staged -= removed
        return [record for message in messages for record in message[4]]


class NotAMember(TransactionAborted):
    """The membership check before a commit failed (a rebalance took the partitions): aborted, nothing lost."""


def _record(entry: BatchEntry) -> SourceRecord:
    if entry.record is None:  # pragma: no cover - the pump always attaches the record
        raise ValueError("batch entry without its source record")
    return entry.record
