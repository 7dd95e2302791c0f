"""``kard-bridge replay``: argument parsing and the exit code; the work is in :mod:`bridge.replay.replayer`.

Exit codes: 0 the run finished (blocked and unreadable records are reported, not errors), 1 it stopped
on an error (a copy not acked, a commit or fetch failed, a target topic missing), 2 bad arguments or
configuration (or the DLQ topic does not exist), 130 interrupted (what was done is committed).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError, OutputError
from bridge.events.outcomes import ReasonClass
from bridge.replay.selection import (
    DEFAULT_MAX_REPLAYS,
    Filters,
    parse_http_status,
    parse_offset_range,
    parse_time,
)

if TYPE_CHECKING:
    from bridge.replay.replayer import ReplayOptions

__all__ = ["default_group", "options_from_args", "register"]

_EPILOG = """\
Reads the failures topic with its own consumer group up to the end offsets seen at start, so an
interrupted replay resumes where it stopped; each record's offset is committed only once its copy
is acknowledged. Skipped records are committed too: to replay another selection of records this
group has passed, use another --group. Repeated options (or comma-separated values) mean "any of";
different options must all match. Example:

  kard-bridge replay --input kard.card-transactions --reason-class rejected --http-status 4xx --dry-run
"""


def register(subparsers: Any) -> None:
    """Add the ``replay`` subcommand."""
    p = subparsers.add_parser(
        "replay",
        help="republish dead-lettered records to their source topic (filters, dry run, loop guard)",
        description="Replay failure records from a DLQ topic: republish their original key, value and headers.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    where = p.add_argument_group("what to read and where to write")
    source = where.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-topic", metavar="TOPIC", help="the failures topic to read, e.g. orders.dlq")
    source.add_argument("--input", metavar="TOPIC", help="an input topic: read its failures topic (<input>.dlq)")
    where.add_argument("--group", help="the replay's consumer group (default: kard-bridge-replay-<failures topic>)")
    where.add_argument("--to", metavar="TOPIC", help="republish to this topic instead of each record's source topic")
    where.add_argument("--config", help="optional TOML settings file (Kafka connection as for `run`)")

    sel = p.add_argument_group("filters (on the kard-bridge.* failure headers)")
    sel.add_argument(
        "--reason-class",
        action="append",
        default=[],
        metavar="CLASS",
        help="one of: " + ", ".join(c.value for c in ReasonClass),
    )
    sel.add_argument("--reason", action="append", default=[], help="a reason code, e.g. http_409, malformed_json")
    sel.add_argument("--http-status", action="append", default=[], metavar="STATUS", help="e.g. 409 or 4xx")
    sel.add_argument("--since", metavar="TIME", help="failed at or after TIME (RFC 3339, a date, or 2h/3d ago)")
    sel.add_argument("--until", metavar="TIME", help="failed before TIME")
    sel.add_argument(
        "--time-field",
        choices=("failure", "source"),
        default="failure",
        help="compare --since/--until with the failure time (default) or the input record's timestamp",
    )
    sel.add_argument("--partition", action="append", default=[], metavar="N", help="source partition")
    sel.add_argument("--offset-range", metavar="A-B", help="source offsets A to B inclusive (A-, -B or A also work)")
    sel.add_argument("--key", action="append", default=[], help="the record key (UTF-8 text)")
    sel.add_argument("--max", type=_positive_int, metavar="N", help="replay at most N records, then stop")

    run = p.add_argument_group("how")
    run.add_argument("--dry-run", action="store_true", help="list what would be replayed; write and commit nothing")
    run.add_argument("--json", action="store_true", help="records and the summary as JSON lines")
    run.add_argument(
        "--max-replays",
        type=_non_negative_int,
        default=DEFAULT_MAX_REPLAYS,
        metavar="N",
        help=f"loop guard: records already replayed N times are reported, not replayed (default {DEFAULT_MAX_REPLAYS})",
    )
    run.add_argument("--rate", type=_positive_float, metavar="N", help="replay at most N records per second")
    run.add_argument(
        "--log-level",
        default="WARNING",
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="structured logs on stderr (default WARNING)",
    )
    p.set_defaults(func=_run)


def default_group(topic: str) -> str:
    """The replay group of a failures topic when ``--group`` is not given."""
    return f"kard-bridge-replay-{topic}"


def options_from_args(args: argparse.Namespace, settings: Settings, now: datetime) -> ReplayOptions:
    """The :class:`~bridge.replay.replayer.ReplayOptions` of the parsed arguments.

    Raises:
        ValueError: a filter value is malformed (the message says which and how).
    """
    from bridge.replay.replayer import ReplayOptions  # lazy: aiokafka loads only when replay runs

    topic = args.from_topic or settings.bridge.dlq_topic(args.input)
    classes = _split(args.reason_class)
    unknown = [c for c in classes if c not in {r.value for r in ReasonClass}]
    if unknown:
        raise ValueError(f"unknown --reason-class {', '.join(unknown)} (one of {', '.join(ReasonClass)})")
    try:
        partitions = frozenset(int(p) for p in _split(args.partition))
    except ValueError:
        raise ValueError("--partition takes partition numbers") from None
    filters = Filters(
        reason_classes=frozenset(ReasonClass(c) for c in classes),
        reasons=frozenset(_split(args.reason)),
        http_statuses=frozenset(parse_http_status(s) for s in _split(args.http_status)),
        since=parse_time(args.since, now) if args.since else None,
        until=parse_time(args.until, now) if args.until else None,
        time_field=args.time_field,
        partitions=partitions,
        offsets=parse_offset_range(args.offset_range) if args.offset_range else None,
        keys=frozenset(k.encode("utf-8") for k in args.key),
        max_replays=args.max_replays,
    )
    return ReplayOptions(
        topic=topic,
        group_id=args.group or default_group(topic),
        filters=filters,
        to_topic=args.to,
        dry_run=args.dry_run,
        max_records=args.max,
        rate=args.rate,
    )


def _run(args: argparse.Namespace) -> int:
    from bridge.observability.logging import configure_logging
    from bridge.replay.replayer import run_replay
    from bridge.replay.report import Reporter

    try:
        settings = load_settings(args.config)
        options = options_from_args(args, settings, datetime.now(UTC))
    except (ConfigError, ValueError) as exc:
        sys.stderr.write(f"kard-bridge replay: {exc}\n")
        return 2
    configure_logging(args.log_level, settings.bridge.log_format, stream=sys.stderr)
    reporter = Reporter(
        sys.stdout,
        sys.stderr,
        filters=options.filters,
        target=options.to_topic,
        dry_run=options.dry_run,
        json_lines=args.json,
    )
    try:
        stats = asyncio.run(run_replay(settings, options, reporter))
    except ConfigError as exc:
        sys.stderr.write(f"kard-bridge replay: {exc}\n")
        return 2
    except OutputError as exc:
        sys.stderr.write(f"kard-bridge replay: {exc}\n")
        return 1
    return stats.exit_code


def _split(values: Sequence[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be a positive number")
    return value
