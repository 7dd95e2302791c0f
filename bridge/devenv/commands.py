"""``kard-bridge kafka start|stop|status|fetch``: a local real Apache Kafka (1 or 3 KRaft nodes) for development.

``start`` runs the brokers in the background (they outlive the command), returns once they are ready, writes
progress to stderr and prints the bootstrap servers alone on its last stdout line, so scripts can do
``BOOTSTRAP=$(kard-bridge kafka start | tail -n 1)``. ``start`` on a data dir that already holds a stopped
cluster starts it again with the same ports and data. ``stop`` and ``status`` find the processes through the
data dir's state file. ``fetch`` only downloads the jars (CI runs it before the tests), then warms the JVM
class archive with one throwaway broker so later starts are faster.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

from bridge.devenv.kafka import STATE_FILE, KafkaCluster
from bridge.devenv.kafka_admin import broker_ids
from bridge.devenv.kafka_dist import KafkaDevenvError, class_archive_path, fetch_kafka
from bridge.devenv.kafka_node import DEFAULT_JVM_OPTIONS

__all__ = ["register"]

_DEFAULT_DATA_DIR = ".kafka-data"


def register(subparsers: Any) -> None:
    """Add the ``kafka`` command and its ``start``/``stop``/``status``/``fetch`` subcommands."""
    kafka: argparse.ArgumentParser = subparsers.add_parser(
        "kafka", help="run a local Apache Kafka (KRaft, 1 or 3 nodes) for development and tests"
    )
    sub = kafka.add_subparsers(dest="kafka_command", metavar="SUBCOMMAND", required=True)

    start = sub.add_parser("start", help="start brokers in the background; print the bootstrap servers")
    start.add_argument(
        "--brokers", type=int, choices=(1, 3), default=None, help="number of nodes (default 1, or as before)"
    )
    _add_data_dir(start)
    start.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness (default 180)")
    start.set_defaults(func=_start)

    stop = sub.add_parser("stop", help="stop the brokers started in the data dir")
    _add_data_dir(stop)
    stop.set_defaults(func=_stop)

    status = sub.add_parser("status", help="show the nodes; exit 0 only if all run and answer clients")
    _add_data_dir(status)
    status.set_defaults(func=_status)

    fetch = sub.add_parser("fetch", help="download the pinned Kafka jars with Maven (no broker left running)")
    fetch.add_argument(
        "--no-warm-up", action="store_true", help="skip the throwaway broker run that builds the JVM class archive"
    )
    fetch.set_defaults(func=_fetch)


def _add_data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(_DEFAULT_DATA_DIR),
        help=f"directory for node data, logs and {STATE_FILE} (default ./{_DEFAULT_DATA_DIR})",
    )


def _progress(message: str) -> None:
    print(f"kafka: {message}", file=sys.stderr, flush=True)


def _quiet_client_logs() -> None:
    # Readiness probes meet closed ports and half-started brokers by design; aiokafka would log each one.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


def _start(args: argparse.Namespace) -> int:
    _quiet_client_logs()
    data_dir: Path = args.data_dir.resolve()
    try:
        if (data_dir / STATE_FILE).exists():
            cluster = KafkaCluster.load(data_dir, detached=True, progress=_progress)
            if args.brokers is not None and args.brokers != len(cluster.nodes):
                _progress(
                    f"{data_dir} holds a {len(cluster.nodes)}-node cluster; stop it and remove the directory "
                    f"to start {args.brokers} node(s)"
                )
                return 2
            _progress(f"using the existing cluster in {data_dir}")
        else:
            cluster = KafkaCluster.create(data_dir, brokers=args.brokers or 1, detached=True, progress=_progress)
        try:
            cluster.start(timeout=args.timeout)
        except BaseException:
            cluster.stop()
            raise
    except KafkaDevenvError as exc:
        _progress(f"failed: {exc}")
        return 1
    _progress(f"logs: {', '.join(str(node.log_path) for node in cluster.nodes)}")
    _progress(f"stop with: kard-bridge kafka stop --data-dir {data_dir}")
    print(cluster.bootstrap_servers, flush=True)
    return 0


def _stop(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    try:
        cluster = KafkaCluster.load(data_dir, detached=True)
    except KafkaDevenvError as exc:
        _progress(str(exc))
        return 1
    running = [node.node_id for node in cluster.running()]
    cluster.stop()
    _progress(f"stopped node(s) {running}" if running else "no node was running")
    return 0


def _status(args: argparse.Namespace) -> int:
    _quiet_client_logs()
    data_dir: Path = args.data_dir.resolve()
    try:
        cluster = KafkaCluster.load(data_dir, detached=True)
    except KafkaDevenvError as exc:
        _progress(str(exc))
        return 1
    healthy = True
    for node in cluster.nodes:
        pid = node.pid
        seen = broker_ids(node.bootstrap_server, timeout=5.0) if pid is not None else None
        state = "stopped" if pid is None else ("ready" if seen is not None else "not answering")
        healthy = healthy and state == "ready"
        print(f"node {node.node_id}  {state:<13}  pid {pid or '-':<8}  {node.bootstrap_server}  {node.log_path}")
    print(cluster.bootstrap_servers)
    return 0 if healthy else 1


def _fetch(args: argparse.Namespace) -> int:
    _quiet_client_logs()
    try:
        dist = fetch_kafka(progress=_progress)
        _progress(f"Kafka {dist.version} jars in {dist.libs_dir}")
        if not args.no_warm_up and not class_archive_path(dist, DEFAULT_JVM_OPTIONS).exists():
            _progress("warming up: one throwaway broker run builds the JVM class archive (faster starts)")
            with tempfile.TemporaryDirectory(prefix="kafka-warm-up-") as tmp, KafkaCluster.create(tmp, dist=dist):
                pass
    except KafkaDevenvError as exc:
        _progress(f"failed: {exc}")
        return 1
    print(dist.libs_dir, flush=True)
    return 0
