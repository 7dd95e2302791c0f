"""Backpressure accounting: how much consumed data is still buffered, and whether to pause or resume.

Every consumed record is *admitted* (counted in records and bytes) when the consumer hands it over and
*released* when it is finished (its outcome acked by Kafka). With high and low watermarks for both
records and bytes, this class answers two questions with hysteresis, so the consumer does not flap:

- pause when records or bytes reach their high watermark;
- resume (only once paused) when records and bytes are both at or below their low watermark.

It only decides. The consumer loop pauses or resumes the assigned partitions, then confirms with
:meth:`FlowControl.mark_paused` / :meth:`FlowControl.mark_resumed`. Because aiokafka forgets pauses on
every rebalance (PITFALLS A6), the loop re-applies the pause to newly assigned partitions while
:attr:`FlowControl.paused` is true. Nothing is ever dropped: a full buffer only pauses (STYLE.md §9).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FlowControl", "FlowStatistics"]


class FlowStatistics(NamedTuple):
    """A snapshot for the metrics layer.

    Attributes:
        records: admitted, not yet released records.
        bytes: admitted, not yet released bytes.
        fill_ratio: the larger of ``records / high_records`` and ``bytes / high_bytes`` (1.0 = at the
            high watermark; it can exceed 1 because one fetch may overshoot).
        paused: whether the consumer confirmed it paused.
    """

    records: int
    bytes: int
    fill_ratio: float
    paused: bool


class FlowControl:
    """Buffered-record and buffered-byte accounting with high/low watermark hysteresis.

    Args:
        high_records: pause when this many records are buffered.
        low_records: resume only when at most this many records are buffered.
        high_bytes: pause when this many bytes are buffered.
        low_bytes: resume only when at most this many bytes are buffered.

    Raises:
        ValueError: a watermark is negative, or a low watermark is not below its high watermark.
    """

    __slots__ = ("_bytes", "_paused", "_records", "high_bytes", "high_records", "low_bytes", "low_records")

    def __init__(self, *, high_records: int, low_records: int, high_bytes: int, low_bytes: int) -> None:
        for name, low, high in (("records", low_records, high_records), ("bytes", low_bytes, high_bytes)):
            if low < 0 or high <= low:
                raise ValueError(f"need 0 <= low_{name} < high_{name}, got low={low}, high={high}")
        self.high_records = high_records
        self.low_records = low_records
        self.high_bytes = high_bytes
        self.low_bytes = low_bytes
        self._records = 0
        self._bytes = 0
        self._paused = False

    def admit(self, n_records: int, n_bytes: int) -> None:
        """Count records the consumer handed over. Admission is never refused: it only informs pausing.

        Raises:
            ValueError: a negative count.
        """
        if n_records < 0 or n_bytes < 0:
            raise ValueError(f"cannot admit negative amounts ({n_records} records, {n_bytes} bytes)")
        self._records += n_records
        self._bytes += n_bytes

    def release(self, n_records: int, n_bytes: int) -> None:
        """Uncount finished records (or records dropped with a revoked partition).

        Raises:
            ValueError: a negative count, or more than is admitted (an accounting bug: fail loudly
                rather than drift into never pausing).
        """
        if n_records < 0 or n_bytes < 0:
            raise ValueError(f"cannot release negative amounts ({n_records} records, {n_bytes} bytes)")
        if n_records > self._records or n_bytes > self._bytes:
            raise ValueError(
                f"releasing {n_records} records / {n_bytes} bytes but only {self._records} / {self._bytes} are admitted"
            )
        self._records -= n_records
        self._bytes -= n_bytes

    @property
    def paused(self) -> bool:
        """Whether the consumer confirmed it paused (via :meth:`mark_paused`)."""
        return self._paused

    def should_pause(self) -> bool:
        """``True`` when not paused and records or bytes have reached their high watermark."""
        return not self._paused and (self._records >= self.high_records or self._bytes >= self.high_bytes)

    def should_resume(self) -> bool:
        """``True`` when paused and records and bytes are both at or below their low watermark."""
        return self._paused and self._records <= self.low_records and self._bytes <= self.low_bytes

    def mark_paused(self) -> None:
        """Confirm the consumer paused its partitions."""
        self._paused = True

    def mark_resumed(self) -> None:
        """Confirm the consumer resumed its partitions."""
        self._paused = False

    def statistics(self) -> FlowStatistics:
        """A snapshot for metrics; O(1)."""
        fill = max(self._records / self.high_records, self._bytes / self.high_bytes)
        return FlowStatistics(records=self._records, bytes=self._bytes, fill_ratio=fill, paused=self._paused)
