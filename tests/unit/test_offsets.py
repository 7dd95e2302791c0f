"""OffsetTracker: contiguous commits (I2), nothing for partitions not owned (I3), gaps never block.

The state machine at the end checks the tracker against a plain model *and* against a ground truth that
survives rebalances: a simulated Kafka log and group offset per partition. Its central property: the
group's committed offset never passes a record whose outcome was not acked, across revokes, reassignments
(from the group's offset or from an earlier one) and commits that land late. ``KARD_BRIDGE_HYPOTHESIS_LONG=1``
runs it for 1,000,000 examples (shorter runs; see the settings at the end).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from bridge.pipeline.offsets import OffsetTracker, OffsetTrackerStatistics
from bridge.records import RecordRef, TopicPartition
from tests.event_strategies import EXAMPLES, LONG, LONG_RUN_MARKS

# KARD_BRIDGE_HYPOTHESIS_LONG=1: the state machine runs 1,000,000 examples and the timeout is lifted.
pytestmark = LONG_RUN_MARKS

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
        self.position = committed or 0  # the consumer's fetch position (earliest when the group has none)
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
    """Random assign / fetch / finish / commit / revoke sequences against a plain model and a Kafka model.

    The Kafka model: ``log`` holds the offsets that exist in each partition (with gaps, as after
    compaction); ``group`` is the group's committed offset, changed only by commits that succeed (even
    one that lands after its partition was revoked and assigned again); ``acked`` holds the offsets whose
    outcome the tracker accepted (``finish`` returned True) in any assignment. An assignment starts from
    the group's offset, as the bridge's ``on_assigned`` does, or from an earlier one (a seek back).
    """

    def __init__(self) -> None:
        super().__init__()
        self.tracker = OffsetTracker()
        self.models: dict[TopicPartition, _Model] = {}
        self.every_ref: list[RecordRef] = []
        self.log: dict[TopicPartition, list[int]] = {tp: [] for tp in _PARTITIONS}
        self.group: dict[TopicPartition, int | None] = dict.fromkeys(_PARTITIONS)
        self.acked: dict[TopicPartition, set[int]] = {tp: set() for tp in _PARTITIONS}
        self.in_flight_commit: dict[TopicPartition, int] | None = None

    @initialize()
    def start_with_one_partition(self) -> None:
        """Begin owning one partition, as a consumer does after its first rebalance."""
        self.group[TP0] = 0
        self._assign(TP0, 0)

    def _assign(self, tp: TopicPartition, committed: int | None) -> None:
        self.tracker.assign(tp, committed)
        self.models[tp] = _Model(committed)

    def _fetch(self, tp: TopicPartition, model: _Model, gaps: list[int]) -> list[int]:
        """The next ``len(gaps)`` offsets from the fetch position; past the log end, append with gaps."""
        log = self.log[tp]
        fetched: list[int] = []
        i = bisect.bisect_left(log, model.position)
        for gap in gaps:
            if i < len(log):
                offset = log[i]
            else:
                offset = max(model.position, log[-1] + 1 if log else 0) + gap - 1
                log.append(offset)
            i += 1
            fetched.append(offset)
            model.position = offset + 1
        return fetched

    def _kafka_commit(self, offsets: dict[TopicPartition, int]) -> None:
        """The commit succeeded: Kafka stores the offsets and the tracker is told (as ``Bridge.commit``)."""
        self.group.update(offsets)
        self.tracker.mark_committed(offsets)
        for tp, offset in offsets.items():  # the tracker's documented mark_committed semantics
            model = self.models.get(tp)
            current = None if model is None else model.expected()
            if model is None or current is None or offset > current:
                continue  # not owned, or from an earlier assignment: ignored
            if model.marked is None or offset > model.marked:
                model.marked = offset

    def _check_offers(self, offers: dict[TopicPartition, int]) -> None:
        """An offer is the model's expectation and never passes an unfinished record; none is missing."""
        for tp, offset in offers.items():
            model = self.models[tp]
            assert all(offset <= pending for pending in model.unfinished), "offer passes an unfinished record"
            assert offset == model.expected()
            assert model.last_tracked is None or offset <= model.last_tracked + 1
            assert model.marked is None or offset > model.marked

    @rule(tp=st.sampled_from(_PARTITIONS), seek_back=st.one_of(st.none(), st.integers(0, 40)))
    def assign(self, tp: TopicPartition, seek_back: int | None) -> None:
        """Assign a partition (again) from the group's committed offset, or from an earlier offset."""
        if tp in self.models:
            return
        committed = self.group[tp]
        if seek_back is not None and committed is not None:
            committed = max(0, committed - seek_back)
        self._assign(tp, committed)

    @rule(tp=st.sampled_from(_PARTITIONS), gaps=st.lists(st.integers(1, 3), min_size=1, max_size=8))
    def track(self, tp: TopicPartition, gaps: list[int]) -> None:
        """Fetch and track a run of records (re-delivered ones after a reassignment, then new ones)."""
        model = self.models.get(tp)
        if model is None:
            assert not self.tracker.track(ref(tp, 0))
            return
        for offset in self._fetch(tp, model, gaps):
            assert self.tracker.track(ref(tp, offset))
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
        if expected:
            assert model is not None
            model.unfinished.discard(record.offset)
            self.acked[record.tp].add(record.offset)

    @precondition(lambda self: any(m.unfinished for m in self.models.values()))
    @rule(data=st.data())
    def finish_in_flight(self, data: st.DataObject) -> None:
        """Finish a record that is in flight right now, in any order."""
        tp = data.draw(st.sampled_from(sorted((t for t, m in self.models.items() if m.unfinished), key=str)))
        offset = data.draw(st.sampled_from(sorted(self.models[tp].unfinished)))
        assert self.tracker.finish(ref(tp, offset))
        self.models[tp].unfinished.discard(offset)
        self.acked[tp].add(offset)

    @rule()
    def commit(self) -> None:
        """Commit what is offered, as the consumer loop does; every advanced partition is offered."""
        offers = self.tracker.committable()
        self._check_offers(offers)
        advanced = set()
        for tp, model in self.models.items():
            current = model.expected()
            if current is not None and (model.marked is None or current > model.marked):
                advanced.add(tp)
        assert set(offers) == advanced, "an advanced partition was not offered (or an unchanged one was)"
        self._kafka_commit(offers)
        assert self.tracker.committable() == {}

    @precondition(lambda self: self.in_flight_commit is None)
    @rule()
    def begin_commit(self) -> None:
        """Take the offers for a commit whose answer comes later (other rules run in between)."""
        offers = self.tracker.committable()
        self._check_offers(offers)
        self.in_flight_commit = offers

    @precondition(lambda self: self.in_flight_commit is not None)
    @rule(succeeded=st.booleans())
    def end_commit(self, succeeded: bool) -> None:
        """The late commit succeeds (Kafka stores it, maybe after a revoke) or fails (nothing stored)."""
        offers, self.in_flight_commit = self.in_flight_commit, None
        assert offers is not None
        if succeeded:
            self._kafka_commit(offers)

    @rule(tp=st.sampled_from(_PARTITIONS), commit_first=st.booleans())
    def revoke(self, tp: TopicPartition, commit_first: bool) -> None:
        """Revoke a partition (owned or not), after committing what it finished (``on_revoked``) or not."""
        if commit_first:
            offers = self.tracker.committable([tp])
            self._check_offers(offers)
            assert set(offers) <= {tp}
            self._kafka_commit(offers)
        self.tracker.revoke(tp)
        self.models.pop(tp, None)
        assert self.tracker.committable([tp]) == {}
        assert not self.tracker.finish(ref(tp, 0))

    @invariant()
    def group_offset_never_passes_an_unacked_record(self) -> None:
        """The central property, across assignments: every record below the group's committed offset
        had its outcome acked (invariant I1/I2 end to end; Vector #24215, Redpanda Connect #4010)."""
        for tp, committed in self.group.items():
            if committed is None:
                continue
            missing = [o for o in self.log[tp] if o < committed and o not in self.acked[tp]]
            assert not missing, f"{tp}: committed {committed} passes unfinished offsets {missing[:5]}"

    @invariant()
    def commit_offset_is_lowest_unfinished(self) -> None:
        """Every owned partition's commit offset is the lowest unfinished offset (I2)."""
        for tp, model in self.models.items():
            offset = self.tracker.commit_offset(tp)
            assert offset == model.expected()
            assert offset is None or all(offset <= pending for pending in model.unfinished)
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


# Long mode: 1,000,000 examples of at most 20 steps (CI: 200 of at most 50). Hypothesis' own engine is most
# of the cost and it grows with the steps: about 20 ms per 20-step example on this 2-core machine, so the
# long run takes hours, and 50 steps would more than double it. Twenty steps still cover fetch → finish out
# of order → revoke (after a commit, without one, or with one in flight) → reassign → re-fetch → late acks
# → commit, many times over; depth comes from the CI runs' 50 steps.
OffsetTrackerMachine.TestCase.settings = settings(
    max_examples=EXAMPLES(200),
    stateful_step_count=20 if LONG else 50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_offset_tracker_state_machine = OffsetTrackerMachine.TestCase


class _SkipsPastUnfinished(OffsetTracker):
    """A broken tracker: offers the highest finished offset + 1 when that is further (the Vector #24215 bug)."""

    __slots__ = ("_done",)

    def __init__(self) -> None:
        super().__init__()
        self._done: dict[TopicPartition, int] = {}

    def revoke(self, tp: TopicPartition) -> None:
        super().revoke(tp)
        self._done.pop(tp, None)

    def finish(self, ref: RecordRef) -> bool:
        done = super().finish(ref)
        if done:
            self._done[ref.tp] = max(self._done.get(ref.tp, -1), ref.offset + 1)
        return done

    def committable(self, partitions: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        offers = super().committable(partitions)
        return {tp: max(offset, self._done.get(tp, -1)) for tp, offset in offers.items()}


class _ForgetsRevoke(OffsetTracker):
    """A broken tracker: keeps offering a revoked partition's offsets (the Redpanda Connect #4010 bug)."""

    __slots__ = ()

    def revoke(self, tp: TopicPartition) -> None:
        pass


@pytest.mark.parametrize(
    ("broken", "message"),
    [(_SkipsPastUnfinished, "passes an unfinished record"), (_ForgetsRevoke, None)],
)
def test_state_machine_catches_broken_trackers(
    broken: type[OffsetTracker], message: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The machine is not vacuous: trackers with the classic commit bugs fail it (first failure, no shrinking)."""
    monkeypatch.setattr(f"{__name__}.OffsetTracker", broken)
    quick = settings(
        max_examples=300,
        stateful_step_count=30,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        report_multiple_bugs=False,
    )
    with pytest.raises(AssertionError, match=message):
        run_state_machine_as_test(OffsetTrackerMachine, settings=quick)
