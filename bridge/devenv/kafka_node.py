"""One local Kafka JVM in KRaft combined mode: its config, storage format, process control and logs.

Why a module of its own: ``kafka.py`` orchestrates a cluster (ports, quorum, readiness, state file) while this
module knows how to run and signal *one* JVM safely. Each node owns ``<data-dir>/node-<id>/``:
``server.properties``, ``server.log`` (log4j2), ``console.log`` (JVM stdout/stderr), ``format.log`` and
``data/``. Pids are checked against ``/proc/<pid>/cmdline`` before any signal, so a recycled pid is never hit.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from bridge.devenv.kafka_dist import KafkaDevenvError, KafkaDist, class_archive_path

__all__ = ["DEFAULT_JVM_OPTIONS", "PROXIED_LISTENER", "KafkaNode", "broker_settings", "owns_pid", "tail_file"]

# An extra PLAINTEXT listener that binds one port and advertises another, where a fault-injecting proxy listens
# (``bridge.devenv.tcp_proxy``): clients bootstrapped through the proxy get the proxy's ports in the metadata,
# so every connection they make to this listener goes through it.
PROXIED_LISTENER: Final = "PROXIED"

DEFAULT_JVM_OPTIONS: Final[tuple[str, ...]] = (
    "-Xms128m",
    "-Xmx512m",
    "-XX:+UseSerialGC",  # one small heap per node; no GC threads competing for 2 cores
    "-XX:TieredStopAtLevel=1",  # C1 only: faster startup and less CPU for short-lived test brokers
    "-XX:-UsePerfData",
    "-XX:+ExitOnOutOfMemoryError",
    "-Djava.awt.headless=true",
)
_LOG4J2: Final = """\
status = warn
shutdownHook = disable
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
"""


def broker_settings(brokers: int) -> dict[str, str]:
    """Broker settings tuned for tests: small internal topics, no rebalance delay, no auto-created topics.

    Replication: 3+ nodes give factor 3 with ``min.insync.replicas=2`` (one node may die and ``acks=all``
    still succeeds); a single node gives 1 everywhere.
    """
    factor = min(brokers, 3)
    min_isr = max(1, factor - 1)
    return {
        "num.partitions": "1",
        "default.replication.factor": str(factor),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(factor),
        "offsets.topic.num.partitions": "6",
        "transaction.state.log.replication.factor": str(factor),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "6",
        "share.coordinator.state.topic.replication.factor": str(factor),
        "share.coordinator.state.topic.min.isr": str(min_isr),
        "group.initial.rebalance.delay.ms": "0",
        "auto.create.topics.enable": "false",
        "num.network.threads": "2",
        "num.io.threads": "4",
        # A dead node is fenced (and leaves every ISR) after 6 s instead of 9 s.
        "broker.heartbeat.interval.ms": "1000",
        "broker.session.timeout.ms": "6000",
    }


_RUN_MARKER: Final = "--- kard-bridge: node starting"


def tail_file(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file, indented for an error message (never raises)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "    (no such file yet)"
    kept = text.rstrip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) if kept else "    (empty)"


def _first_errors(path: Path, limit: int = 4) -> str:
    """ERROR/FATAL lines (with the exception line after each) logged since the node's latest start."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    lines = text[text.rfind(_RUN_MARKER) :].splitlines() if _RUN_MARKER in text else text.splitlines()
    found: list[str] = []
    for index, line in enumerate(lines):
        if "] ERROR " in line or "] FATAL " in line:
            found.append(f"    {line}")
            follower = lines[index + 1] if index + 1 < len(lines) else ""
            if follower and not follower.startswith("["):
                found.append(f"      {follower.strip()}")
            if len(found) >= 2 * limit:
                break
    return "\n".join(found)


def owns_pid(pid: int, marker: str) -> bool:
    """True if ``pid`` is alive, not a zombie, and (given /proc) its command line contains ``marker``."""
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # pragma: no cover - non-Linux: trust the pid
        return True
    try:
        return marker.encode() in (proc / "cmdline").read_bytes()  # a zombie's cmdline is empty
    except OSError:
        return False


class KafkaNode:
    """One Kafka JVM in KRaft combined mode (broker + controller) with fixed ports and its own directory.

    Create nodes through ``KafkaCluster``; a node keeps its ports and data across ``stop()``/``start()``.
    """

    def __init__(
        self,
        node_id: int,
        *,
        directory: Path,
        broker_port: int,
        controller_port: int,
        dist: KafkaDist,
        jvm_options: Sequence[str],
        pid: int | None = None,
        build_class_archive: bool = False,
        sasl_ssl_port: int | None = None,
        ssl_port: int | None = None,
        proxied_port: int | None = None,
        proxied_advertised_port: int | None = None,
    ) -> None:
        if (proxied_port is None) != (proxied_advertised_port is None):
            raise ValueError("proxied_port and proxied_advertised_port go together")
        self.node_id = node_id
        self.directory = directory
        self.broker_port = broker_port
        self.controller_port = controller_port
        self.sasl_ssl_port = sasl_ssl_port
        self.ssl_port = ssl_port
        self.proxied_port = proxied_port
        self.proxied_advertised_port = proxied_advertised_port
        self._dist = dist
        self._jvm_options = tuple(jvm_options)
        self._proc: subprocess.Popen[bytes] | None = None
        self._pid = pid
        self._archive = class_archive_path(dist, self._jvm_options)
        self._build_archive = build_class_archive
        self._archive_draft: Path | None = None

    def __repr__(self) -> str:
        return f"KafkaNode(node_id={self.node_id}, server={self.bootstrap_server!r}, pid={self.pid})"

    @property
    def bootstrap_server(self) -> str:
        """``127.0.0.1:<broker port>``."""
        return f"127.0.0.1:{self.broker_port}"

    @property
    def sasl_ssl_server(self) -> str | None:
        """``127.0.0.1:<SASL_SSL port>`` when the node has that listener (see ``kafka_security``), else None."""
        return None if self.sasl_ssl_port is None else f"127.0.0.1:{self.sasl_ssl_port}"

    @property
    def ssl_server(self) -> str | None:
        """``127.0.0.1:<SSL port>`` when the node has a plain TLS listener (see ``kafka_security``), else None."""
        return None if self.ssl_port is None else f"127.0.0.1:{self.ssl_port}"

    @property
    def proxied_server(self) -> str | None:
        """``127.0.0.1:<advertised PROXIED port>`` (where the node's proxy listens) when the node has that listener."""
        return None if self.proxied_advertised_port is None else f"127.0.0.1:{self.proxied_advertised_port}"

    @property
    def config_path(self) -> Path:
        """The node's ``server.properties``."""
        return self.directory / "server.properties"

    @property
    def log_path(self) -> Path:
        """The broker log (log4j2): read it when the node misbehaves."""
        return self.directory / "server.log"

    @property
    def console_path(self) -> Path:
        """The JVM's stdout and stderr (crashes before logging starts end up here)."""
        return self.directory / "console.log"

    @property
    def pid(self) -> int | None:
        """The JVM's pid while it runs, else None."""
        return self._pid if self.is_running() else None

    def is_running(self) -> bool:
        """True while this node's JVM process is alive."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self._pid is not None and owns_pid(self._pid, str(self.config_path))

    def is_formatted(self) -> bool:
        """True once the storage formatter has written ``data/meta.properties``."""
        return (self.directory / "data" / "meta.properties").is_file()

    def write_config(self, voters: str, settings: Mapping[str, str], format_args: Sequence[str] = ()) -> None:
        """Write ``server.properties`` and the log4j2 config (logging to ``server.log``).

        With a ``sasl_ssl_port`` the node also listens there with ``SASL_SSL``, with an ``ssl_port`` there with
        ``SSL`` (their TLS and SASL settings come in ``settings``). With a ``proxied_port`` it also listens there
        with PLAINTEXT as ``PROXIED`` but advertises ``proxied_advertised_port``. ``format_args`` (e.g.
        ``--add-scram ...``) are kept in ``format.args`` for the storage formatter.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        listeners = f"PLAINTEXT://127.0.0.1:{self.broker_port},CONTROLLER://127.0.0.1:{self.controller_port}"
        advertised = f"PLAINTEXT://127.0.0.1:{self.broker_port}"
        protocols = "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
        if self.sasl_ssl_port is not None:
            listeners += f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}"
            advertised += f",SASL_SSL://127.0.0.1:{self.sasl_ssl_port}"
            protocols += ",SASL_SSL:SASL_SSL"
        if self.ssl_port is not None:
            listeners += f",SSL://127.0.0.1:{self.ssl_port}"
            advertised += f",SSL://127.0.0.1:{self.ssl_port}"
            protocols += ",SSL:SSL"
        if self.proxied_port is not None:
            listeners += f",{PROXIED_LISTENER}://127.0.0.1:{self.proxied_port}"
            advertised += f",{PROXIED_LISTENER}://127.0.0.1:{self.proxied_advertised_port}"
            protocols += f",{PROXIED_LISTENER}:PLAINTEXT"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": voters,
            "listeners": listeners,
            "advertised.listeners": advertised,
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": protocols,
            "log.dirs": str(self.directory / "data"),
            **settings,
        }
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()), encoding="utf-8")
        (self.directory / "log4j2.properties").write_text(_LOG4J2.format(log=self.log_path), encoding="utf-8")
        args_path = self.directory / "format.args"
        args_path.unlink(missing_ok=True)
        if format_args:  # may hold SCRAM passwords: owner-only
            args_path.touch(mode=0o600)
            args_path.write_text("".join(f"{arg}\n" for arg in format_args), encoding="utf-8")

    def _java(self, main_class: str, *args: str) -> list[str]:
        log4j = f"-Dlog4j2.configurationFile={self.directory / 'log4j2.properties'}"
        sharing: list[str] = []
        if self._archive.is_file():
            sharing = [f"-XX:SharedArchiveFile={self._archive}"]
        elif self._build_archive and main_class == "kafka.Kafka":
            # The JVM writes the archive when it exits; _adopt_archive() keeps it only after a clean exit.
            self._archive_draft = self._archive.with_name(f"{self._archive.stem}.{os.getpid()}.{self.node_id}.tmp")
            sharing = [f"-XX:ArchiveClassesAtExit={self._archive_draft}"]
        return [self._dist.java, *self._jvm_options, *sharing, log4j, "-cp", self._dist.classpath, main_class, *args]

    def _adopt_archive(self) -> None:
        draft, self._archive_draft = self._archive_draft, None
        if draft is None:
            return
        clean_exit = self._proc is not None and self._proc.returncode in (0, 143)  # 143: exit after SIGTERM
        if clean_exit and draft.is_file() and not self._archive.exists():
            draft.replace(self._archive)
            self._build_archive = False
        else:
            draft.unlink(missing_ok=True)

    def format_storage(self, cluster_id: str) -> subprocess.Popen[bytes]:
        """Start the storage formatter for ``cluster_id`` (output in ``format.log``); the caller waits."""
        args: tuple[str, ...] = ("format", "--config", str(self.config_path), "--cluster-id", cluster_id)
        extra = self.directory / "format.args"
        if extra.is_file():
            args += tuple(extra.read_text(encoding="utf-8").splitlines())
        with (self.directory / "format.log").open("wb") as out:
            return subprocess.Popen(
                self._java("kafka.tools.StorageTool", *args), stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )

    def start(self) -> None:
        """Start the JVM in its own session (it outlives a detached parent); a no-op if already running."""
        if self.is_running():
            return
        marker = f"{_RUN_MARKER} {self.node_id} at {time.ctime()} ---\n"
        with self.log_path.open("a", encoding="utf-8") as log:  # the JVM is not running: no interleaving
            log.write(marker)
        with self.console_path.open("ab") as console:
            console.write(marker.encode())
            console.flush()
            self._proc = subprocess.Popen(
                self._java("kafka.Kafka", str(self.config_path)),
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,
            )
        self._pid = self._proc.pid

    def _signal(self, signum: int) -> None:
        if self.is_running() and self._pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signum)

    def terminate(self) -> None:
        """Send SIGTERM (a controlled shutdown) without waiting; see ``wait_exited``."""
        self._signal(signal.SIGTERM)

    def wait_exited(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the JVM to exit; True if it has."""
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        self._adopt_archive()
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a controlled shutdown) and wait; SIGKILL if still alive after ``timeout`` seconds."""
        self.terminate()
        if not self.wait_exited(timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL (a crash: no controlled shutdown) and wait for the process to go.

        Raises:
            KafkaDevenvError: the process survived SIGKILL for 30 s.
        """
        self._signal(signal.SIGKILL)
        if not self.wait_exited(30.0):
            raise self.failure("did not exit after SIGKILL")

    def failure(self, problem: str) -> KafkaDevenvError:
        """An error naming this node's log files, quoting the errors logged since its start and its last lines."""
        errors = _first_errors(self.log_path)
        return KafkaDevenvError(
            f"kafka node {self.node_id} ({self.bootstrap_server}): {problem}\n"
            + (f"  errors in {self.log_path}:\n{errors}\n" if errors else "")
            + f"  log {self.log_path} ends with:\n{tail_file(self.log_path, 15)}\n"
            f"  console {self.console_path} ends with:\n{tail_file(self.console_path, 10)}"
        )

    def state(self) -> dict[str, Any]:
        """The JSON-able record of this node for the state file."""
        return {
            "node_id": self.node_id,
            "directory": str(self.directory),
            "broker_port": self.broker_port,
            "controller_port": self.controller_port,
            "sasl_ssl_port": self.sasl_ssl_port,
            "ssl_port": self.ssl_port,
            "proxied_port": self.proxied_port,
            "proxied_advertised_port": self.proxied_advertised_port,
            "pid": self.pid,
        }
