"""``kard-bridge run``: start one bridge instance (a consumer group member) until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
from typing import Any

import orjson

from bridge.config import load_settings
from bridge.errors import ConfigError

__all__ = ["register", "tune_gc"]


def register(subparsers: Any) -> None:
    """Add the ``run`` subcommand."""
    parser = subparsers.add_parser(
        "run",
        help="run the bridge (configuration from KAFKA_*, KARD_*, BRIDGE_* environment variables)",
        description="Consume the input topics, forward to the Kard API, publish results and failures, commit.",
    )
    parser.add_argument("--config", help="optional TOML file with [kafka], [kard], [bridge] tables")
    parser.add_argument(
        "--print-config", action="store_true", help="print the effective configuration (secrets masked) and exit"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"kard-bridge: {exc}", file=sys.stderr)
        return 2
    if args.print_config:
        print(orjson.dumps(settings.masked(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return 0
    from bridge.app import run_bridge
    from bridge.observability.logging import configure_logging

    configure_logging(settings.bridge.log_level, settings.bridge.log_format)
    tune_gc(settings.bridge.gc_threshold)
    return _asyncio_run(run_bridge(settings), settings.bridge.event_loop)


def tune_gc(gen0_threshold: int) -> None:
    """Make cycle collection rare: the hot path allocates short-lived, acyclic objects (dicts, bytes, tuples)
    that reference counting frees, yet each 700 allocations would trigger a young-generation scan.

    ``gc.freeze()`` first moves everything imported so far (modules, classes, pydantic schemas) to a
    permanent generation that later full collections skip.
    """
    gc.freeze()
    if gen0_threshold > 0:
        # Only the young generation: older generations keep Python's ratios, so cyclic garbage (aiokafka's
        # dropped fetch results are cycles) is still collected within a few seconds at full speed.
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)


def _asyncio_run(coro: Any, event_loop: str) -> int:
    """Run on the chosen event loop; ``uvloop`` falls back to the default loop when it is not installed.

    The default is the standard loop: under network cuts, uvloop's closed transports raise errors aiokafka's
    heartbeat and httpcore's connection setup do not handle (see ``event_loop`` in docs/configuration.md).
    """
    if event_loop == "uvloop":
        try:
            import uvloop
        except ImportError:  # pragma: no cover - uvloop is a default dependency on Linux
            pass
        else:
            return int(uvloop.run(coro))
    result: int = asyncio.run(coro)
    return result
