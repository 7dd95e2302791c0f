"""Producer façade for result and failure records: idempotent, ``acks=all``, sends return ack futures.

aiokafka's defaults are ``acks=1`` without idempotence (PITFALLS A7); outcome records are what make an
input offset committable, so they must be durable before we commit. ``send`` waits only for buffer
space (natural backpressure) and returns a future that resolves when the broker acknowledged.
Every send is bounded by a timeout because ``send()`` can hang when the producer failed to start (#759).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.errors import OutputError
from bridge.records import Header

__all__ = ["OutputProducer"]


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
    ) -> None:
        self._producer = AIOKafkaProducer(
            **common_kwargs,
            client_id=client_id,
            enable_idempotence=True,
            acks="all",
            linger_ms=int(linger * 1000),
            max_batch_size=256 * 1024,
            max_request_size=max_request_size,
            compression_type=None,
        )
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

    async def flush(self, timeout: float) -> None:
        """Wait until every enqueued record is acknowledged (or ``timeout`` runs out)."""
        async with asyncio.timeout(timeout):
            await self._producer.flush()

    async def aclose(self) -> None:
        if self._started:
            self._started = False
            await self._producer.stop()
