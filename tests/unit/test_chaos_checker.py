"""The chaos checker catches each way of losing: every verdict on a hand-made run."""

from __future__ import annotations

from tests.chaos.checker import (
    Accepted,
    CommitSample,
    FaultRecord,
    InputRecord,
    OutcomeRecord,
    Targets,
    check,
    recovery_after,
)

T = "in"
TARGETS = Targets(recovery=17.0)


def _inputs(n: int = 4, key: bytes = b"u1") -> list[InputRecord]:
    return [InputRecord(T, 0, i, key, f"item-{i}".encode()) for i in range(n)]


def _outcomes(inputs: list[InputRecord], at: float = 10.0) -> list[OutcomeRecord]:
    return [OutcomeRecord(r.coord, True, at + r.offset) for r in inputs]


def _accepted(inputs: list[InputRecord]) -> list[Accepted]:
    return [Accepted(r.wire_key or b"", (r.offset, 0)) for r in inputs]


def _final(n: int, at: float = 100.0) -> list[CommitSample]:
    return [CommitSample(at, {(T, 0): n}, {(T, 0): n})]


def test_a_clean_run_passes_with_exact_counts() -> None:
    inputs = _inputs()
    poison = InputRecord(T, 0, 4, b"u1", None)
    outcomes = [*_outcomes(inputs), OutcomeRecord(poison.coord, False, 20.0)]
    report = check([*inputs, poison], outcomes, _accepted(inputs), _final(5), [], TARGETS)
    assert report.passed, report.table()
    assert (report.inputs, report.poison, report.delivered, report.failed) == (5, 1, 4, 1)
    assert (report.lost, report.outcome_duplicates, report.api_duplicates, report.over_commits) == (0, 0, 0, 0)


def test_an_input_without_outcome_is_lost_and_fails_the_run() -> None:
    inputs = _inputs()
    report = check(inputs, _outcomes(inputs)[:-1], _accepted(inputs), [], [], TARGETS)
    assert report.lost == 1 and not report.passed
    assert "(in, 0, 3)" in report.table().replace("'", "")


def test_outcome_duplicates_count_and_fail_only_when_targeted() -> None:
    inputs = _inputs()
    outcomes = [*_outcomes(inputs), OutcomeRecord(inputs[1].coord, True, 50.0)]
    assert check(inputs, outcomes, _accepted(inputs), [], [], TARGETS).outcome_duplicates == 1
    assert check(inputs, outcomes, _accepted(inputs), [], [], TARGETS).passed
    strict = Targets(recovery=17.0, max_outcome_duplicates=0)
    assert not check(inputs, outcomes, _accepted(inputs), [], [], strict).passed


def test_a_commit_seen_before_the_outcome_existed_is_an_over_commit() -> None:
    inputs = _inputs()  # outcomes at 10, 11, 12, 13
    early = CommitSample(11.5, {(T, 0): 3}, {(T, 0): 4})  # passes offset 2, whose outcome came at 12
    report = check(inputs, _outcomes(inputs), _accepted(inputs), [early, *_final(4)], [], TARGETS)
    assert report.over_commits == 1 and not report.passed


def test_a_commit_right_after_the_outcomes_is_fine() -> None:
    inputs = _inputs()
    timely = CommitSample(12.0, {(T, 0): 3}, {(T, 0): 4})
    assert check(inputs, _outcomes(inputs), _accepted(inputs), [timely], [], TARGETS).over_commits == 0


def test_committing_past_a_record_that_never_got_an_outcome_is_an_over_commit_and_a_loss() -> None:
    inputs = _inputs()
    outcomes = [o for o in _outcomes(inputs) if o.source[2] != 1]
    report = check(inputs, outcomes, _accepted(inputs), _final(4), [], TARGETS)
    assert (report.lost, report.over_commits) == (1, 1)


def test_items_reaching_the_api_out_of_key_order_are_reorderings() -> None:
    inputs = _inputs()
    accepted = [Accepted(b"item-0", (1, 0)), Accepted(b"item-2", (2, 0)), Accepted(b"item-1", (3, 0))]
    accepted.append(Accepted(b"item-3", (4, 0)))
    report = check(inputs, _outcomes(inputs), accepted, [], [], TARGETS)
    assert report.reorderings == 1 and not report.passed


def test_other_keys_do_not_constrain_each_other() -> None:
    a, b = _inputs(2, b"a"), [InputRecord(T, 0, 10 + i, b"b", f"b-{i}".encode()) for i in range(2)]
    accepted = [Accepted(b"b-0", (1, 0)), Accepted(b"b-1", (2, 0)), Accepted(b"item-0", (3, 0))]
    accepted.append(Accepted(b"item-1", (4, 0)))
    assert check([*a, *b], _outcomes([*a, *b]), accepted, [], [], TARGETS).reorderings == 0


def test_a_redelivered_earlier_item_is_not_a_reordering_but_an_api_duplicate() -> None:
    inputs = _inputs(2)
    accepted = [*_accepted(inputs), Accepted(b"item-0", (9, 0)), Accepted(b"item-1", (9, 1))]
    report = check(inputs, _outcomes(inputs), accepted, [], [], TARGETS)
    assert report.reorderings == 0 and report.api_duplicates == 2
    assert not report.passed  # no fault could explain them
    kill = FaultRecord("bridge-kill", 0.0, 1.0, 0.0, in_flight=2, may_duplicate=True, recovered_at=5.0)
    assert check(inputs, _outcomes(inputs), accepted, [], [kill], TARGETS).passed


def test_an_input_written_twice_may_be_accepted_twice() -> None:
    inputs = [*_inputs(1), InputRecord(T, 0, 1, b"u1", b"item-0")]  # a producer retry wrote it again
    accepted = [Accepted(b"item-0", (1, 0)), Accepted(b"item-0", (2, 0))]
    assert check(inputs, _outcomes(inputs), accepted, [], [], TARGETS).api_duplicates == 0


def test_api_items_no_input_maps_to_fail_the_run() -> None:
    inputs = _inputs(1)
    accepted = [*_accepted(inputs), Accepted(b"stranger", (5, 0))]
    report = check(inputs, _outcomes(inputs), accepted, [], [], TARGETS)
    assert report.unexpected_api_items == 1 and not report.passed


def test_recovery_waits_for_every_partition_with_work_left() -> None:
    a, b = (T, 0), (T, 1)
    samples = [
        CommitSample(1.0, {a: 5, b: 9}, {a: 10, b: 9}),  # only a has work left at the fault
        CommitSample(2.0, {a: 5, b: 9}, {a: 12, b: 12}),
        CommitSample(3.0, {a: 6, b: 9}, {a: 12, b: 12}),
    ]
    assert recovery_after(1.5, samples) == 3.0
    assert recovery_after(1.0, samples[:2]) is None
    idle = [CommitSample(1.0, {a: 10}, {a: 10}), CommitSample(2.0, {a: 10}, {a: 10})]
    assert recovery_after(1.5, idle) == 1.5


def test_slow_or_missing_recovery_fails_the_run() -> None:
    inputs = _inputs()
    slow = FaultRecord("api-outage", 0.0, 60.0, 60.0, recovered_at=90.0)
    never = FaultRecord("bridge-kill", 0.0, 2.0, 0.0)
    report = check(inputs, _outcomes(inputs), _accepted(inputs), [], [slow, never], TARGETS)
    assert len(report.failures) == 2 and "30.0 s" in report.failures[0]
