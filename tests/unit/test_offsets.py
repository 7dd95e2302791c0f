"""OffsetTracker: contiguous commits (I2), nothing for partitions not owned (I3), gaps never block."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from bridge.pipeline.offsets import OffsetTracker, OffsetTrackerStatistics
from bridge.records import RecordRef, TopicPartition

_LONG = os.environ.get("KARD_BRIDGE_HYPOTHESIS_LONG") == "1"
# The long run is opt-in and lasts minutes: lift the per-test hang guard for it.
pytestmark = [pytest.mark.timeout(3600)] if _LONG else []

TP0 = TopicPartition("payments", 0)
TP1 = TopicPartition("payments", 1)


def ref(tp: TopicPartition, offset: int) -> RecordRef:
    """A record reference on ``tp``."""
    return RecordRef(tp.topic, tp.partition, offset)


def tracked(tracker: OffsetTracker, tp: TopicPartition, *offsets: int) -> None:
    """Track ``offsets`` on ``tp``, asserting each was accepted."""
    for offset in offsets:
        assert tracker.track(ref(tp, offset))


def test_commit_offset_stops_at_lowest_unfinished() -> None:
    """Finishing later records out of order never moves the commit offset past an unfinished one."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=10)
    tracked(tracker, TP0, 10, 11, 12, 13)
    assert tracker.finish(ref(TP0, 11))
    assert tracker.finish(ref(TP0, 13))
    assert tracker.commit_offset(TP0) == 10
    assert tracker.committable() == {}
    assert tracker.finish(ref(TP0, 10))
    assert tracker.committable() == {TP0: 12}
    assert tracker.finish(ref(TP0, 12))
    assert tracker.committable() == {TP0: 14}


def test_gaps_in_offsets_do_not_block_commits() -> None:
    """Offsets missing from the log (compaction, transaction markers) are skipped, not waited for."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=0)
    tracked(tracker, TP0, 3, 7, 8, 20)
    tracker.finish(ref(TP0, 3))
    assert tracker.commit_offset(TP0) == 7
    for offset in (7, 8, 20):
        tracker.finish(ref(TP0, offset))
    assert tracker.committable() == {TP0: 21}


def test_committable_reports_only_advances_since_mark() -> None:
    """A partition is offered once per advance; after ``mark_committed`` it is quiet until it moves again."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=5)
    tracker.assign(TP1, committed=0)
    tracked(tracker, TP0, 5, 6)
    tracker.finish(ref(TP0, 5))
    assert tracker.committable() == {TP0: 6}
    tracker.mark_committed({TP0: 6})
    assert tracker.committable() == {}
    tracker.finish(ref(TP0, 6))
    assert tracker.committable() == {TP0: 7}


def test_assigned_offset_is_treated_as_committed() -> None:
    """A partition assigned with a committed offset and nothing tracked has nothing new to commit."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=42)
    assert tracker.commit_offset(TP0) == 42
    assert tracker.committable() == {}


def test_unknown_group_offset_is_pinned_early() -> None:
    """Without a group offset, the first tracked position is committable before anything finishes."""
    tracker = OffsetTracker()
    tracker.assign(TP0)
    assert tracker.committable() == {}
    tracked(tracker, TP0, 0)
    assert tracker.committable() == {TP0: 0}


def test_revoked_partition_never_commits_again() -> None:
    """After a revoke, late acks return False and the partition never appears in committable (I3)."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=0)
    tracked(tracker, TP0, 0, 1, 2)
    tracker.finish(ref(TP0, 1))
    tracker.revoke(TP0)
    assert not tracker.finish(ref(TP0, 0))
    assert tracker.committable() == {}
    assert tracker.commit_offset(TP0) is None
    assert tracker.pending(TP0) == 0
    assert tracker.pending_total() == 0
    assert tracker.assigned() == frozenset()


def test_reassigned_partition_starts_from_given_offset() -> None:
    """A re-assignment starts fresh from the committed offset it is given."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=0)
    tracked(tracker, TP0, 0, 1)
    tracker.finish(ref(TP0, 0))
    tracker.mark_committed(tracker.committable())
    tracker.revoke(TP0)
    tracker.assign(TP0, committed=1)
    assert tracker.committable() == {}
    tracked(tracker, TP0, 1)
    assert tracker.finish(ref(TP0, 1))
    assert tracker.committable() == {TP0: 2}


def test_track_on_unowned_partition_is_refused() -> None:
    """A record fetched for a partition that is not owned is not tracked: the caller must drop it."""
    tracker = OffsetTracker()
    assert not tracker.track(ref(TP1, 0))
    assert tracker.pending_total() == 0


def test_track_rejects_out_of_order_offsets() -> None:
    """Offsets must increase per partition and start at or after the assigned committed offset."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=10)
    with pytest.raises(ValueError, match="below the assigned committed offset"):
        tracker.track(ref(TP0, 9))
    tracked(tracker, TP0, 10)
    with pytest.raises(ValueError, match="must increase"):
        tracker.track(ref(TP0, 10))


def test_assign_twice_is_an_error() -> None:
    """Assigning an owned partition again without a revoke raises."""
    tracker = OffsetTracker()
    tracker.assign(TP0)
    with pytest.raises(ValueError, match="already assigned"):
        tracker.assign(TP0, committed=3)


def test_finish_is_idempotent_and_ignores_untracked() -> None:
    """Finishing the same record twice, or an offset never tracked, returns False and changes nothing."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=0)
    tracked(tracker, TP0, 0, 1)
    assert tracker.finish(ref(TP0, 1))
    assert not tracker.finish(ref(TP0, 1))
    assert not tracker.finish(ref(TP0, 5))
    assert tracker.pending(TP0) == 1
    assert tracker.commit_offset(TP0) == 0


def test_mark_committed_ignores_stale_offsets() -> None:
    """Offsets for unowned partitions or beyond the current commit offset do not hide progress."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=0)
    tracked(tracker, TP0, 0, 1)
    tracker.mark_committed({TP0: 99, TP1: 5})
    tracker.finish(ref(TP0, 0))
    assert tracker.committable() == {TP0: 1}


def test_committable_can_be_restricted_to_partitions() -> None:
    """The revoke path can ask for the offsets of just the partitions it is giving up."""
    tracker = OffsetTracker()
    for tp in (TP0, TP1):
        tracker.assign(tp, committed=0)
        tracked(tracker, tp, 0)
        tracker.finish(ref(tp, 0))
    assert tracker.committable([TP1, TopicPartition("other", 0)]) == {TP1: 1}


def test_statistics_count_pending_and_window() -> None:
    """Statistics count owned partitions, pending records, offsets held, and partitions with news."""
    tracker = OffsetTracker()
    tracker.assign(TP0, committed=0)
    tracker.assign(TP1, committed=0)
    tracked(tracker, TP0, 0, 1, 2)
    tracker.finish(ref(TP0, 2))
    assert tracker.statistics() == OffsetTrackerStatistics(
        assigned_partitions=2, pending_records=2, window_offsets=3, uncommitted_partitions=0
    )
    tracker.finish(ref(TP0, 0))
    assert tracker.statistics() == OffsetTrackerStatistics(
        assigned_partitions=2, pending_records=1, window_offsets=2, uncommitted_partitions=1
    )


# -- stateful model -----------------------------------------------------------------------------------

_PARTITIONS = (TP0, TP1, TopicPartition("loyalty", 0))


class _Model:
    """What the tracker should know about one partition during one assignment."""

    def __init__(self, committed: int | None) -> None:
        self.start = committed
        self.next_offset = committed or 0
        self.last_tracked: int | None = None
        self.unfinished: set[int] = set()
        self.marked = committed
        self.highest_seen: int | None = committed

    def expected(self) -> int | None:
        if self.unfinished:
            return min(self.unfinished)
        if self.last_tracked is not None:
            return self.last_tracked + 1
        return self.start


class OffsetTrackerMachine(RuleBasedStateMachine):
    """Random assign / track / finish / commit / revoke sequences against a plain model."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = OffsetTracker()
        self.models: dict[TopicPartition, _Model] = {}
        self.every_ref: list[RecordRef] = []
        self.last_commit: dict[TopicPartition, int] = {}

    @initialize()
    def start_with_one_partition(self) -> None:
        """Begin owning one partition, as a consumer does after its first rebalance."""
        self.tracker.assign(TP0, committed=0)
        self.models[TP0] = _Model(0)

    @rule(tp=st.sampled_from(_PARTITIONS), committed=st.one_of(st.none(), st.integers(0, 40)))
    def assign(self, tp: TopicPartition, committed: int | None) -> None:
        """Assign a partition (again) with some committed offset, or none."""
        if tp in self.models:
            return
        self.tracker.assign(tp, committed)
        self.models[tp] = _Model(committed)

    @rule(tp=st.sampled_from(_PARTITIONS), gaps=st.lists(st.integers(1, 3), min_size=1, max_size=8))
    def track(self, tp: TopicPartition, gaps: list[int]) -> None:
        """Track a run of increasing offsets with gaps; unowned partitions refuse them."""
        model = self.models.get(tp)
        if model is None:
            assert not self.tracker.track(ref(tp, 0))
            return
        for gap in gaps:
            offset = model.next_offset + gap - 1
            assert self.tracker.track(ref(tp, offset))
            model.next_offset = offset + 1
            model.last_tracked = offset
            model.unfinished.add(offset)
            self.every_ref.append(ref(tp, offset))

    @precondition(lambda self: bool(self.every_ref))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        """Finish any record ever seen: in flight, already finished, or from a revoked assignment."""
        record = data.draw(st.sampled_from(self.every_ref))
        model = self.models.get(record.tp)
        expected = model is not None and record.offset in model.unfinished
        assert self.tracker.finish(record) == expected
        if model is not None:
            model.unfinished.discard(record.offset)

    @precondition(lambda self: any(m.unfinished for m in self.models.values()))
    @rule(data=st.data())
    def finish_in_flight(self, data: st.DataObject) -> None:
        """Finish a record that is in flight right now, in any order."""
        tp = data.draw(st.sampled_from(sorted((t for t, m in self.models.items() if m.unfinished), key=str)))
        offset = data.draw(st.sampled_from(sorted(self.models[tp].unfinished)))
        assert self.tracker.finish(ref(tp, offset))
        self.models[tp].unfinished.discard(offset)

    @rule()
    def commit(self) -> None:
        """Commit what is offered, as the consumer loop does, and record it."""
        offers = self.tracker.committable()
        for tp, offset in offers.items():
            model = self.models[tp]
            assert offset == model.expected()
            assert model.marked is None or offset > model.marked
            model.marked = offset
        self.tracker.mark_committed(offers)
        assert self.tracker.committable() == {}

    @rule(tp=st.sampled_from(_PARTITIONS))
    def revoke(self, tp: TopicPartition) -> None:
        """Revoke a partition (owned or not) and forget its model."""
        self.tracker.revoke(tp)
        self.models.pop(tp, None)

    @invariant()
    def commit_offset_is_lowest_unfinished(self) -> None:
        """Every owned partition's commit offset is the lowest unfinished offset (I2)."""
        for tp, model in self.models.items():
            assert self.tracker.commit_offset(tp) == model.expected()
            assert self.tracker.pending(tp) == len(model.unfinished)
        assert self.tracker.pending_total() == sum(len(m.unfinished) for m in self.models.values())
        assert self.tracker.assigned() == frozenset(self.models)

    @invariant()
    def commit_offset_never_decreases(self) -> None:
        """Within one assignment the commit offset only moves forward."""
        for tp, model in self.models.items():
            offset = self.tracker.commit_offset(tp)
            if offset is None:
                continue
            assert model.highest_seen is None or offset >= model.highest_seen
            model.highest_seen = offset

    @invariant()
    def nothing_for_unowned_partitions(self) -> None:
        """Partitions not owned never show up in committable and report no state (I3)."""
        offers = self.tracker.committable()
        assert set(offers) <= set(self.models)
        for tp in _PARTITIONS:
            if tp not in self.models:
                assert self.tracker.commit_offset(tp) is None
                assert self.tracker.pending(tp) == 0


OffsetTrackerMachine.TestCase.settings = settings(
    max_examples=2000 if _LONG else 200,
    stateful_step_count=100 if _LONG else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_offset_tracker_state_machine = OffsetTrackerMachine.TestCase
