"""What a replay run shows: the record table or JSON lines, the progress bar or lines, the summary.

Records go to stdout: a dry run lists every record it would replay or the loop guard blocks (and
unreadable ones); a real run lists the blocked and unreadable ones (they need a person), and with
``--json`` every replayed one too. Skipped records are only counted. Progress goes to stderr, so
stdout stays a clean table or JSON stream: a redrawn bar with counts, rate and ETA when stderr is a
terminal, a plain line every ``interval`` seconds otherwise (container logs). Nothing here prints
record values or failure messages (they may hold card data); keys are shown, as text or base64.
The formatting functions are pure; :class:`Reporter` only decides when to write.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Mapping
from typing import Any, TextIO

import orjson

from bridge.events.common import format_utc
from bridge.events.outcomes import encode_key
from bridge.kafka.dlq_reader import PartitionSpan
from bridge.records import SourceRecord
from bridge.replay.replayer import ReplayStats
from bridge.replay.selection import Action, Filters, Verdict

__all__ = [
    "Reporter",
    "format_duration",
    "progress_text",
    "record_json",
    "record_row",
    "summary_json",
    "summary_lines",
    "table_header",
]

_COLUMNS = (("DLQ", 12), ("SOURCE", 34), ("KEY", 20), ("CLASS", 17), ("REASON", 18), ("HTTP", 4), ("FAILED AT", 20))
_ACTION_LABEL = {Action.REPLAY: "replay", Action.BLOCK: "blocked", Action.INVALID: "invalid", Action.SKIP: "skip"}
_SOURCE_TOPIC = "each record's source topic"
_STOPPED = {
    "end": "reached the end offsets seen at start",
    "max": "replayed the --max number of records",
    "interrupted": "interrupted (the work done so far is committed)",
    "error": "stopped by an error",
}


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def table_header() -> str:
    """The column titles of :func:`record_row`."""
    return " ".join(title.ljust(width) for title, width in _COLUMNS) + " REPLAYS ACTION"


def record_row(record: SourceRecord, verdict: Verdict, target: str | None) -> str:
    """One table line: where the failure record is, where it came from, why it failed, what happens."""
    f = verdict.failure
    key, _ = encode_key(record.key)
    cells = (
        f"{record.partition}:{record.offset}",
        f"{f.source_topic}:{f.source_partition}:{f.source_offset}" if f else "?",
        "-" if key is None else key,
        f.reason_class.value if f else "?",
        f.reason if f else "?",
        str(f.http_status) if f and f.http_status else "-",
        format_utc(f.last_failure_at.replace(microsecond=0)) if f else "?",
    )
    line = " ".join(_fit(cell, width).ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    action = _ACTION_LABEL[verdict.action]
    if verdict.action is Action.REPLAY and target and f and target != f.source_topic:
        action += f" → {target}"
    elif verdict.why and verdict.action is not Action.REPLAY:
        action += f" ({verdict.why})"
    return f"{line} {verdict.replay_count:<7} {action}"


def record_json(record: SourceRecord, verdict: Verdict, target: str | None) -> dict[str, Any]:
    """One JSON line's object (``--json``); values and failure messages are left out on purpose."""
    f = verdict.failure
    key, key_encoding = encode_key(record.key)
    doc: dict[str, Any] = {
        "action": verdict.action.value,
        "dlq": {"topic": record.topic, "partition": record.partition, "offset": record.offset},
        "key": key,
        "key_encoding": key_encoding,
        "replay_count": verdict.replay_count,
        "target": target,
        "why": verdict.why or None,
    }
    if f is not None:
        doc.update(
            source={
                "topic": f.source_topic,
                "partition": f.source_partition,
                "offset": f.source_offset,
                "timestamp_ms": f.source_timestamp,
            },
            reason_class=f.reason_class.value,
            reason=f.reason,
            http_status=f.http_status,
            attempts=f.attempts,
            last_failure_at=format_utc(f.last_failure_at),
        )
    return doc


def format_duration(seconds: float) -> str:
    """``h:mm:ss`` (``--:--:--`` when unknown)."""
    if seconds < 0 or seconds != seconds or seconds > 99 * 3600:
        return "--:--:--"
    whole = int(seconds + 0.5)
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def progress_text(stats: ReplayStats, *, width: int | None = None) -> str:
    """The progress line; with ``width`` a bar is drawn and the line fits the terminal."""
    total, done, elapsed = stats.total, stats.examined, stats.elapsed
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else -1.0
    verb = "would replay" if stats.dry_run else "replayed"
    counts = (
        f"{verb} {stats.replayed:,}, skipped {stats.skipped:,}, blocked {stats.blocked:,}, "
        f"invalid {stats.invalid:,}, errors {stats.errors:,}"
    )
    if width is None:
        return (
            f"replay {stats.topic}: {done:,}/{total:,} examined, {counts}, {rate:,.0f}/s, "
            f"elapsed {format_duration(elapsed)}, ETA {format_duration(eta)}"
        )
    fraction = done / total if total else 1.0
    bar_width = max(10, min(30, width // 4))
    filled = int(bar_width * min(1.0, fraction))
    line = (  # most useful first: a narrow terminal cuts the counts, not the ETA
        f"[{'#' * filled}{'.' * (bar_width - filled)}] {fraction:4.0%} {done:,}/{total:,} "
        f"{rate:,.0f}/s ETA {format_duration(eta)} | {counts}"
    )
    return _fit(line, width - 1)


def summary_lines(stats: ReplayStats, filters: Filters, target: str | None) -> list[str]:
    """The human summary printed when the run ends."""
    mode = "dry run, nothing written or committed" if stats.dry_run else f"replay id {stats.replay_id}"
    lines = [
        f"kard-bridge replay of {stats.topic} ({mode})",
        f"  group                  {stats.group_id}",
        f"  target                 {target or _SOURCE_TOPIC}",
        f"  filters                {'; '.join(filters.describe()) or 'none'}",
        f"  loop guard             {filters.max_replays} replays",
        f"  examined               {stats.examined:,} of {stats.total:,}",
        f"  {'would replay' if stats.dry_run else 'replayed':23}{stats.replayed:,}",
        f"  skipped by filter      {stats.skipped:,}",
        f"  blocked by loop guard  {stats.blocked:,}",
        f"  invalid (unreadable)   {stats.invalid:,}",
        f"  errors                 {stats.errors:,}",
        f"  finished               {_STOPPED.get(stats.stopped or 'end', stats.stopped or '')} "
        f"after {format_duration(stats.elapsed)}",
    ]
    if stats.error:
        lines.append(f"  error                  {stats.error}")
    if stats.skipped and not stats.dry_run:
        lines.append("  note: skipped records are behind the group's position now; use another --group to revisit them")
    return lines


def summary_json(stats: ReplayStats, filters: Filters, target: str | None) -> dict[str, Any]:
    """The summary as the last JSON line (``--json``)."""
    return {
        "summary": {
            "topic": stats.topic,
            "group": stats.group_id,
            "replay_id": None if stats.dry_run else stats.replay_id,
            "dry_run": stats.dry_run,
            "target": target,
            "filters": filters.describe(),
            "max_replays": filters.max_replays,
            "total": stats.total,
            "examined": stats.examined,
            "replayed": stats.replayed,
            "skipped": stats.skipped,
            "blocked": stats.blocked,
            "invalid": stats.invalid,
            "errors": stats.errors,
            "stopped": stats.stopped,
            "error": stats.error,
            "committed": {str(p): o for p, o in sorted(stats.committed.items())},
            "elapsed_s": round(stats.elapsed, 3),
        }
    }


class Reporter:
    """The CLI's :class:`~bridge.replay.replayer.ReplayObserver`: records to ``out``, progress to ``err``."""

    def __init__(
        self,
        out: TextIO,
        err: TextIO,
        *,
        filters: Filters,
        target: str | None,
        dry_run: bool = False,
        json_lines: bool = False,
        bar: bool | None = None,
        interval: float = 10.0,
    ) -> None:
        self._out, self._err = out, err
        self._filters, self._target = filters, target
        self._dry_run = dry_run
        self._json = json_lines
        self._bar = err.isatty() if bar is None else bar
        self._interval = interval if not self._bar else 0.2
        self._last_progress = 0.0
        self._header_done = False
        self._bar_shown = False

    def started(self, stats: ReplayStats, spans: Mapping[int, PartitionSpan]) -> None:
        self._last_progress = time.monotonic()  # the first periodic line comes one interval in
        parts = ", ".join(f"{p}:{s.start}-{s.end}" for p, s in sorted(spans.items()))
        self._status(f"replay {stats.topic}: {stats.total:,} records to examine (partition:from-to {parts})")

    def record(self, record: SourceRecord, verdict: Verdict, target: str | None) -> None:
        listed = verdict.action in (Action.BLOCK, Action.INVALID) or (
            verdict.action is Action.REPLAY and (self._dry_run or self._json)
        )
        if not listed:
            return
        if self._json:
            self._write(orjson.dumps(record_json(record, verdict, target)).decode() + "\n")
            return
        if not self._header_done:
            self._header_done = True
            self._write(table_header() + "\n")
        self._write(record_row(record, verdict, target) + "\n")

    def progress(self, stats: ReplayStats) -> None:
        now = time.monotonic()
        if now - self._last_progress >= self._interval:
            self._last_progress = now
            self._draw(stats)

    def finished(self, stats: ReplayStats) -> None:
        self._draw(stats)
        if self._bar_shown:
            self._err.write("\n")
            self._bar_shown = False
        self._err.flush()
        if self._json:
            self._out.write(orjson.dumps(summary_json(stats, self._filters, self._target)).decode() + "\n")
        else:
            if self._header_done:
                self._out.write("\n")
            self._out.write("\n".join(summary_lines(stats, self._filters, self._target)) + "\n")
        self._out.flush()

    def _draw(self, stats: ReplayStats) -> None:
        if self._bar:
            width = shutil.get_terminal_size((100, 24)).columns
            self._err.write("\r\x1b[K" + progress_text(stats, width=width))
            self._bar_shown = True
        else:
            self._err.write(progress_text(stats) + "\n")
        self._err.flush()

    def _status(self, line: str) -> None:
        self._clear_bar()
        self._err.write(line + "\n")
        self._err.flush()

    def _write(self, text: str) -> None:
        self._clear_bar()
        self._out.write(text)
        self._out.flush()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self._err.write("\r\x1b[K")
            self._bar_shown = False
