"""Replay selection (filters, loop guard), option parsing, provenance headers, pacing and the commit order.

Everything here is pure or runs the replay loop over small in-memory doubles: no broker, no sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import io
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import load_settings
from bridge.events.outcomes import HEADER_REPLAY_COUNT, FailureHeaders, ReasonClass
from bridge.kafka.dlq_reader import PartitionSpan
from bridge.records import Header, SourceRecord
from bridge.replay import Action, Filters, OffsetRange, select
from bridge.replay.cli import default_group, options_from_args, register
from bridge.replay.replayer import (
    HEADER_REPLAY_ID,
    HEADER_REPLAYED_FROM,
    Pacer,
    Replayer,
    ReplayOptions,
    ReplayStats,
    republish_headers,
)
from bridge.replay.report import Reporter, format_duration, progress_text, record_json, record_row
from bridge.replay.selection import Verdict, parse_http_status, parse_offset_range, parse_time

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
SOURCE_TS = int(datetime(2026, 4, 30, 8, 0, 0, tzinfo=UTC).timestamp() * 1000)


def failure_headers(**changes: Any) -> tuple[Header, ...]:
    """A readable failure record's headers (a rejected 409 of source t:1:42, failed at NOW), with changes."""
    fields: dict[str, Any] = {
        "reason": "http_409",
        "reason_class": ReasonClass.REJECTED,
        "message": "the API refused the item",
        "http_status": 409,
        "attempts": 1,
        "first_failure_at": NOW,
        "last_failure_at": NOW,
        "source_topic": "t",
        "source_partition": 1,
        "source_offset": 42,
        "source_timestamp": SOURCE_TS,
        "bridge_version": "0.1.0",
        "replay_count": 0,
    }
    fields.update(changes)
    return (("trace-id", b"abc"), *FailureHeaders.model_validate(fields).to_headers())


# -- select: filters ------------------------------------------------------------------------------------


def test_no_filters_selects_every_readable_failure() -> None:
    """Without filters a readable failure record is replayed and its parsed headers come along."""
    verdict = select(failure_headers(), Filters())
    assert verdict.action is Action.REPLAY
    assert verdict.failure is not None and verdict.failure.source_offset == 42
    assert verdict.replay_count == 0 and verdict.why == ""


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (Filters(reason_classes=frozenset({ReasonClass.REJECTED})), Action.REPLAY),
        (Filters(reason_classes=frozenset({ReasonClass.DECODE, ReasonClass.SCHEMA})), Action.SKIP),
        (Filters(reasons=frozenset({"http_409", "malformed_json"})), Action.REPLAY),
        (Filters(reasons=frozenset({"http_400"})), Action.SKIP),
        (Filters(http_statuses=frozenset({"409"})), Action.REPLAY),
        (Filters(http_statuses=frozenset({"4xx"})), Action.REPLAY),
        (Filters(http_statuses=frozenset({"5xx", "400"})), Action.SKIP),
        (Filters(partitions=frozenset({0, 1})), Action.REPLAY),
        (Filters(partitions=frozenset({2})), Action.SKIP),
        (Filters(offsets=OffsetRange(40, 42)), Action.REPLAY),
        (Filters(offsets=OffsetRange(43, None)), Action.SKIP),
        (Filters(offsets=OffsetRange(None, 41)), Action.SKIP),
        (Filters(keys=frozenset({b"user-1", b"user-2"})), Action.REPLAY),
        (Filters(keys=frozenset({b"user-3"})), Action.SKIP),
    ],
)
def test_each_filter_selects_on_its_header(filters: Filters, expected: Action) -> None:
    """Each filter compares its header (or the key); several values of one filter mean any of them."""
    assert select(failure_headers(), filters, key=b"user-1").action is expected


def test_filters_combine_with_and_and_name_the_first_miss() -> None:
    """All filters must match; the verdict names the filter that left the record out."""
    both = Filters(reason_classes=frozenset({ReasonClass.REJECTED}), partitions=frozenset({1}))
    assert select(failure_headers(), both).action is Action.REPLAY
    one_off = Filters(reason_classes=frozenset({ReasonClass.REJECTED}), partitions=frozenset({0}))
    verdict = select(failure_headers(), one_off)
    assert (verdict.action, verdict.why) == (Action.SKIP, "partition")


def test_http_status_filter_skips_failures_without_a_status() -> None:
    """A decode failure has no HTTP status, so any --http-status filter skips it."""
    headers = failure_headers(reason="malformed_json", reason_class=ReasonClass.DECODE, http_status=None)
    assert select(headers, Filters(http_statuses=frozenset({"4xx"}))).action is Action.SKIP
    assert select(headers, Filters(reason_classes=frozenset({ReasonClass.DECODE}))).action is Action.REPLAY


def test_key_filter_needs_the_key_and_matches_bytes_exactly() -> None:
    """The key filter matches the record key byte for byte; a record without a key never matches it."""
    filters = Filters(keys=frozenset({b"user-1"}))
    assert select(failure_headers(), filters, key=b"user-1").action is Action.REPLAY
    assert select(failure_headers(), filters, key=b"user-10").action is Action.SKIP
    assert select(failure_headers(), filters, key=None).action is Action.SKIP


def test_time_window_on_failure_time_is_inclusive_then_exclusive() -> None:
    """--since includes the failure time itself, --until excludes it."""
    headers = failure_headers()
    assert select(headers, Filters(since=NOW)).action is Action.REPLAY
    assert select(headers, Filters(until=NOW)).action is Action.SKIP
    assert select(headers, Filters(since=NOW - timedelta(hours=1), until=NOW + timedelta(seconds=1))).action is (
        Action.REPLAY
    )
    assert select(headers, Filters(since=NOW + timedelta(seconds=1))).action is Action.SKIP


def test_time_window_on_source_time_uses_the_input_timestamp() -> None:
    """With time_field=source the window applies to the input record's timestamp; without one it skips."""
    source_time = datetime.fromtimestamp(SOURCE_TS / 1000, UTC)
    window = Filters(since=source_time, until=source_time + timedelta(minutes=1), time_field="source")
    assert select(failure_headers(), window).action is Action.REPLAY
    assert select(failure_headers(), Filters(since=NOW - timedelta(minutes=1))).action is Action.REPLAY
    assert select(failure_headers(), Filters(since=NOW - timedelta(minutes=1), time_field="source")).action is (
        Action.SKIP
    )
    assert select(failure_headers(source_timestamp=None), window).action is Action.SKIP


# -- select: loop guard and unreadable records ----------------------------------------------------------


def test_loop_guard_blocks_at_the_limit_and_not_below() -> None:
    """A record replayed max_replays times is blocked; one replay fewer is still replayed."""
    filters = Filters(max_replays=3)
    below = select(failure_headers(replay_count=2), filters)
    at = select(failure_headers(replay_count=3), filters)
    assert (below.action, below.replay_count) == (Action.REPLAY, 2)
    assert (at.action, at.replay_count) == (Action.BLOCK, 3)
    assert "limit 3" in at.why
    assert select(failure_headers(), Filters(max_replays=0)).action is Action.BLOCK


def test_loop_guard_reads_the_last_replay_count() -> None:
    """A replayed record that failed again carries two counts; the last one is the current one."""
    headers = (*failure_headers(replay_count=3), (HEADER_REPLAY_COUNT, b"1"))
    assert select(headers, Filters(max_replays=3)).action is Action.REPLAY
    assert select((*failure_headers(replay_count=1), (HEADER_REPLAY_COUNT, b"3")), Filters()).action is Action.BLOCK


def test_filtered_records_are_skipped_before_the_loop_guard_looks() -> None:
    """A record that misses a filter counts as skipped even when the loop guard would block it."""
    verdict = select(failure_headers(replay_count=9), Filters(partitions=frozenset({0})))
    assert verdict.action is Action.SKIP


def test_unreadable_headers_are_invalid_and_named_without_values() -> None:
    """Missing or malformed failure headers give INVALID naming the headers, never their values."""
    verdict = select((("kard-bridge.reason", b"Not A Code 4111111111111111"),), Filters())
    assert verdict.action is Action.INVALID and verdict.failure is None
    assert "kard-bridge.reason" in verdict.why and "kard-bridge.source-topic" in verdict.why
    assert "4111" not in verdict.why
    assert select((), Filters()).action is Action.INVALID


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["kard-bridge.reason", "kard-bridge.replay-count", "x", "kard-bridge.http-status"]),
            st.binary(max_size=12),
        ),
        max_size=6,
    )
)
def test_select_never_raises(extra: list[Header]) -> None:
    """Whatever the headers hold, select returns a verdict instead of raising."""
    verdict = select((*failure_headers(), *extra), Filters(http_statuses=frozenset({"4xx"})))
    assert isinstance(verdict.action, Action)


# -- option values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-04-30T10:00:00Z", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30T12:00:00+02:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30T10:00:00", datetime(2026, 4, 30, 10, tzinfo=UTC)),
        ("2026-04-30", datetime(2026, 4, 30, tzinfo=UTC)),
        ("2h", NOW - timedelta(hours=2)),
        ("90s", NOW - timedelta(seconds=90)),
        ("1.5d", NOW - timedelta(hours=36)),
        ("1w", NOW - timedelta(days=7)),
    ],
)
def test_parse_time_accepts_timestamps_dates_and_durations_ago(text: str, expected: datetime) -> None:
    """Times are RFC 3339 (naive means UTC), dates (midnight UTC) or a duration before now."""
    assert parse_time(text, NOW) == expected


def test_parse_time_rejects_other_text() -> None:
    """Anything else is a ValueError that shows the accepted forms."""
    with pytest.raises(ValueError, match="2h"):
        parse_time("yesterday", NOW)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10-20", OffsetRange(10, 20)),
        ("10-", OffsetRange(10, None)),
        ("-20", OffsetRange(None, 20)),
        ("7", OffsetRange(7, 7)),
        (" 3 - 4 ", OffsetRange(3, 4)),
    ],
)
def test_parse_offset_range_forms(text: str, expected: OffsetRange) -> None:
    """A-B, A-, -B and A parse to inclusive ranges with open ends."""
    assert parse_offset_range(text) == expected


@pytest.mark.parametrize("text", ["", "-", "20-10", "a-b", "1-2-3"])
def test_parse_offset_range_rejects_bad_ranges(text: str) -> None:
    """Empty, reversed or non-numeric ranges are rejected."""
    with pytest.raises(ValueError, match="range"):
        parse_offset_range(text)


def test_parse_http_status_takes_codes_and_classes() -> None:
    """Exact codes and NXX classes are accepted (case-insensitive); other text is rejected."""
    assert parse_http_status("409") == "409"
    assert parse_http_status("4XX") == "4xx"
    for bad in ("40", "4x", "600", "abc"):
        with pytest.raises(ValueError, match="HTTP status"):
            parse_http_status(bad)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    return parser.parse_args(["replay", *argv])


def test_cli_options_name_the_dlq_group_and_filters() -> None:
    """--input X reads X's failures topic with the default group; repeated and comma-separated values add up."""
    settings = load_settings(bridge={"dlq_suffix": ".dlq"})
    args = _parse(
        [
            "--input",
            "orders",
            "--reason-class",
            "rejected,schema",
            "--http-status",
            "4xx",
            "--http-status",
            "503",
            "--partition",
            "0,2",
            "--offset-range",
            "5-9",
            "--key",
            "a,b",
            "--since",
            "2h",
            "--max",
            "3",
            "--max-replays",
            "5",
            "--rate",
            "20",
            "--dry-run",
        ]
    )
    options = options_from_args(args, settings, NOW)
    assert options.topic == "orders.dlq" and options.group_id == default_group("orders.dlq")
    assert options.group_id == "kard-bridge-replay-orders.dlq"
    f = options.filters
    assert f.reason_classes == {ReasonClass.REJECTED, ReasonClass.SCHEMA}
    assert f.http_statuses == {"4xx", "503"} and f.partitions == {0, 2}
    assert f.offsets == OffsetRange(5, 9) and f.keys == {b"a,b"} and f.since == NOW - timedelta(hours=2)
    assert (options.max_records, f.max_replays, options.rate, options.dry_run) == (3, 5, 20.0, True)
    explicit = options_from_args(_parse(["--from-topic", "x.dlq", "--group", "g", "--to", "y"]), settings, NOW)
    assert (explicit.topic, explicit.group_id, explicit.to_topic) == ("x.dlq", "g", "y")


def test_cli_rejects_unknown_reason_class() -> None:
    """An unknown reason class is a readable error listing the valid ones."""
    with pytest.raises(ValueError, match="retries_exhausted"):
        options_from_args(_parse(["--input", "o", "--reason-class", "nope"]), load_settings(), NOW)


# -- provenance headers and pacing ----------------------------------------------------------------------


def test_republished_headers_keep_the_input_headers_and_add_provenance() -> None:
    """Failure and earlier provenance headers go; the input's own headers stay in order; provenance is added."""
    earlier = ((HEADER_REPLAY_ID, b"old"), (HEADER_REPLAYED_FROM, b"t.dlq:0:1"), ("z", b"\x00"))
    headers = republish_headers(
        (*failure_headers(replay_count=1), *earlier), replay_id="rid", replay_count=2, replayed_from="t.dlq:3:7"
    )
    assert headers == (
        ("trace-id", b"abc"),
        ("z", b"\x00"),
        (HEADER_REPLAY_ID, b"rid"),
        (HEADER_REPLAY_COUNT, b"2"),
        (HEADER_REPLAYED_FROM, b"t.dlq:3:7"),
    )


def test_pacer_spaces_sends_at_the_rate_without_bursts() -> None:
    """At 4 records/s sends are 0.25 s apart; after an idle gap the next send goes at once."""
    pacer = Pacer(4.0)
    assert [pacer.delay(10.0) for _ in range(3)] == [0.0, 0.25, 0.5]
    assert pacer.delay(20.0) == 0.0
    assert Pacer(None).delay(0.0) == 0.0
    with pytest.raises(ValueError, match="positive"):
        Pacer(0)


# -- the replay loop over in-memory doubles -------------------------------------------------------------


class MemorySource:
    """A failures topic in memory: records per partition, committed offsets recorded in call order."""

    def __init__(self, records: Sequence[SourceRecord], *, topics: Sequence[str] = ("t",)) -> None:
        self.records = list(records)
        self.commits: list[dict[int, int]] = []
        self.topics = set(topics)
        self._next = 0

    @property
    def finished(self) -> bool:
        return self._next >= len(self.records)

    async def open(self) -> dict[int, PartitionSpan]:
        ends: dict[int, int] = {}
        for r in self.records:
            ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
        return {p: PartitionSpan(0, end) for p, end in ends.items()}

    async def fetch(self, timeout: float, max_records: int) -> list[SourceRecord]:
        batch = self.records[self._next : self._next + max_records]
        self._next += len(batch)
        return batch

    async def commit(self, offsets: Mapping[int, int]) -> None:
        self.commits.append(dict(offsets))

    async def topic_exists(self, name: str) -> bool:
        return name in self.topics


class AckingProducer:
    """Records sends; each send's ack future fails when its value is in ``refuse``, else succeeds."""

    def __init__(self, refuse: frozenset[bytes] = frozenset()) -> None:
        self.sent: list[tuple[str, bytes | None, bytes | None, tuple[Header, ...]]] = []
        self.refuse = refuse

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None = None, headers: Sequence[Header] = ()
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key, tuple(headers)))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if value in self.refuse:
            future.set_exception(ConnectionError("not acked"))
        else:
            future.set_result(None)
        return future


class CollectingObserver:
    """Keeps every verdict the replayer reports."""

    def __init__(self) -> None:
        self.verdicts: list[tuple[int, int, Action]] = []

    def started(self, stats: ReplayStats, spans: Mapping[int, PartitionSpan]) -> None:
        """Nothing to do at start."""

    def record(self, record: SourceRecord, verdict: Verdict, target: str | None) -> None:
        self.verdicts.append((record.partition, record.offset, verdict.action))

    def progress(self, stats: ReplayStats) -> None:
        """Progress is not checked here."""

    def finished(self, stats: ReplayStats) -> None:
        """Nothing to do at the end."""


def dlq_record(partition: int, offset: int, **changes: Any) -> SourceRecord:
    """A failure record at ``t.dlq:partition:offset`` whose value names its coordinates."""
    headers = failure_headers(source_partition=partition, source_offset=offset, **changes)
    return SourceRecord("t.dlq", partition, offset, b"k", f"v{partition}:{offset}".encode(), headers, 0)


async def test_replayer_commits_after_acks_and_counts_every_outcome() -> None:
    """Replayed, skipped, blocked and invalid records are all committed once the chunk's copies are acked."""
    records = [
        dlq_record(0, 0),
        dlq_record(0, 1, reason_class=ReasonClass.DECODE, reason="malformed_json", http_status=None),
        dlq_record(0, 2, replay_count=3),
        SourceRecord("t.dlq", 1, 0, None, b"junk", (), 0),
        dlq_record(1, 1, replay_count=1),
    ]
    source, producer = MemorySource(records), AckingProducer()
    options = ReplayOptions("t.dlq", "g", Filters(reason_classes=frozenset({ReasonClass.REJECTED})), replay_id="r")
    stats = await Replayer(options, source, producer, CollectingObserver()).run()
    assert (stats.replayed, stats.skipped, stats.blocked, stats.invalid, stats.errors) == (2, 1, 1, 1, 0)
    assert stats.stopped == "end" and stats.exit_code == 0
    assert source.commits == [{0: 3, 1: 2}]
    assert [(topic, value) for topic, value, _, _ in producer.sent] == [("t", b"v0:0"), ("t", b"v1:1")]
    assert dict(producer.sent[1][3])[HEADER_REPLAY_COUNT] == b"2"


async def test_replayer_stops_at_the_first_unacked_copy_and_commits_before_it() -> None:
    """When a copy is not acked its partition is committed only up to that record, and the run fails."""
    records = [dlq_record(0, i) for i in range(4)] + [dlq_record(1, 0)]
    source, producer = MemorySource(records), AckingProducer(refuse=frozenset({b"v0:2"}))
    stats = await Replayer(ReplayOptions("t.dlq", "g"), source, producer, CollectingObserver()).run()
    assert source.commits == [{0: 2, 1: 1}]
    assert stats.errors == 1 and stats.stopped == "error" and stats.exit_code == 1
    assert stats.error is not None and "ConnectionError" in stats.error


async def test_replayer_max_stops_before_the_next_selected_record() -> None:
    """--max 2 replays two records and commits nothing past the second one."""
    records = [dlq_record(0, i) for i in range(5)]
    source, producer = MemorySource(records), AckingProducer()
    stats = await Replayer(ReplayOptions("t.dlq", "g", max_records=2), source, producer, CollectingObserver()).run()
    assert (stats.replayed, stats.stopped, source.commits) == (2, "max", [{0: 2}])


async def test_replayer_dry_run_neither_sends_nor_commits() -> None:
    """A dry run decides every record but produces nothing and commits nothing."""
    source, observer = MemorySource([dlq_record(0, 0), dlq_record(0, 1, replay_count=5)]), CollectingObserver()
    stats = await Replayer(ReplayOptions("t.dlq", "g", dry_run=True), source, None, observer).run()
    assert (stats.replayed, stats.blocked, source.commits) == (1, 1, [])
    assert observer.verdicts == [(0, 0, Action.REPLAY), (0, 1, Action.BLOCK)]


async def test_replayer_stops_when_the_target_topic_is_missing() -> None:
    """A copy bound for a topic that does not exist is not sent; the run stops with an error."""
    source, producer = MemorySource([dlq_record(0, 0)], topics=()), AckingProducer()
    stats = await Replayer(ReplayOptions("t.dlq", "g"), source, producer, CollectingObserver()).run()
    assert producer.sent == [] and source.commits == [] and stats.stopped == "error"
    assert stats.error is not None and "--to" in stats.error


# -- rendering -----------------------------------------------------------------------------------------


def test_table_and_json_rows_show_coordinates_not_values() -> None:
    """A listed record shows where it is and why it failed; its value and failure message are left out."""
    record = SourceRecord("t.dlq", 2, 17, b"user-9", b"4111111111111111", failure_headers(), 0)
    verdict = select(record.headers, Filters(), key=record.key)
    row = record_row(record, verdict, "t")
    assert "2:17" in row and "t:1:42" in row and "user-9" in row and "http_409" in row and "replay" in row
    doc = record_json(record, verdict, "other")
    assert doc["source"] == {"topic": "t", "partition": 1, "offset": 42, "timestamp_ms": SOURCE_TS}
    assert doc["target"] == "other" and doc["action"] == "replay"
    assert "4111" not in row + str(doc) and "refused" not in row + str(doc)


def test_progress_text_has_counts_and_eta_and_fits_the_width() -> None:
    """The progress line carries the counts and an ETA; the bar variant fits the terminal width."""
    stats = ReplayStats("r", "t.dlq", "g", False, total=200, examined=50, replayed=40, skipped=10)
    plain = progress_text(stats)
    assert "50/200 examined" in plain and "replayed 40" in plain and "ETA" in plain
    bar = progress_text(stats, width=80)
    assert bar.startswith("[") and len(bar) < 80
    assert format_duration(3725) == "1:02:05" and format_duration(-1) == "--:--:--"


def test_reporter_lists_blocked_records_and_prints_a_summary() -> None:
    """In a real run only blocked and invalid records are listed on stdout; progress goes to stderr."""
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(out, err, filters=Filters(), target=None, bar=False)
    stats = ReplayStats("r", "t.dlq", "g", False, total=2)
    reporter.started(stats, {0: PartitionSpan(0, 2)})
    replayed, blocked = dlq_record(0, 0), dlq_record(0, 1, replay_count=3)
    reporter.record(replayed, select(replayed.headers, Filters()), "t")
    reporter.record(blocked, select(blocked.headers, Filters()), None)
    stats.examined, stats.replayed, stats.blocked, stats.stopped = 2, 1, 1, "end"
    reporter.finished(stats)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("DLQ") and "0:1" in lines[1] and "blocked" in lines[1]
    assert not any(line.startswith("0:0 ") for line in lines)
    assert any("blocked by loop guard  1" in line for line in lines)
    assert "2/2 examined" in err.getvalue()
