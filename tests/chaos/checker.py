"""The chaos checker: from what went in, what came out and what was committed, count every way to lose.

Pure functions over plain data, so each verdict is unit-tested on hand-made cases
(``tests/unit/test_chaos_checker.py``) and the runner only gathers the data:

* **inputs**: every record of the input topics (read back from Kafka at the end, so records a producer retry
  wrote twice are inputs too), with the wire key of the item the mapping makes of it (None for poison);
* **outcomes**: every result and failure record, by the source coordinates it names, with its Kafka timestamp;
* **accepted**: every item the sandbox accepted, in arrival order, by wire key;
* **commit samples**: the group's committed offsets, polled during the run, each with the wall time it was
  read at (after the broker answered, so every commit in it happened before that time);
* **faults**: what was injected when, and when the monitor saw progress again.

Verdicts:

* *lost*: an input without any outcome;
* *outcome duplicates*: outcomes beyond the first of an input;
* *API duplicates*: acceptances beyond the first of an item;
* *over-commits*: inputs a committed offset had passed before any outcome of theirs existed (the outcome's
  Kafka timestamp, taken by the bridge's producer before the ack, is later than the sample that saw the
  commit) or that never got an outcome at all;
* *reorderings*: within one (input topic, key), an input whose item was first accepted before the item of
  an earlier input of that key was;
* *recovery*: per fault, seconds from its reference moment until every partition that had work left then
  made progress again.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Accepted",
    "CommitSample",
    "FaultRecord",
    "InputRecord",
    "OutcomeRecord",
    "Report",
    "Targets",
    "check",
    "recovery_after",
]

TP = tuple[str, int]
Coord = tuple[str, int, int]


@dataclass(frozen=True, slots=True)
class InputRecord:
    """One record of an input topic; ``wire_key`` is None for a record the mapping rejects (poison)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    wire_key: bytes | None

    @property
    def coord(self) -> Coord:
        return (self.topic, self.partition, self.offset)


@dataclass(frozen=True, slots=True)
class OutcomeRecord:
    """A result (``delivered``) or failure record about input ``source``, written at ``timestamp`` (epoch s)."""

    source: Coord
    delivered: bool
    timestamp: float


@dataclass(frozen=True, slots=True)
class Accepted:
    """One item the sandbox accepted; ``position`` orders arrivals (request sequence, index in the request)."""

    wire_key: bytes
    position: tuple[int, int]


@dataclass(frozen=True, slots=True)
class CommitSample:
    """The group's committed offsets (next offset to read) as read at ``time`` (epoch s), and the input ends."""

    time: float
    committed: Mapping[TP, int]
    ends: Mapping[TP, int] = field(default_factory=dict)


@dataclass(slots=True)
class FaultRecord:
    """One injected fault: ``reference`` is the moment recovery is measured from (see RELIABILITY.md)."""

    name: str
    started: float
    ended: float
    reference: float
    in_flight: int = 0  # records consumed-or-pending but not committed when it started (duplicate budget)
    may_duplicate: bool = False  # can it make the API see an item twice (kills, cuts, dropped answers)?
    recovered_at: float | None = None
    detail: str = ""

    @property
    def recovery(self) -> float | None:
        return None if self.recovered_at is None else max(0.0, self.recovered_at - self.reference)


@dataclass(frozen=True, slots=True)
class Targets:
    """Pass/fail thresholds; ``recovery`` is 2 × session timeout + 5 s."""

    recovery: float
    max_lost: int = 0
    max_over_commits: int = 0
    max_reorderings: int = 0
    max_outcome_duplicates: int | None = None  # None: not a target (at-least-once outputs)


@dataclass(slots=True)
class Report:
    """Every figure the chaos run is judged on, with the examples behind each non-zero count."""

    inputs: int = 0
    poison: int = 0
    delivered: int = 0
    failed: int = 0
    lost: int = 0
    outcome_duplicates: int = 0
    api_duplicates: int = 0
    api_duplicate_budget: int = 0
    unexpected_api_items: int = 0
    over_commits: int = 0
    reorderings: int = 0
    commit_samples: int = 0
    faults: list[FaultRecord] = field(default_factory=list)
    examples: dict[str, list[str]] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    sections: list[str] = field(default_factory=list)  # extra Markdown (the soak's process table)

    @property
    def passed(self) -> bool:
        return not self.failures

    def example(self, kind: str, text: str, keep: int = 5) -> None:
        bucket = self.examples.setdefault(kind, [])
        if len(bucket) < keep:
            bucket.append(text)

    def rows(self) -> list[tuple[str, str]]:
        """The summary as (figure, value) rows."""
        worst = [f.recovery for f in self.faults if f.recovery is not None]
        return [
            ("input records", str(self.inputs)),
            ("  of which poison", str(self.poison)),
            ("delivered (result record)", str(self.delivered)),
            ("dead-lettered (failure record)", str(self.failed)),
            ("lost (no outcome)", str(self.lost)),
            ("outcome duplicates", str(self.outcome_duplicates)),
            ("API-side duplicates", f"{self.api_duplicates} (budget {self.api_duplicate_budget})"),
            ("API items not from the input", str(self.unexpected_api_items)),
            ("over-commits", f"{self.over_commits} (over {self.commit_samples} commit samples)"),
            ("reorderings within a key", str(self.reorderings)),
            ("faults injected", str(len(self.faults))),
            ("worst recovery", f"{max(worst):.1f} s" if worst else "-"),
        ]

    def table(self) -> str:
        """The summary and the per-fault recovery table, as Markdown."""
        lines = ["| figure | value |", "|---|---|"]
        lines += [f"| {name} | {value} |" for name, value in self.rows()]
        lines += ["", "| # | fault | at (s) | lasted (s) | recovery (s) | uncommitted at start | detail |"]
        lines += ["|---|---|---|---|---|---|---|"]
        base = min((f.started for f in self.faults), default=0.0)
        for i, fault in enumerate(self.faults, 1):
            rec = "not recovered" if fault.recovery is None else f"{fault.recovery:.1f}"
            lines.append(
                f"| {i} | {fault.name} | {fault.started - base:.0f} | {fault.ended - fault.started:.1f} | {rec} "
                f"| {fault.in_flight} | {fault.detail} |"
            )
        for section in self.sections:
            lines += ["", section]
        lines += ["", f"verdict: {'PASS' if self.passed else 'FAIL'}"]
        lines += [f"- {reason}" for reason in self.failures]
        for kind, texts in self.examples.items():
            lines += [f"- e.g. {kind}: {text}" for text in texts]
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        data = {name: value for name, value in self.rows()}
        data["passed"] = self.passed
        data["failures"] = list(self.failures)
        data["faults"] = [
            {
                "name": f.name,
                "started": f.started,
                "ended": f.ended,
                "reference": f.reference,
                "recovery": f.recovery,
                "in_flight": f.in_flight,
                "detail": f.detail,
            }
            for f in self.faults
        ]
        data["examples"] = self.examples
        return data


def check(
    inputs: Sequence[InputRecord],
    outcomes: Iterable[OutcomeRecord],
    accepted: Iterable[Accepted],
    samples: Sequence[CommitSample],
    faults: Sequence[FaultRecord],
    targets: Targets,
) -> Report:
    """Judge a chaos run; see the module docstring for each verdict."""
    report = Report(inputs=len(inputs), poison=sum(1 for r in inputs if r.wire_key is None))
    report.faults = list(faults)
    report.commit_samples = len(samples)

    first_outcome = _outcomes(inputs, outcomes, report)
    _api(inputs, accepted, report, faults)
    _over_commits(inputs, first_outcome, samples, report)
    _judge(report, targets)
    return report


def _outcomes(inputs: Sequence[InputRecord], outcomes: Iterable[OutcomeRecord], report: Report) -> dict[Coord, float]:
    known = {r.coord for r in inputs}
    first: dict[Coord, float] = {}
    kinds: dict[Coord, bool] = {}
    count: Counter[Coord] = Counter()
    for outcome in outcomes:
        if outcome.source not in known:
            report.example("outcome about no input", repr(outcome.source))
            continue
        count[outcome.source] += 1
        if outcome.source not in first or outcome.timestamp < first[outcome.source]:
            first[outcome.source] = outcome.timestamp
            kinds[outcome.source] = outcome.delivered
    for record in inputs:
        n = count.get(record.coord, 0)
        if n == 0:
            report.lost += 1
            report.example("lost", repr(record.coord))
        else:
            report.outcome_duplicates += n - 1
            if n > 1:
                report.example("outcome duplicate", f"{record.coord} x{n}")
    report.delivered = sum(1 for ok in kinds.values() if ok)
    report.failed = sum(1 for ok in kinds.values() if not ok)
    return first


def _api(
    inputs: Sequence[InputRecord], accepted: Iterable[Accepted], report: Report, faults: Sequence[FaultRecord]
) -> None:
    first_at: dict[bytes, tuple[int, int]] = {}
    times: Counter[bytes] = Counter()
    for item in accepted:
        times[item.wire_key] += 1
        if item.wire_key not in first_at or item.position < first_at[item.wire_key]:
            first_at[item.wire_key] = item.position
    # A producer retry can write one event twice (two inputs, one wire key): each copy may be accepted once.
    expected = Counter(r.wire_key for r in inputs if r.wire_key is not None)
    for key, n in times.items():
        if key not in expected:
            report.unexpected_api_items += n
            report.example("API item not from the input", key[:120].decode(errors="replace"))
        elif n > expected[key]:
            report.api_duplicates += n - expected[key]
    report.api_duplicate_budget = sum(f.in_flight for f in faults if f.may_duplicate)

    # Reordering: walk each (topic, key) in offset order; an accepted item must not precede the latest
    # first-arrival already seen for that key.
    by_key: dict[tuple[str, bytes | None], list[InputRecord]] = defaultdict(list)
    for record in inputs:
        by_key[(record.topic, record.key)].append(record)
    for (topic, key), records in by_key.items():
        records.sort(key=lambda r: (r.partition, r.offset))
        latest: tuple[int, int] | None = None
        latest_coord: Coord | None = None
        for record in records:
            if record.wire_key is None or record.wire_key not in first_at:
                continue
            position = first_at[record.wire_key]
            if latest is not None and position < latest:
                report.reorderings += 1
                report.example("reordering", f"{topic} key {key!r}: {record.coord} arrived before {latest_coord}")
            elif latest is None or position > latest:
                latest, latest_coord = position, record.coord


def _over_commits(
    inputs: Sequence[InputRecord], first_outcome: Mapping[Coord, float], samples: Sequence[CommitSample], report: Report
) -> None:
    # Per partition: offsets in order and, for each, the latest first-outcome time of it and all before it
    # (the earliest moment a commit past it was allowed).
    per_tp: dict[TP, list[InputRecord]] = defaultdict(list)
    for record in inputs:
        per_tp[(record.topic, record.partition)].append(record)
    allowed: dict[TP, tuple[list[int], list[float]]] = {}
    for tp, records in per_tp.items():
        records.sort(key=lambda r: r.offset)
        offsets: list[int] = []
        ready: list[float] = []
        running = -math.inf
        for record in records:
            running = max(running, first_outcome.get(record.coord, math.inf))
            offsets.append(record.offset)
            ready.append(running)
        allowed[tp] = (offsets, ready)

    bad: set[Coord] = set()
    for sample in samples:
        for tp, committed in sample.committed.items():
            if tp not in allowed:
                continue
            offsets, ready = allowed[tp]
            passed = bisect_left(offsets, committed)  # records with offset < committed
            if passed == 0 or ready[passed - 1] <= sample.time:
                continue
            # Find the records below the commit that had no outcome yet at sample time.
            for i in range(passed):
                coord = (tp[0], tp[1], offsets[i])
                if first_outcome.get(coord, math.inf) > sample.time and coord not in bad:
                    bad.add(coord)
                    report.example("over-commit", f"{coord} passed by commit {committed} seen at {sample.time:.3f}")
    report.over_commits = len(bad)


def _judge(report: Report, targets: Targets) -> None:
    if report.lost > targets.max_lost:
        report.failures.append(f"{report.lost} input records have no outcome (target {targets.max_lost})")
    if report.over_commits > targets.max_over_commits:
        report.failures.append(f"{report.over_commits} records were committed past before their outcome existed")
    if report.reorderings > targets.max_reorderings:
        report.failures.append(f"{report.reorderings} items reached the API out of their key's input order")
    if targets.max_outcome_duplicates is not None and report.outcome_duplicates > targets.max_outcome_duplicates:
        report.failures.append(
            f"{report.outcome_duplicates} duplicate outcome records (target {targets.max_outcome_duplicates})"
        )
    if report.api_duplicates > report.api_duplicate_budget:
        report.failures.append(
            f"{report.api_duplicates} API-side duplicates exceed the records in flight at the faults that can "
            f"cause them ({report.api_duplicate_budget})"
        )
    if report.unexpected_api_items:
        report.failures.append(f"the API accepted {report.unexpected_api_items} items no input maps to")
    for fault in report.faults:
        if fault.recovery is None:
            report.failures.append(f"{fault.name}: no recovery observed")
        elif fault.recovery > targets.recovery:
            report.failures.append(
                f"{fault.name}: recovered in {fault.recovery:.1f} s (target {targets.recovery:.0f} s)"
            )


def recovery_after(reference: float, samples: Sequence[CommitSample]) -> float | None:
    """When every partition with work left at ``reference`` had progressed (committed past its offset then).

    A partition "has work left" when its committed offset is below its end offset in the last sample taken at
    or before ``reference``. Returns the time of the first later sample where each such partition's committed
    offset is higher than at reference; ``reference`` itself when nothing had work left; None if never.
    """
    times = [s.time for s in samples]
    i = bisect_left(times, reference + 1e-9) - 1
    if i < 0:
        return None
    base = samples[i]
    pending = {tp: off for tp, off in base.committed.items() if off < base.ends.get(tp, off)}
    pending.update({tp: -1 for tp, end in base.ends.items() if tp not in base.committed and end > 0})
    if not pending:
        return reference
    for sample in samples[i + 1 :]:
        if all(sample.committed.get(tp, -1) > off for tp, off in pending.items()):
            return sample.time
    return None
