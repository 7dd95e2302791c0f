"""Which dead-lettered records a replay run takes: the filters, the loop guard, and their parsing.

Pure and synchronous on purpose (STYLE §10): :func:`select` reads only a failure record's headers
(and its key), so every rule is unit-tested without Kafka, and a ``--dry-run`` decides exactly what
the real run would. Relative times (``--since 2h``) are resolved against a ``now`` passed in by the
caller, never read from a clock here.

Order of the checks: a record whose ``kard-bridge.*`` headers cannot be read is ``INVALID``; else a
record that misses any filter is ``SKIP`` (filters combine with AND; the values of one repeated
option combine with OR); else a record already replayed ``max_replays`` times is ``BLOCK`` (the loop
guard); else ``REPLAY``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from pydantic import ValidationError

from bridge.events.outcomes import FailureHeaders, ReasonClass
from bridge.records import Header

__all__ = [
    "DEFAULT_MAX_REPLAYS",
    "Action",
    "Filters",
    "OffsetRange",
    "TimeField",
    "Verdict",
    "parse_http_status",
    "parse_offset_range",
    "parse_time",
    "select",
]

DEFAULT_MAX_REPLAYS = 3

TimeField = Literal["failure", "source"]


class Action(enum.StrEnum):
    """What a replay run does with one failure record."""

    REPLAY = "replay"  # republish it
    SKIP = "skip"  # a filter left it out
    BLOCK = "block"  # the loop guard: replayed too often already; reported, not republished
    INVALID = "invalid"  # not a readable failure record (its kard-bridge.* headers are missing or malformed)


@dataclass(frozen=True, slots=True)
class OffsetRange:
    """Source offsets ``first..last``, both inclusive; ``None`` leaves that end open."""

    first: int | None = None
    last: int | None = None

    def __contains__(self, offset: object) -> bool:
        if not isinstance(offset, int):
            return False
        return (self.first is None or offset >= self.first) and (self.last is None or offset <= self.last)

    def __str__(self) -> str:
        return f"{'' if self.first is None else self.first}-{'' if self.last is None else self.last}"


@dataclass(frozen=True, slots=True)
class Filters:
    """The selection of one replay run. Empty collections and ``None`` mean "no filter".

    ``http_statuses`` holds exact codes (``"409"``) or classes (``"4xx"``). ``since`` is inclusive,
    ``until`` exclusive; they compare the failure time (``kard-bridge.last-failure-at``) or, with
    ``time_field="source"``, the input record's timestamp (``kard-bridge.source-timestamp``).
    ``partitions`` and ``offsets`` are the *source* partition and offset named in the headers.
    ``max_replays`` is the loop guard: a record replayed that many times is blocked.
    """

    reason_classes: frozenset[ReasonClass] = frozenset()
    reasons: frozenset[str] = frozenset()
    http_statuses: frozenset[str] = frozenset()
    since: datetime | None = None
    until: datetime | None = None
    time_field: TimeField = "failure"
    partitions: frozenset[int] = frozenset()
    offsets: OffsetRange | None = None
    keys: frozenset[bytes] = frozenset()
    max_replays: int = DEFAULT_MAX_REPLAYS

    def describe(self) -> list[str]:
        """One ``name=value`` text per active filter (for the summary); empty when everything is selected."""
        parts: list[str] = []
        if self.reason_classes:
            parts.append("reason-class=" + ",".join(sorted(self.reason_classes)))
        if self.reasons:
            parts.append("reason=" + ",".join(sorted(self.reasons)))
        if self.http_statuses:
            parts.append("http-status=" + ",".join(sorted(self.http_statuses)))
        if self.since is not None:
            parts.append(f"since={self.since.isoformat()} ({self.time_field} time)")
        if self.until is not None:
            parts.append(f"until={self.until.isoformat()} ({self.time_field} time)")
        if self.partitions:
            parts.append("partition=" + ",".join(map(str, sorted(self.partitions))))
        if self.offsets is not None:
            parts.append(f"offset-range={self.offsets}")
        if self.keys:
            parts.append(f"key=({len(self.keys)} value{'s' if len(self.keys) > 1 else ''})")
        return parts


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision about one record; ``failure`` is None only for ``INVALID``.

    ``why`` names the first filter that left the record out (``SKIP``), the loop-guard limit
    (``BLOCK``) or the unreadable headers (``INVALID``); it is empty for ``REPLAY``.
    """

    action: Action
    failure: FailureHeaders | None
    replay_count: int
    why: str = ""


def select(headers: Sequence[Header], filters: Filters, *, key: bytes | None = None) -> Verdict:
    """Decide what a replay run does with the failure record carrying ``headers`` (and ``key``).

    Never raises: unreadable headers give an ``INVALID`` verdict naming the offending header names
    (never their values).
    """
    try:
        failure = FailureHeaders.from_headers(headers)
    except ValidationError as exc:
        names = sorted({str(err["loc"][0]) if err["loc"] else "?" for err in exc.errors()})
        return Verdict(Action.INVALID, None, 0, "missing or malformed: " + ", ".join(names))
    count = failure.replay_count
    missed = _first_miss(failure, filters, key)
    if missed:
        return Verdict(Action.SKIP, failure, count, missed)
    if count >= filters.max_replays:
        return Verdict(Action.BLOCK, failure, count, f"replayed {count} times, limit {filters.max_replays}")
    return Verdict(Action.REPLAY, failure, count)


def _first_miss(failure: FailureHeaders, f: Filters, key: bytes | None) -> str:
    """The name of the first filter ``failure`` does not pass, or ``""``."""
    if f.reason_classes and failure.reason_class not in f.reason_classes:
        return "reason-class"
    if f.reasons and failure.reason not in f.reasons:
        return "reason"
    if f.http_statuses and not _status_matches(failure.http_status, f.http_statuses):
        return "http-status"
    if f.since is not None or f.until is not None:
        moment = _moment(failure, f.time_field)
        if moment is None or (f.since is not None and moment < f.since) or (f.until is not None and moment >= f.until):
            return "since/until"
    if f.partitions and failure.source_partition not in f.partitions:
        return "partition"
    if f.offsets is not None and failure.source_offset not in f.offsets:
        return "offset-range"
    if f.keys and key not in f.keys:
        return "key"
    return ""


def _status_matches(status: int | None, patterns: Iterable[str]) -> bool:
    if status is None:
        return False
    text = str(status)
    return any(text == p or (p.endswith("xx") and text[0] == p[0]) for p in patterns)


def _moment(failure: FailureHeaders, field: TimeField) -> datetime | None:
    if field == "failure":
        return failure.last_failure_at
    if failure.source_timestamp is None:
        return None
    return datetime.fromtimestamp(failure.source_timestamp / 1000, UTC)


# -- parsing of option values (used by the CLI; raise ValueError with a readable message) ------------------

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_STATUS = re.compile(r"^[1-5](?:[0-9]{2}|xx)$")


def parse_time(text: str, now: datetime) -> datetime:
    """An aware UTC datetime from RFC 3339 / ISO 8601 (naive means UTC; a date means its midnight)
    or from a duration ago: ``90s``, ``30m``, ``2h``, ``7d``, ``1w`` before ``now``.

    Raises:
        ValueError: neither form.
    """
    value = text.strip()
    relative = _RELATIVE.match(value.lower())
    if relative:
        return now - timedelta(seconds=float(relative.group(1)) * _UNITS[relative.group(2)])
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use e.g. 2026-05-01T10:00:00Z, 2026-05-01 or 2h)") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def parse_offset_range(text: str) -> OffsetRange:
    """``A-B`` (inclusive), ``A-`` (from A), ``-B`` (up to B) or ``A`` (just A).

    Raises:
        ValueError: not of that shape, or A > B.
    """
    value = text.strip()
    match = re.fullmatch(r"(\d*)\s*-\s*(\d*)|(\d+)", value)
    if not match or value in ("", "-"):
        raise ValueError(f"not an offset range: {text!r} (use A-B, A-, -B or A)")
    if match.group(3) is not None:
        single = int(match.group(3))
        return OffsetRange(single, single)
    first = int(match.group(1)) if match.group(1) else None
    last = int(match.group(2)) if match.group(2) else None
    if first is not None and last is not None and first > last:
        raise ValueError(f"offset range {text!r} ends before it starts")
    return OffsetRange(first, last)


def parse_http_status(text: str) -> str:
    """An HTTP status (``409``) or class (``4xx``), normalised to lower case.

    Raises:
        ValueError: anything else.
    """
    value = text.strip().lower()
    if not _STATUS.match(value):
        raise ValueError(f"not an HTTP status or class: {text!r} (use e.g. 400 or 4xx)")
    return value
