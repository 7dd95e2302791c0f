"""``kard-bridge topics apply|list``: create or check the input, results and DLQ topics of the catalogue."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from bridge.config import Settings, load_settings
from bridge.errors import ConfigError
from bridge.events.common import EventKind
from bridge.topics import Catalogue, load_catalogue

__all__ = ["catalogue_for", "register"]


def register(subparsers: Any) -> None:
    """Add the ``topics`` subcommand group."""
    parser = subparsers.add_parser("topics", help="create or check the Kafka topics of the catalogue")
    sub = parser.add_subparsers(dest="topics_command", metavar="ACTION", required=True)
    apply = sub.add_parser("apply", help="create missing topics, report drift (idempotent)")
    apply.add_argument("--config", help="optional TOML settings file")
    apply.add_argument("--catalogue", help="topic catalogue TOML (default: the packaged topics/catalogue.toml)")
    apply.add_argument("--replication-factor", type=int, help="override every topic's replication factor")
    apply.add_argument("--partitions", type=int, help="override every topic's partition count")
    apply.add_argument("--fix", action="store_true", help="add partitions / set configs where they drifted")
    apply.set_defaults(func=_apply)
    listing = sub.add_parser("list", help="print the topics the catalogue defines")
    listing.add_argument("--config", help="optional TOML settings file")
    listing.add_argument("--catalogue", help="topic catalogue TOML")
    listing.set_defaults(func=_list)


def catalogue_for(
    settings: Settings,
    path: str | None = None,
    *,
    partitions: int | None = None,
    replication_factor: int | None = None,
) -> Catalogue:
    """The catalogue with the topic names and output suffixes the bridge settings choose."""
    b = settings.bridge
    return load_catalogue(
        path,
        input_names={
            EventKind.CARD_TRANSACTION: b.transactions_topic,
            EventKind.ELIGIBILITY: b.eligibility_topic,
            EventKind.ATTRIBUTION: b.attributions_topic,
        },
        results_suffix=b.results_suffix,
        dlq_suffix=b.dlq_suffix,
        partitions=partitions,
        replication_factor=replication_factor,
    )


def _apply(args: argparse.Namespace) -> int:
    from bridge.kafka.admin import apply_topics

    try:
        settings = load_settings(args.config)
        catalogue = catalogue_for(
            settings, args.catalogue, partitions=args.partitions, replication_factor=args.replication_factor
        )
    except ConfigError as exc:
        print(f"kard-bridge: {exc}", file=sys.stderr)
        return 2
    reports = asyncio.run(apply_topics(settings.kafka.common_kwargs(), catalogue.all_topics(), fix=args.fix))
    drifted = 0
    for report in reports:
        print(f"{report.status:8} {report.name}")
        for line in report.drift:
            print(f"         - {line}")
        drifted += report.status == "drift"
    return 1 if drifted else 0


def _list(args: argparse.Namespace) -> int:
    try:
        catalogue = catalogue_for(load_settings(args.config), args.catalogue)
    except ConfigError as exc:
        print(f"kard-bridge: {exc}", file=sys.stderr)
        return 2
    for spec in catalogue.all_topics():
        configs = ", ".join(f"{k}={v}" for k, v in sorted(spec.config.items()))
        print(f"{spec.name}  partitions={spec.partitions} rf={spec.replication_factor}  {configs}")
    return 0
