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
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka import TopicPartition as _KTP
from aiokafka.errors import (
    IllegalOperation,
    InvalidTxnState,
    KafkaError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    TransactionalIdAuthorizationFailed,
)
from aiokafka.structs import OffsetAndMetadata

from bridge.errors import OutputError
from bridge.records import Header, TopicPartition

__all__ = ["OutputProducer", "TransactionAborted", "TransactionFatal"]

#: errors after which aiokafka's transactional producer cannot continue (its sender task is gone, or the
#: broker fenced this producer epoch); anything else is tried with an abort first.
_FATAL = (ProducerFenced, OutOfOrderSequenceNumber, TransactionalIdAuthorizationFailed, InvalidTxnState)


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
        cause = exc.__cause__ if isinstance(exc, OutputError) and exc.__cause__ is not None else exc
        if isinstance(cause, (*_FATAL, IllegalOperation)):
            raise TransactionFatal(f"transaction {what} failed: {type(cause).__name__}") from exc
        await self.abort(cause)
        raise TransactionAborted(f"transaction {what} failed and was aborted: {type(cause).__name__}") from exc
