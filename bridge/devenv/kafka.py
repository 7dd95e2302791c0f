"""Run real Apache Kafka brokers as local JVM processes: one node, or a 3-node KRaft cluster, on free ports.

Why: the bridge's integration and fault tests need a real broker (group rebalances, ``acks=all``, leader
fail-over) and developers may have Java but no Docker. Every node runs in KRaft *combined* mode (broker and
controller in one JVM, see ``kafka_node.py``); with 3 nodes the static controller quorum is all three, so any
single node can die. ``kafka-state.json`` in the data dir records ports, directories and pids, so another
process (``kard-bridge kafka stop``) can stop what ``kafka start`` left running. A cluster is ready only when
every node meant to run answers a real client metadata request listing exactly those nodes: no fixed sleeps.
Unless ``detached``, a tiny watchdog process stops the JVMs if their owner dies without cleaning up, so a
killed pytest leaks no brokers.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, NamedTuple

from bridge.devenv.kafka_admin import PartitionState, broker_ids, create_topics, describe_partitions
from bridge.devenv.kafka_dist import KafkaDevenvError, KafkaDist, fetch_kafka
from bridge.devenv.kafka_node import DEFAULT_JVM_OPTIONS, PROXIED_LISTENER, KafkaNode, broker_settings, tail_file
from bridge.devenv.kafka_security import LISTENER, SSL_LISTENER, SecurityConfig, make_test_pki

__all__ = ["STATE_FILE", "KafkaCluster", "ProxiedRoute"]

STATE_FILE: Final = "kafka-state.json"
_PROXIED_ADVERTISED: Final = "PROXIED (advertised)"
_Progress = Callable[[str], None]


def _free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 now (all sockets are held together so the kernel hands out distinct ports)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


class ProxiedRoute(NamedTuple):
    """Where a node's proxy must listen (the advertised PROXIED port) and what it forwards to (the bound one)."""

    advertised_port: int
    bind_port: int


def _new_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding, never starting with ``-``."""
    while True:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


# Runs as `python -c` (no bridge import needed): when its parent (the owner) dies, it stops the nodes in the
# state file that are still running, SIGTERM then SIGKILL. KafkaCluster.close() terminates it first.
_WATCHDOG: Final = r"""
import json, os, signal, sys, time
owner, state_path = int(sys.argv[1]), sys.argv[2]
signal.signal(signal.SIGINT, signal.SIG_IGN)
while os.getppid() == owner:
    time.sleep(0.5)
def alive(node):
    try:
        with open("/proc/%d/cmdline" % node["pid"], "rb") as f:
            return (node["directory"] + "/server.properties").encode() in f.read()
    except (OSError, TypeError):
        return False
try:
    with open(state_path) as f:
        nodes = [n for n in json.load(f)["nodes"] if n.get("pid")]
except (OSError, ValueError, KeyError):
    sys.exit(0)
for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
    for node in nodes:
        if alive(node):
            os.kill(node["pid"], sig)
    deadline = time.monotonic() + wait
    while any(alive(n) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
"""


class KafkaCluster:
    """1..n local Kafka nodes sharing one cluster id and controller quorum; also a context manager.

    Build one with ``create()`` (fresh) or ``load()`` (from a data dir another process started).
    ``with KafkaCluster.create(path, brokers=3) as cluster:`` starts every node, waits until ready, and
    stops them all on exit. Node control for fault tests: ``stop(i)``, ``kill(i)``, ``start(i)``,
    ``restart(i)``, ``wait_ready()``. Methods block; from async code wrap them in ``asyncio.to_thread``.
    """

    def __init__(
        self,
        data_dir: Path,
        nodes: Sequence[KafkaNode],
        *,
        cluster_id: str,
        dist: KafkaDist,
        jvm_options: Sequence[str],
        detached: bool = False,
        progress: _Progress | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.nodes: tuple[KafkaNode, ...] = tuple(nodes)
        self.cluster_id = cluster_id
        self.dist = dist
        self._jvm_options = tuple(jvm_options)
        self._detached = detached
        self._progress = progress
        self._watchdog: subprocess.Popen[bytes] | None = None
        self._wanted = {node.node_id for node in self.nodes if node.is_running()}

    @classmethod
    def create(
        cls,
        data_dir: Path | str,
        brokers: int = 1,
        *,
        dist: KafkaDist | None = None,
        jvm_options: Sequence[str] = DEFAULT_JVM_OPTIONS,
        settings: Mapping[str, str] | None = None,
        security: SecurityConfig | None = None,
        proxied_listener: bool = False,
        detached: bool = False,
        progress: _Progress | None = None,
    ) -> KafkaCluster:
        """Lay out a new cluster of ``brokers`` nodes on free ports under ``data_dir`` (not started yet).

        Args:
            data_dir: created if missing; must not already hold a cluster's state file.
            brokers: number of nodes; all are brokers and controller voters.
            dist: the Kafka jars; fetched (or taken from the cache) when None.
            jvm_options: heap and JIT flags for every JVM.
            settings: broker settings overriding ``broker_settings(brokers)``.
            security: when given, every node also gets the listeners in ``security.listeners`` (by default
                SASL_SSL with SCRAM users and plain SSL), each with a server certificate from a test CA made now
                in ``<data_dir>/tls``; see ``sasl_ssl_bootstrap_servers``, ``ssl_bootstrap_servers``, ``ca_file``.
            proxied_listener: when True, every node also gets a PLAINTEXT listener named ``PROXIED`` bound on one
                free port and advertising another free port, where the caller runs a ``FaultProxy`` forwarding
                to the bound one (see ``proxied_routes``); clients bootstrapped on ``proxied_bootstrap_servers``
                then reach every broker only through those proxies. Nothing listens on an advertised port until
                the caller's proxy does.
            detached: True when the nodes should outlive this process (no watchdog).
            progress: called with human-readable progress lines.

        Raises:
            KafkaDevenvError: the data dir is taken, or Java/Maven are missing.
        """
        if brokers < 1:
            raise ValueError("brokers must be at least 1")
        root = Path(data_dir).resolve()
        if (root / STATE_FILE).exists():
            raise KafkaDevenvError(f"{root} already holds a Kafka cluster ({STATE_FILE}): load or remove it")
        dist = dist or fetch_kafka(progress=progress)
        extra = () if security is None else security.listeners
        if proxied_listener:  # two ports: the one the broker binds, the one it advertises (the proxy's)
            extra += (PROXIED_LISTENER, _PROXIED_ADVERTISED)
        per_node = 2 + len(extra)
        ports = _free_ports(per_node * brokers)  # per node: broker, controller, then one per ``extra`` in order

        def extra_port(i: int, listener: str) -> int | None:
            if listener not in extra:
                return None
            return ports[per_node * i + 2 + extra.index(listener)]

        nodes = [
            KafkaNode(
                i,
                directory=root / f"node-{i}",
                broker_port=ports[per_node * i],
                controller_port=ports[per_node * i + 1],
                sasl_ssl_port=extra_port(i, LISTENER),
                ssl_port=extra_port(i, SSL_LISTENER),
                proxied_port=extra_port(i, PROXIED_LISTENER),
                proxied_advertised_port=extra_port(i, _PROXIED_ADVERTISED),
                dist=dist,
                jvm_options=jvm_options,
                build_class_archive=i == 0 and not detached,
            )
            for i in range(brokers)
        ]
        secure: dict[str, str] = {}
        format_args: list[str] = []
        if security is not None:
            secure = security.broker_settings(make_test_pki(root / "tls"))
            format_args = security.scram_format_args()
        voters = ",".join(f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in nodes)
        for node in nodes:
            node.write_config(voters, {**broker_settings(brokers), **secure, **(settings or {})}, format_args)
        cluster = cls(
            root,
            nodes,
            cluster_id=_new_cluster_id(),
            dist=dist,
            jvm_options=jvm_options,
            detached=detached,
            progress=progress,
        )
        cluster._save_state()
        return cluster

    @classmethod
    def load(cls, data_dir: Path | str, *, detached: bool = True, progress: _Progress | None = None) -> KafkaCluster:
        """Rebuild the cluster recorded in ``data_dir``'s state file (nodes may be running or not).

        Raises:
            KafkaDevenvError: there is no readable state file.
        """
        root = Path(data_dir).resolve()
        try:
            state = json.loads((root / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise KafkaDevenvError(f"no Kafka cluster state in {root} ({STATE_FILE}): {exc}") from exc
        dist = KafkaDist(state["kafka_version"], Path(state["libs_dir"]), state["java"])
        if not dist.libs_dir.is_dir():  # the cache was cleared since
            dist = fetch_kafka(dist.version, progress=progress)
        nodes = [
            KafkaNode(
                n["node_id"],
                directory=Path(n["directory"]),
                broker_port=n["broker_port"],
                controller_port=n["controller_port"],
                sasl_ssl_port=n.get("sasl_ssl_port"),
                ssl_port=n.get("ssl_port"),
                proxied_port=n.get("proxied_port"),
                proxied_advertised_port=n.get("proxied_advertised_port"),
                dist=dist,
                jvm_options=state["jvm_options"],
                pid=n["pid"],
            )
            for n in state["nodes"]
        ]
        return cls(
            root,
            nodes,
            cluster_id=state["cluster_id"],
            dist=dist,
            jvm_options=state["jvm_options"],
            detached=detached,
            progress=progress,
        )

    @property
    def state_path(self) -> Path:
        """The JSON state file (pids, ports, directories)."""
        return self.data_dir / STATE_FILE

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:p1,127.0.0.1:p2,...`` for every node, running or not (clients skip dead ones)."""
        return ",".join(node.bootstrap_server for node in self.nodes)

    @property
    def sasl_ssl_bootstrap_servers(self) -> str:
        """The SASL_SSL listeners (``127.0.0.1:port,...``) of a cluster created with ``security``.

        Raises:
            KafkaDevenvError: the cluster has no SASL_SSL listener.
        """
        return self._listener_servers([node.sasl_ssl_server for node in self.nodes], "SASL_SSL")

    @property
    def ssl_bootstrap_servers(self) -> str:
        """The plain SSL (TLS, no SASL) listeners (``127.0.0.1:port,...``) of a cluster created with ``security``.

        Raises:
            KafkaDevenvError: the cluster has no SSL listener.
        """
        return self._listener_servers([node.ssl_server for node in self.nodes], "SSL")

    @property
    def proxied_bootstrap_servers(self) -> str:
        """The advertised PROXIED addresses (``127.0.0.1:port,...``, where the proxies listen) of a cluster
        created with ``proxied_listener=True``; bootstrap the clients whose network may be cut with these.

        Raises:
            KafkaDevenvError: the cluster has no PROXIED listener.
        """
        return self._listener_servers([node.proxied_server for node in self.nodes], PROXIED_LISTENER)

    @property
    def proxied_routes(self) -> list[ProxiedRoute]:
        """Per node (in node id order): ``(advertised_port, bind_port)``: run one proxy listening on
        ``advertised_port`` and forwarding to ``127.0.0.1:bind_port``, e.g. ``ProxyGroup.for_routes(routes)``.

        Raises:
            KafkaDevenvError: the cluster has no PROXIED listener.
        """
        self._listener_servers([node.proxied_server for node in self.nodes], PROXIED_LISTENER)
        return [
            ProxiedRoute(node.proxied_advertised_port, node.proxied_port)
            for node in self.nodes
            if node.proxied_advertised_port is not None and node.proxied_port is not None
        ]

    @staticmethod
    def _listener_servers(servers: list[str | None], name: str) -> str:
        if not servers or None in servers:
            how = "proxied_listener=True" if name == PROXIED_LISTENER else "security=SecurityConfig()"
            raise KafkaDevenvError(f"this cluster has no {name} listener (create it with {how})")
        return ",".join(s for s in servers if s)

    @property
    def ca_file(self) -> Path:
        """The test CA certificate (PEM) that signed the SASL_SSL and SSL listeners' certificate."""
        return self.data_dir / "tls" / "ca.pem"

    def node(self, node_id: int) -> KafkaNode:
        """The node with this id (ids are 0..n-1)."""
        return self.nodes[node_id]

    def _say(self, message: str) -> None:
        if self._progress is not None:
            self._progress(message)

    def _save_state(self) -> None:
        state = {
            "format": 1,
            "kafka_version": self.dist.version,
            "libs_dir": str(self.dist.libs_dir),
            "java": self.dist.java,
            "cluster_id": self.cluster_id,
            "jvm_options": list(self._jvm_options),
            "nodes": [node.state() for node in self.nodes],
        }
        self.data_dir.mkdir(parents=True, exist_ok=True)
        partial = self.state_path.with_suffix(".tmp")
        partial.write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
        partial.replace(self.state_path)

    def _format(self, nodes: Sequence[KafkaNode]) -> None:
        todo = [node for node in nodes if not node.is_formatted()]
        if not todo:
            return
        self._say(f"formatting storage of {len(todo)} node(s), cluster id {self.cluster_id}")
        running = [(node, node.format_storage(self.cluster_id)) for node in todo]
        failed: list[tuple[KafkaNode, int]] = []
        for node, proc in running:  # wait for every formatter before reporting, so none is left behind
            try:
                code = proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            if code != 0:
                failed.append((node, code))
        if failed:
            node, code = failed[0]
            log = node.directory / "format.log"
            raise KafkaDevenvError(
                f"kafka node {node.node_id}: storage format failed (exit {code}); {log} ends with:\n{tail_file(log)}"
            )

    def _start_watchdog(self) -> None:
        if self._detached or (self._watchdog is not None and self._watchdog.poll() is None):
            return
        self._watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(self.state_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def _stop_watchdog(self) -> None:
        if self._watchdog is not None:
            self._watchdog.terminate()
            self._watchdog.wait()
            self._watchdog = None

    def start(self, node_id: int | None = None, *, wait: bool = True, timeout: float = 180.0) -> None:
        """Start one node (same ports and data as before) or every stopped node, then wait until ready.

        Raises:
            KafkaDevenvError: formatting failed, a node exited, or the cluster was not ready in ``timeout`` s;
                the message names the node's log file and quotes its last lines.
        """
        targets = list(self.nodes) if node_id is None else [self.node(node_id)]
        began = time.monotonic()
        self._format(targets)
        self._start_watchdog()
        for node in targets:
            node.start()
            self._wanted.add(node.node_id)
        self._save_state()
        ids = [n.node_id for n in targets]
        self._say(f"started node(s) {ids}; waiting for {len(self._wanted)} broker(s) to be ready")
        if wait:
            self.wait_ready(timeout)
            self._say(f"kafka ready in {time.monotonic() - began:.1f} s at {self.bootstrap_servers}")

    def restart(self, node_id: int, *, wait: bool = True, timeout: float = 180.0) -> None:
        """Stop node ``node_id`` gracefully and start it again on the same ports and data."""
        self.stop(node_id)
        self.start(node_id, wait=wait, timeout=timeout)

    def stop(self, node_id: int | None = None, *, timeout: float = 30.0) -> None:
        """SIGTERM one node or all (all at once, so none waits for a quorum that is going away); SIGKILL
        any still alive after ``timeout`` seconds."""
        targets = list(self.nodes) if node_id is None else [self.node(node_id)]
        for node in targets:
            self._wanted.discard(node.node_id)
            node.terminate()
        deadline = time.monotonic() + timeout
        for node in targets:
            if not node.wait_exited(max(0.0, deadline - time.monotonic())):
                node.kill()
        if not self._wanted:
            self._stop_watchdog()
        self._save_state()

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id`` (a crash) and wait until the process is gone."""
        node = self.node(node_id)
        self._wanted.discard(node_id)
        node.kill()
        self._save_state()

    def running(self) -> list[KafkaNode]:
        """Nodes whose JVM is alive."""
        return [node for node in self.nodes if node.is_running()]

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Wait until every node meant to run answers a metadata request listing exactly those nodes.

        After ``kill(i)`` this also waits for the cluster to fence node ``i`` (about 6 s).

        Raises:
            KafkaDevenvError: a node meant to run has exited, or ``timeout`` seconds passed.
        """
        deadline = time.monotonic() + timeout
        pending: list[KafkaNode] = []
        while True:
            expected = frozenset(self._wanted)
            pending = []
            for node in (n for n in self.nodes if n.node_id in expected):
                if not node.is_running():
                    self._save_state()
                    raise node.failure("its JVM exited unexpectedly (see its log below)")
                if broker_ids(node.bootstrap_server, timeout=5.0) != expected:
                    pending.append(node)
            if not pending:
                return
            if time.monotonic() >= deadline:
                raise pending[0].failure(
                    f"cluster not ready after {timeout:.0f} s: nodes {[n.node_id for n in pending]} do not "
                    f"yet see brokers {sorted(expected)}"
                )
            time.sleep(0.2)

    def create_topics(
        self,
        names: Sequence[str],
        *,
        partitions: int = 1,
        replication_factor: int | None = None,
        configs: Mapping[str, str] | None = None,
        timeout: float = 60.0,
    ) -> None:
        """Create topics (idempotent); the replication factor defaults to min(nodes, 3)."""
        factor = replication_factor or min(len(self.nodes), 3)
        servers = self.bootstrap_servers
        create_topics(
            servers, names, partitions=partitions, replication_factor=factor, configs=configs, timeout=timeout
        )

    def describe_partitions(self, topic: str) -> list[PartitionState]:
        """Leader, replicas and ISR of every partition of ``topic``."""
        return describe_partitions(self.bootstrap_servers, topic)

    def close(self) -> None:
        """Stop every node and the watchdog; safe to call more than once."""
        self.stop()

    def __enter__(self) -> KafkaCluster:
        if len(self.running()) < len(self.nodes):
            try:
                self.start()
            except BaseException:
                self.close()
                raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
