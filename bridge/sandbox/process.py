"""Start the sandbox as a child process (``python -m bridge sandbox --port 0 ...``) and stop it again.

Used by the pytest fixtures, the benchmarks and the demo: a separate process keeps the sandbox's CPU work off
the caller's event loop, exactly as a remote API would be. The port is read from the one line the sandbox
prints on start; after that, stdout is drained by a daemon thread so the child can never block on a full pipe.
"""

from __future__ import annotations

import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, Any, Self

from bridge.sandbox.control import SandboxControl

__all__ = ["SandboxProcess", "start_sandbox"]

_READY = re.compile(r"sandbox listening on (http://\S+)")


@dataclass
class SandboxProcess:
    """A running sandbox child process and what a client needs to talk to it."""

    base_url: str
    client_id: str
    client_secret: str
    token_ttl: float
    process: subprocess.Popen[bytes]
    drain: threading.Thread | None = None
    control: SandboxControl = field(init=False)

    def __post_init__(self) -> None:
        self.control = SandboxControl(self.base_url)

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, wait up to ``timeout`` seconds, then SIGKILL; returns the exit code. Idempotent."""
        self.control.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self.drain is not None:
            self.drain.join(timeout)  # the child is gone, so its stdout is at EOF
        if self.process.stdout is not None:
            self.process.stdout.close()
        return int(self.process.returncode)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _drain(stream: IO[bytes]) -> None:
    for _ in iter(lambda: stream.read(65536), b""):
        pass


def _read_ready_line(proc: subprocess.Popen[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    fd = proc.stdout.fileno()
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"the sandbox did not report its port within {timeout} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            raise RuntimeError(f"the sandbox exited before listening (exit code {proc.wait()})")
        buffer += chunk
    line = buffer.split(b"\n", 1)[0].decode()
    match = _READY.search(line)
    if match is None:
        raise RuntimeError(f"unexpected first line from the sandbox: {line!r}")
    return match.group(1)


def start_sandbox(
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    client_id: str = "sandbox-client",
    client_secret: str = "sandbox-secret",  # noqa: S107 - the sandbox's fake default credential
    token_ttl: float = 3600.0,
    faults: dict[str, Any] | None = None,
    record: str = "full",
    unknown_fields: str = "reject",
    ready_timeout: float = 30.0,
    python: str = sys.executable,
) -> SandboxProcess:
    """Start ``python -m bridge sandbox`` and wait until it listens.

    Raises:
        TimeoutError: it did not print its port in time (the child is killed).
        RuntimeError: it exited or printed something unexpected.
    """
    argv = [
        python, "-m", "bridge", "sandbox", "--host", host, "--port", str(port), "--client-id", client_id,
        "--client-secret", client_secret, "--token-ttl", str(token_ttl), "--record", record,
        "--unknown-fields", unknown_fields,
    ]  # fmt: skip
    if faults:
        argv += ["--faults", json.dumps(faults)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        base_url = _read_ready_line(proc, ready_timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        raise
    assert proc.stdout is not None
    drain = threading.Thread(target=_drain, args=(proc.stdout,), name="sandbox-stdout", daemon=True)
    drain.start()
    return SandboxProcess(base_url, client_id, client_secret, token_ttl, proc, drain)
