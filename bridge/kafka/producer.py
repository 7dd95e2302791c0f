"""Producer façade for result and failure records: idempotent, ``acks=all``, sends return ack futures.

aiokafka's defaults are ``acks=1`` without idempotence (PITFALLS A7); outcome records are what make an
input offset committable, so they must be durable before we commit. ``send`` waits only for buffer
space (natural backpressure) and returns a future that resolves when the broker acknowledged.
Every send is bounded by a timeout because ``send()`` can hang when the producer failed to start (#759).

With a ``transactional_id`` (exactly-once mode) the same façade drives one Kafka transaction at a time:
:meth:`OutputProducer.begin`, sends, :meth:`OutputProducer.send_offsets`, :meth:`OutputProducer.commit`. A
failure either leaves the producer usable after :meth:`OutputProducer.abort` (:class:`TransactionAborted`)
or not at all (:class:`TransactionFatal`: fenced by a newer producer with the same id, the sender task died,
or a commit whose result is unknown). aiokafka speaks the pre-KIP-447 protocol (``TxnOffsetCommit`` v0,
PITFALLS A9): fencing is by transactional id only, never by consumer-group generation.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as _KTP
from aiokafka.errors import (
    IllegalOperation,
    InvalidTxnState,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import OffsetAndMetadata

from bridge.errors import OutputError
from bridge.records import Header, TopicPartition

__all__ = ["Message", "OutputProducer", "TransactionAborted", "TransactionFatal"]

#: errors after which aiokafka's transactional producer cannot continue (its sender task is gone, or the
#: broker fenced this producer epoch); anything else is tried with an abort first.
_FATAL = (ProducerFenced, OutOfOrderSequenceNumber, TransactionalIdAuthorizationFailed, InvalidTxnState)

#: what :meth:`OutputProducer.send_many` takes per record: topic, value, key, headers
Message = tuple[str, bytes | None, bytes | None, Sequence[Header]]
#: murmur2 hashes of recent keys kept by send_many (user ids repeat; murmur2 is pure Python, ~3 µs a key)
_HASH_CACHE_SIZE = 16384


class TransactionAborted(OutputError):
    """The open transaction failed and was aborted; the producer is usable, the work may be tried again."""


class TransactionFatal(OutputError):
    """The transactional producer cannot go on (fenced, broken, or a commit with an unknown result)."""

    retryable = False


class OutputProducer:
    """One long-lived idempotent producer for every output topic of this instance."""

    def __init__(
        self,
        common_kwargs: Mapping[str, Any],
        *,
        client_id: str,
        linger: float = 0.005,
        max_request_size: int = 8 * 1024 * 1024,
        send_timeout: float = 60.0,
        transactional_id: str | None = None,
        transaction_timeout: float = 60.0,
    ) -> None:
        extra: dict[str, Any] = {}
        if transactional_id is not None:
            extra = {"transactional_id": transactional_id, "transaction_timeout_ms": int(transaction_timeout * 1000)}
        self._producer = AIOKafkaProducer(
            **common_kwargs,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=int(linger * 1000),
            max_batch_size=256 * 1024,
            max_request_size=max_request_size,
            compression_type=None,
            **extra,
        )
        self._transactional_id = transactional_id
        self._send_timeout = send_timeout
        self._max_request_size = max_request_size
        self._hashes: dict[bytes, int] = {}
        # send_many appends through aiokafka's accumulator, as send() does after its per-record checks; these
        # are aiokafka 0.14 internals: without them (or with another partitioner) it is a loop of sends.
        producer: Any = self._producer
        accumulator = getattr(producer, "_message_accumulator", None)
        txn_manager = getattr(producer, "_txn_manager", None)
        self._add_message: Any = getattr(accumulator, "add_message", None)
        if not isinstance(getattr(producer, "_partitioner", None), DefaultPartitioner) or (
            transactional_id is not None and txn_manager is None
        ):
            self._add_message = None
        self._txn_manager: Any = txn_manager if transactional_id is not None else None
        self._request_timeout: float = getattr(producer, "_request_timeout_ms", 40000) / 1000
        self._started = False
        self.sent = 0
        self.acked = 0

    async def __aenter__(self) -> OutputProducer:
        if self._started:
            raise RuntimeError("producer already started")
        await asyncio.wait_for(self._producer.start(), timeout=self._send_timeout)
        self._started = True
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    @property
    def send_timeout(self) -> float:
        """The longest a run of sends may wait for buffer space (aiokafka can hang without it, #759)."""
        return self._send_timeout

    @property
    def started(self) -> bool:
        return self._started

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[Header] = (),
    ) -> asyncio.Future[Any]:
        """Enqueue one record; returns the future of its broker acknowledgement.

        Raises:
            OutputError: the record could not even be enqueued (too large, producer closed, timeout).
        """
        try:
            # aiokafka's send() returns at once unless its buffer is full; callers bound a whole run of
            # sends with one deadline (see send_timeout) instead of paying for a timer per record.
            fut: asyncio.Future[Any] = await self._producer.send(topic, value=value, key=key, headers=list(headers))
        except (KafkaError, ValueError, AssertionError) as exc:
            raise OutputError(f"cannot enqueue record for {topic}: {type(exc).__name__}") from exc
        self.sent += 1
        return fut

    async def send_many(self, messages: Sequence[Message]) -> list[asyncio.Future[Any]]:
        """Enqueue ``(topic, value, key, headers)`` records at once; returns one ack future per message, in order.

        A drop-in for a loop of :meth:`send` that costs much less CPU per record. Each future resolves exactly
        like :meth:`send`'s (it *is* aiokafka's per-record future): with the record's ``RecordMetadata`` once
        the broker acknowledged it, or with the exception of its batch. A record that cannot be enqueued fails
        only its own future, with the :class:`OutputError` :meth:`send` would have raised (``__cause__`` is
        aiokafka's error): neither key nor value, a key, value or header of the wrong type, larger than
        ``max_request_size`` (these fail alone), unknown topic (every record of that topic), not in a
        transaction (exactly-once mode), producer closed or failed, no buffer space. Once aiokafka refused a
        record of a partition, the later records of that partition in the call fail too, so none of them
        overtakes it when they are produced again.

        ``send_many`` never raises for a record (only ``CancelledError``): it bounds itself by
        :attr:`send_timeout`, and the records it could not enqueue by then fail with an :class:`OutputError`
        caused by ``TimeoutError``. Callers need no ``asyncio.timeout`` around it, and must not cancel it
        where the acks matter: the records enqueued before a cancellation are produced, but their futures
        are lost with it.

        Records take exactly the path of :meth:`send` after its per-record preamble, which is done once per
        call instead: metadata of each topic, the transaction check, the size check, and the partition of
        aiokafka's default partitioner (murmur2 of the key, cached per key, so a key stays on its partition;
        a random available partition for records without a key). They are appended to the same per-partition
        batches by aiokafka's ``MessageAccumulator.add_message`` (a private aiokafka 0.14 API; if it is
        missing, this falls back to a loop of sends). So batching, idempotence (sequence numbers are stamped
        by the sender when it drains a batch) and transactions (partitions are added to the open one) behave
        as for :meth:`send`. ``create_batch``/``send_batch`` were measured and not used: a ``send_batch`` waits
        until the partition's previous batch left, which caps the rate at one call's records per broker
        round trip (far below a loop of sends with 20 ms of latency).
        """
        if not messages:
            return []
        futures: list[asyncio.Future[Any] | None] = [None] * len(messages)
        stalled: BaseException | None = None
        try:
            async with asyncio.timeout(self._send_timeout):
                if self._add_message is None:
                    await self._send_each(messages, futures)
                else:
                    await self._enqueue_many(messages, futures, self._add_message)
        except TimeoutError as exc:  # buffer full for send_timeout: the rest is not enqueued
            stalled = exc
        loop = asyncio.get_running_loop()
        done: list[asyncio.Future[Any]] = []
        for message, future in zip(messages, futures, strict=True):
            done.append(future if future is not None else _failed(loop, message[0], stalled or TimeoutError()))
        return done

    async def _enqueue_many(
        self, messages: Sequence[Message], futures: list[asyncio.Future[Any] | None], add: Any
    ) -> None:
        """:meth:`send_many` through the accumulator; fills ``futures`` as records are enqueued."""
        loop = asyncio.get_running_loop()
        txn = self._txn_manager
        timeout = self._request_timeout
        limit = self._max_request_size
        hashes = self._hashes
        layouts: dict[str, _Layout | BaseException] = {}
        blocked: dict[_KTP, BaseException] = {}
        sent = 0
        try:
            for index, (topic, value, key, headers) in enumerate(messages):
                layout = layouts.get(topic)
                if layout is None:
                    layout = layouts[topic] = await self._layout(topic)
                if isinstance(layout, BaseException):
                    futures[index] = _failed(loop, topic, layout)
                    continue
                try:  # what send() checks before it appends, in its order
                    if value is None and key is None:
                        raise AssertionError("Need at least one: key or value")
                    if txn is not None and not txn.is_in_transaction():
                        raise IllegalOperation("Can't send messages while not in transaction")
                    headers = _as_list(headers)
                    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
                    if size > limit:
                        raise MessageSizeTooLargeError(
                            f"The message is {size} bytes when serialized which is larger than the maximum "
                            "request size you have configured with the max_request_size configuration"
                        )
                    if key is None:
                        tp = layout.keyless()
                    else:
                        hashed = hashes.get(key)
                        if hashed is None:
                            if len(hashes) >= _HASH_CACHE_SIZE:
                                hashes.clear()
                            hashed = hashes[key] = murmur2(key) & 0x7FFFFFFF
                        tp = layout.tps[hashed % layout.count]
                except (KafkaError, IllegalOperation, AssertionError, TypeError) as exc:
                    futures[index] = _failed(loop, topic, exc)
                    continue
                earlier = blocked.get(tp)
                if earlier is not None:
                    futures[index] = _failed(loop, topic, earlier)
                    continue
                try:
                    futures[index] = await add(tp, key, value, timeout, headers=headers)
                except (KafkaError, IllegalOperation, AssertionError) as exc:
                    blocked[tp] = exc
                    futures[index] = _failed(loop, topic, exc)
                    continue
                sent += 1
        finally:
            self.sent += sent

    async def _layout(self, topic: str) -> _Layout | BaseException:
        """The partitions of ``topic`` as aiokafka's partitioner sees them (metadata is fetched if needed)."""
        try:
            partitions = await self._producer.partitions_for(topic)
        except (KafkaError, AssertionError) as exc:
            return exc
        return _Layout(topic, list(partitions), self._producer.client.cluster)

    async def _send_each(self, messages: Sequence[Message], futures: list[asyncio.Future[Any] | None]) -> None:
        """:meth:`send_many` as a loop of sends (when aiokafka's accumulator is not what we expect)."""
        loop = asyncio.get_running_loop()
        for index, (topic, value, key, headers) in enumerate(messages):
            try:
                futures[index] = await self.send(topic, value, key, headers)
            except OutputError as exc:
                futures[index] = _failed(loop, topic, exc.__cause__ or exc)
            except (IllegalOperation, TypeError) as exc:  # send() lets these through
                futures[index] = _failed(loop, topic, exc)

    @property
    def transactional_id(self) -> str | None:
        """The ``transactional.id`` in exactly-once mode, else None."""
        return self._transactional_id

    async def wait_acked(self, acks: Sequence[asyncio.Future[Any]]) -> None:
        """Wait for every ack future of :meth:`send`; raises :class:`OutputError` when one of them failed."""
        for ack in await asyncio.gather(*acks, return_exceptions=True):
            if isinstance(ack, BaseException):
                raise OutputError(f"outcome record not acknowledged: {type(ack).__name__}") from ack

    async def flush(self, timeout: float) -> None:
        """Wait until every enqueued record is acknowledged (or ``timeout`` runs out)."""
        async with asyncio.timeout(timeout):
            await self._producer.flush()

    async def aclose(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()

    # -- transactions (exactly-once mode) -------------------------------------------------------------

    async def begin(self) -> None:
        """Open a transaction (the only state in which :meth:`send` is accepted in exactly-once mode).

        Raises:
            TransactionFatal: the producer cannot start one (its sender failed, or it was fenced).
        """
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._producer.begin_transaction()
        except (KafkaError, AssertionError, TimeoutError) as exc:
            raise TransactionFatal(f"cannot begin a transaction: {type(exc).__name__}") from exc

    async def send_offsets(self, offsets: Mapping[TopicPartition, int], group_id: str) -> None:
        """Add the consumed ``offsets`` (next offsets to read) of ``group_id`` to the open transaction."""
        todo = {_KTP(tp.topic, tp.partition): OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
        await self._transactional(self._producer.send_offsets_to_transaction(todo, group_id), "send offsets")

    async def commit(self) -> None:
        """Commit the open transaction: its records become visible to read_committed readers, its offsets count.

        Raises:
            TransactionAborted: the broker refused it and it was aborted; nothing of it is visible.
            TransactionFatal: fenced, the producer broke, or the result is unknown (timed out).
        """
        await self._transactional(self._producer.commit_transaction(), "commit")

    async def abort(self, cause: BaseException | None = None) -> None:
        """Abort the open transaction; raises :class:`TransactionFatal` when even that is impossible."""
        try:
            async with asyncio.timeout(self._send_timeout):
                await self._producer.abort_transaction()
        except (KafkaError, AssertionError, TimeoutError) as exc:
            raise TransactionFatal(
                f"cannot abort the transaction ({type(exc).__name__})"
                + (f" after {type(cause).__name__}" if cause is not None else "")
            ) from exc

    async def _transactional(self, step: Any, what: str) -> None:
        """Run one transaction step bounded by the send timeout, classifying its failure (see the classes)."""
        try:
            async with asyncio.timeout(self._send_timeout):
                await step
        except TimeoutError as exc:
            # aiokafka keeps retrying in the background: the transaction's result is unknown.
            raise TransactionFatal(f"transaction {what} timed out after {self._send_timeout} s") from exc
        except (KafkaError, AssertionError) as exc:
            await self.fail(exc, what)

    async def fail(self, exc: BaseException, what: str) -> None:
        """A step of the open transaction failed (``exc``): abort it, or report that nothing can be done.

        Always raises: :class:`TransactionAborted` after a successful abort, else :class:`TransactionFatal`.
        """
        cause = exc
        while isinstance(cause, OutputError) and cause.__cause__ is not None:  # wait_acked of a send_many failure
            cause = cause.__cause__
        if isinstance(cause, (*_FATAL, IllegalOperation)):
            raise TransactionFatal(f"transaction {what} failed: {type(cause).__name__}") from exc
        await self.abort(cause)
        raise TransactionAborted(f"transaction {what} failed and was aborted: {type(cause).__name__}") from exc


def _as_list(headers: Sequence[Header]) -> list[Header]:
    """aiokafka's record builder takes headers only as a list."""
    return headers if type(headers) is list else list(headers)


def _failed(loop: asyncio.AbstractEventLoop, topic: str, exc: BaseException) -> asyncio.Future[Any]:
    """The future of a record that could not be enqueued: failed with the error :meth:`OutputProducer.send` raises."""
    error = OutputError(f"cannot enqueue record for {topic}: {type(exc).__name__}")
    error.__cause__ = exc
    future: asyncio.Future[Any] = loop.create_future()
    future.set_exception(error)
    return future


class _Layout:
    """One topic's partitions for one :meth:`OutputProducer.send_many` call, as ``AIOKafkaProducer._partition``
    sees them: ``tps`` in the order of ``list(partitions_for(topic))``, available ones looked up when needed."""

    __slots__ = ("_available", "_cluster", "count", "topic", "tps")

    def __init__(self, topic: str, partitions: list[int], cluster: Any) -> None:
        self.topic = topic
        self.tps = [_KTP(topic, partition) for partition in partitions]
        self.count = len(self.tps)
        self._cluster = cluster
        self._available: list[_KTP] | None = None

    def keyless(self) -> _KTP:
        """A random partition with a leader (any partition when none has one), like aiokafka's partitioner."""
        if self._available is None:
            available = self._cluster.available_partitions_for_topic(self.topic)
            self._available = [_KTP(self.topic, p) for p in available] if available else self.tps
        return random.choice(self._available)
