"""Fetch the pinned Apache Kafka broker jars with Maven, once, into a per-user cache outside the repository.

Why Maven: developers and CI have Java and Maven Central but not necessarily Docker, and the broker is
published there as ordinary jars (``org.apache.kafka:kafka_2.13``, which also holds the storage formatter).
``kafka-pom.xml`` pins the version. The jars land in
``${KARD_BRIDGE_CACHE:-~/.cache/kard-bridge}/kafka-<version>/libs``: Maven downloads into a temporary
sibling directory which is then renamed into place, so a cache directory that exists is always complete,
and later runs reuse it without calling Maven at all.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final

__all__ = [
    "KAFKA_VERSION",
    "KafkaDevenvError",
    "KafkaDist",
    "cache_root",
    "class_archive_path",
    "fetch_kafka",
    "find_java",
]

_POM_RESOURCE: Final = "kafka-pom.xml"
_MAVEN_TIMEOUT: Final = 900.0  # a cold download of ~45 MB over a slow mirror


class KafkaDevenvError(RuntimeError):
    """The local Kafka tooling could not fetch, start, stop or reach a broker; the message says why."""


def _pom_text() -> str:
    return resources.files("bridge.devenv").joinpath(_POM_RESOURCE).read_text(encoding="utf-8")


def _pinned_version() -> str:
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", _pom_text())
    if match is None:  # pragma: no cover - guards an edit of the pom, not a runtime path
        raise KafkaDevenvError(f"{_POM_RESOURCE} has no <kafka.version> property")
    return match.group(1)


KAFKA_VERSION: Final[str] = _pinned_version()
"""The Kafka version pinned in ``kafka-pom.xml``."""


@dataclass(frozen=True, slots=True)
class KafkaDist:
    """A fetched Kafka: the jar directory plus the ``java`` that runs it."""

    version: str
    libs_dir: Path
    java: str

    @property
    def classpath(self) -> str:
        """The JVM ``-cp`` value: every jar in ``libs_dir`` (a JVM wildcard, not a shell glob)."""
        return str(self.libs_dir / "*")


def cache_root() -> Path:
    """Return ``$KARD_BRIDGE_CACHE``, or ``~/.cache/kard-bridge`` when it is unset or empty."""
    configured = os.environ.get("KARD_BRIDGE_CACHE", "").strip()
    return Path(configured).expanduser() if configured else Path.home() / ".cache" / "kard-bridge"


def class_archive_path(dist: KafkaDist, jvm_options: Sequence[str]) -> Path:
    """Where the JVM class-data-sharing (AppCDS) archive for this Java build, jars and options lives.

    The archive (made by a broker's first graceful run, see ``KafkaNode``) cuts the CPU a broker needs to
    start by about 40 %. It may not exist yet. The name hashes the resolved ``java`` binary (path, size,
    mtime) and the options, so a JDK upgrade or new flags pick a new archive; a stale one is refused by the
    JVM itself, which then simply starts without it.
    """
    java = Path(dist.java).resolve()
    info = java.stat()
    identity = f"{java}|{info.st_size}|{info.st_mtime_ns}|{' '.join(jvm_options)}"
    return dist.libs_dir.parent / f"classes-{hashlib.sha256(identity.encode()).hexdigest()[:16]}.jsa"


def find_java() -> str:
    """Return the ``java`` launcher (``$JAVA_HOME/bin/java`` first, then ``PATH``).

    Raises:
        KafkaDevenvError: no Java runtime was found.
    """
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise KafkaDevenvError(
            "java was not found on PATH (nor in $JAVA_HOME/bin): the local Kafka broker needs Java 17+, "
            "e.g. `apt-get install openjdk-17-jre-headless`; or set KAFKA_BOOTSTRAP_SERVERS to another broker"
        )
    return found


def _find_maven() -> str:
    found = shutil.which("mvn")
    if found is None:
        raise KafkaDevenvError(
            "mvn was not found on PATH: Maven fetches the pinned Kafka jars from Maven Central "
            "(e.g. `apt-get install maven`), or set KAFKA_BOOTSTRAP_SERVERS to use another broker"
        )
    return found


def _is_complete(libs_dir: Path, version: str) -> bool:
    return (libs_dir / f"kafka_2.13-{version}.jar").is_file() and (libs_dir / f"kafka-clients-{version}.jar").is_file()


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def fetch_kafka(
    version: str | None = None,
    *,
    cache_dir: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> KafkaDist:
    """Return the cached Kafka jars for ``version``, running Maven first if they are not cached yet.

    Concurrent callers may both download; the first rename wins and the others discard their copy.

    Args:
        version: the Kafka version; defaults to ``KAFKA_VERSION`` from ``kafka-pom.xml``.
        cache_dir: where ``kafka-<version>/`` lives; defaults to ``cache_root()``.
        progress: called with one human-readable line before a (slow) download.

    Raises:
        KafkaDevenvError: java or mvn is missing, or Maven failed (the message holds its last output lines).
    """
    version = version or KAFKA_VERSION
    java = find_java()
    home = (cache_dir or cache_root()) / f"kafka-{version}"
    libs_dir = home / "libs"
    if _is_complete(libs_dir, version):
        return KafkaDist(version=version, libs_dir=libs_dir, java=java)

    mvn = _find_maven()
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".kafka-{version}-", dir=home.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        pom = staging / "pom.xml"
        pom.write_text(_pom_text(), encoding="utf-8")
        if progress is not None:
            progress(f"fetching Apache Kafka {version} jars with Maven into {libs_dir}")
        command = [
            mvn,
            "-B",
            "-q",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging / 'libs'}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={version}",
        ]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_MAVEN_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise KafkaDevenvError(f"mvn did not fetch Kafka {version} in {_MAVEN_TIMEOUT:.0f} s") from exc
        if done.returncode != 0 or not _is_complete(staging / "libs", version):
            raise KafkaDevenvError(
                f"mvn could not fetch Kafka {version} (exit code {done.returncode}); "
                f"command: {' '.join(command)}\n--- last mvn output ---\n{_tail(done.stdout + done.stderr)}"
            )
        if home.exists() and not _is_complete(libs_dir, version):
            shutil.rmtree(home)  # a leftover from a tool that did not rename atomically
        try:
            staging.rename(home)
        except OSError:
            if not _is_complete(libs_dir, version):  # not a lost race with another fetch: a real failure
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return KafkaDist(version=version, libs_dir=libs_dir, java=java)
