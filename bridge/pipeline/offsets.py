"""Which consumed offsets may be committed: the per-partition contiguous watermark of finished records.

A record is *finished* when its terminal outcome (its result record or its failure record) has been
acked by Kafka. The commit offset of a partition follows Kafka's convention (the *next* offset to read)
and is the lowest unfinished tracked offset, or the last tracked offset + 1 when every tracked record is
finished. It therefore never passes an unfinished record (invariant I2, the Vector #24215 bug), and a
partition that is not owned has no state at all, so a late ack after a revoke can commit nothing
(invariant I3, Redpanda Connect #4010). See ``/work/shared/PITFALLS.md`` §0.

Gaps in the offsets (compacted records, transaction markers) never block: "finished through" is read
from the tracked offsets themselves, never from ``offset + 1`` arithmetic.

Cost: ``track`` and ``finish`` are amortised O(1). Each partition keeps a deque of tracked offsets whose
finished prefix is popped as soon as it forms, plus a set of tracked-but-unfinished offsets; every
offset enters and leaves each structure once.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.records import RecordRef, TopicPartition

__all__ = ["OffsetTracker", "OffsetTrackerStatistics"]

_Key = tuple[str, int]


class OffsetTrackerStatistics(NamedTuple):
    """A snapshot for the metrics layer.

    Attributes:
        assigned_partitions: partitions currently owned.
        pending_records: tracked records not finished yet (in flight somewhere in the bridge).
        window_offsets: offsets held in memory (pending ones plus finished ones stuck behind them).
        uncommitted_partitions: partitions whose commit offset advanced since the last ``mark_committed``.
    """

    assigned_partitions: int
    pending_records: int
    window_offsets: int
    uncommitted_partitions: int


@dataclass(slots=True)
class _PartitionState:
    """Bookkeeping of one owned partition during one assignment."""

    tp: TopicPartition
    start: int | None  # the committed offset we were assigned with (Kafka's, or None)
    marked: int | None  # the last offset reported committed through mark_committed
    last_tracked: int | None = None
    window: deque[int] = field(default_factory=deque)  # tracked offsets, finished prefix popped
    unfinished: set[int] = field(default_factory=set)

    def commit_offset(self) -> int | None:
        if self.window:
            return self.window[0]
        if self.last_tracked is not None:
            return self.last_tracked + 1
        return self.start


class OffsetTracker:
    """Per-partition record of finished offsets, and the offsets that may be committed.

    Contract:
        * The commit offset of an owned partition is the lowest tracked unfinished offset, or the last
          tracked offset + 1 when all tracked records are finished, or the ``committed`` offset given to
          :meth:`assign` while nothing has been tracked (I2).
        * It never decreases within one assignment: offsets must be tracked in strictly increasing
          order, starting at or after the assigned committed offset.
        * Partitions that are not owned have no state: :meth:`track` and :meth:`finish` return
          ``False`` for them and they never appear in :meth:`committable` (I3).
        * :meth:`finish` is by offset. If a partition is revoked and assigned again, a late ack from the
          earlier assignment finishes the same offset if it is tracked and unfinished again: that is
          truthful, because the record's outcome *was* acked by Kafka (I1 holds, at the cost of a
          duplicate, which I4 allows after a rebalance that could not drain).

    Example::

        tracker.assign(tp, committed=100)
        tracker.track(ref_100); tracker.track(ref_101)
        tracker.finish(ref_101)        # 100 still pending
        tracker.committable()          # {} (still 100, not advanced)
        tracker.finish(ref_100)
        tracker.committable()          # {tp: 102}
        tracker.mark_committed({tp: 102})
    """

    __slots__ = ("_pending_total", "_states")

    def __init__(self) -> None:
        self._states: dict[_Key, _PartitionState] = {}
        self._pending_total = 0

    # -- assignment ---------------------------------------------------------------------------------

    def assign(self, tp: TopicPartition, committed: int | None = None) -> None:
        """Start owning ``tp``.

        Args:
            tp: the newly assigned partition.
            committed: the group's committed offset for it (the next offset to read), or ``None`` when
                the group has none. Until something is tracked, this is the commit offset, and it is
                treated as already committed.

        Raises:
            ValueError: ``tp`` is already owned (revoke it first), or ``committed`` is negative.
        """
        key = (tp.topic, tp.partition)
        if key in self._states:
            raise ValueError(f"partition {tp.topic}[{tp.partition}] is already assigned; revoke it first")
        if committed is not None and committed < 0:
            raise ValueError(f"committed offset must be >= 0, got {committed}")
        self._states[key] = _PartitionState(tp=tp, start=committed, marked=committed)

    def revoke(self, tp: TopicPartition) -> None:
        """Stop owning ``tp`` and drop its state; a no-op when it is not owned.

        Commit what :meth:`committable` offers for ``tp`` *before* revoking: unfinished records are left
        for the next owner, and later acks for them change nothing here.
        """
        state = self._states.pop((tp.topic, tp.partition), None)
        if state is not None:
            self._pending_total -= len(state.unfinished)

    def assigned(self) -> frozenset[TopicPartition]:
        """The partitions currently owned."""
        return frozenset(state.tp for state in self._states.values())

    # -- records ------------------------------------------------------------------------------------

    def track(self, ref: RecordRef) -> bool:
        """Register a consumed record as in flight; it holds back commits until finished.

        Returns:
            ``True`` when tracked; ``False`` when its partition is not owned (a fetch that raced a
            revoke). The caller must then drop the record: it belongs to the partition's next owner.

        Raises:
            ValueError: the offset is not above the last tracked offset of its partition, or is below
                the committed offset the partition was assigned with. Offsets may have gaps.
        """
        state = self._states.get((ref.topic, ref.partition))
        if state is None:
            return False
        offset = ref.offset
        if state.last_tracked is not None:
            if offset <= state.last_tracked:
                raise ValueError(
                    f"offsets must increase per partition: {offset} after {state.last_tracked} "
                    f"on {ref.topic}[{ref.partition}]"
                )
        elif (state.start is not None and offset < state.start) or offset < 0:
            raise ValueError(
                f"offset {offset} is below the assigned committed offset {state.start} "
                f"on {ref.topic}[{ref.partition}]; revoke and assign again after a seek"
            )
        state.last_tracked = offset
        state.window.append(offset)
        state.unfinished.add(offset)
        self._pending_total += 1
        return True

    def finish(self, ref: RecordRef) -> bool:
        """Mark a tracked record finished: its result or failure record has been acked by Kafka.

        Returns:
            ``True`` when this call finished a tracked, unfinished record; ``False`` when the partition
            is not owned (a late ack after a revoke), the offset was never tracked, or it was already
            finished. ``False`` never changes any commit offset.
        """
        state = self._states.get((ref.topic, ref.partition))
        if state is None:
            return False
        unfinished = state.unfinished
        try:
            unfinished.remove(ref.offset)
        except KeyError:
            return False
        self._pending_total -= 1
        window = state.window
        if window[0] == ref.offset:
            window.popleft()
            while window and window[0] not in unfinished:
                window.popleft()
        return True

    # -- commits ------------------------------------------------------------------------------------

    def commit_offset(self, tp: TopicPartition) -> int | None:
        """The offset committable for ``tp`` now, advanced or not; ``None`` if unowned or unknown."""
        state = self._states.get((tp.topic, tp.partition))
        return None if state is None else state.commit_offset()

    def committable(self, partitions: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets to commit: owned partitions whose commit offset advanced since the last mark.

        A partition assigned with ``committed=None`` reports its first known position even before any
        record is finished: committing it early pins the group's position, so a crash cannot make the
        next owner fall back to ``auto_offset_reset=latest`` and skip records (I1).

        Args:
            partitions: restrict the answer to these partitions (the revoke path); ``None`` means all.
        """
        if partitions is None:
            states: Iterable[_PartitionState] = self._states.values()
        else:
            found = (self._states.get((tp.topic, tp.partition)) for tp in partitions)
            states = [s for s in found if s is not None]
        result: dict[TopicPartition, int] = {}
        for state in states:
            offset = state.commit_offset()
            if offset is not None and (state.marked is None or offset > state.marked):
                result[state.tp] = offset
        return result

    def mark_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Record that Kafka accepted a commit of ``offsets`` (call after the commit succeeded).

        Entries for partitions not owned any more are ignored, as are offsets that do not lie in
        ``(last marked, current commit offset]``: those belong to an earlier assignment of the partition
        and must not hide future progress.
        """
        for tp, offset in offsets.items():
            state = self._states.get((tp.topic, tp.partition))
            if state is None:
                continue
            current = state.commit_offset()
            if current is None or offset > current:
                continue
            if state.marked is None or offset > state.marked:
                state.marked = offset

    # -- introspection ------------------------------------------------------------------------------

    def pending(self, tp: TopicPartition) -> int:
        """Tracked, unfinished records of ``tp`` (0 when not owned)."""
        state = self._states.get((tp.topic, tp.partition))
        return 0 if state is None else len(state.unfinished)

    def pending_total(self) -> int:
        """Tracked, unfinished records over all owned partitions; O(1)."""
        return self._pending_total

    def statistics(self) -> OffsetTrackerStatistics:
        """A snapshot for metrics; O(number of owned partitions)."""
        window = 0
        uncommitted = 0
        for state in self._states.values():
            window += len(state.window)
            offset = state.commit_offset()
            if offset is not None and (state.marked is None or offset > state.marked):
                uncommitted += 1
        return OffsetTrackerStatistics(
            assigned_partitions=len(self._states),
            pending_records=self._pending_total,
            window_offsets=window,
            uncommitted_partitions=uncommitted,
        )
