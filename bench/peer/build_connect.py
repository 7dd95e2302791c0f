"""Build the benchmark peer (a minimal Benthos / Redpanda Connect binary) into a cache outside the repository.

Run: ``.venv/bin/python bench/peer/build_connect.py [--force] [--cache DIR] [--print-path]``.

It creates a tiny Go module in ``~/.cache/kard-bridge/connect-build`` (or ``--cache``; ``$KARD_BRIDGE_CACHE``
moves the whole ``~/.cache/kard-bridge``), copies ``main.go`` and ``kafka_franz.go`` from this directory into
it, pins the modules below with ``go get``, and ``go build``s ``kard-bridge-peer`` there. A build is reused
while the sources, the pins and the Go version are unchanged (a stamp file records them); ``--force``
rebuilds. Everything comes from the Go module proxy; nothing is written into the repository.

Why not ``github.com/redpanda-data/connect/v4`` itself: this workplace's Go module list marks that module
"not-to-use" (not an open-source licence: Redpanda Connect ships components under the Redpanda Community
License next to the Apache-2.0 ones), so the peer is built from what Redpanda Connect is built on: the
Benthos engine ``github.com/redpanda-data/benthos/v4`` (MIT; the ``pure`` and ``io`` component sets give
bloblang, ``archive``, batching and the ``http_client`` output) and franz-go (BSD-3), with a ~300-line
``kafka_franz`` input (``kafka_franz.go``) that has the same field names and delivery model as Redpanda
Connect's. The exact reason is printed into BENCHMARKS.md by the harness.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BINARY", "MODULES", "build", "cache_dir"]

HERE = Path(__file__).resolve().parent
SOURCES = ("main.go", "kafka_franz.go")
BINARY = "kard-bridge-peer"
MODULE = "kard-bridge.local/peer"
# Versions the Go module proxy serves here (see /work/.library/env/packages/go-partial.tsv); go 1.26 accepts them.
MODULES = {
    "github.com/redpanda-data/benthos/v4": "v4.60.0",
    "github.com/twmb/franz-go": "v1.22.3",
}
WHY_NOT_CONNECT = (
    "github.com/redpanda-data/connect/v4 is marked not-to-use in this workplace's Go module list (not an "
    "open-source licence: it ships Redpanda Community License components), so the peer is the Benthos engine "
    "Redpanda Connect is built on (github.com/redpanda-data/benthos/v4, MIT) with its pure+io components "
    "(bloblang, archive, batching, http_client) and a small franz-go kafka_franz input written for the harness "
    "(bench/peer/kafka_franz.go: same fields and delivery model as Redpanda Connect's kafka_franz)"
)


def cache_dir() -> Path:
    """``$KARD_BRIDGE_CACHE/connect-build``, by default ``~/.cache/kard-bridge/connect-build``."""
    root = os.environ.get("KARD_BRIDGE_CACHE") or str(Path.home() / ".cache" / "kard-bridge")
    return Path(root) / "connect-build"


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed ({done.returncode}):\n{done.stderr.strip()[-4000:]}")
    return done.stdout


def _stamp(go_version: str) -> str:
    digest = hashlib.sha256(go_version.encode())
    for name in SOURCES:
        digest.update((HERE / name).read_bytes())
    for module, version in sorted(MODULES.items()):
        digest.update(f"{module}@{version}".encode())
    return digest.hexdigest()


def build(*, force: bool = False, cache: Path | None = None, quiet: bool = False) -> dict[str, object]:
    """Build (or reuse) the peer; returns its path, versions, build seconds (0 when reused) and size."""
    if shutil.which("go") is None:
        raise RuntimeError("the go command is not on PATH")
    root = cache or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "GOFLAGS": "-mod=mod -buildvcs=false", "CGO_ENABLED": "0"}
    go_version = _go(["env", "GOVERSION"], root, env).strip()
    stamp = _stamp(go_version)
    binary = root / BINARY
    stamp_file = root / "stamp"
    info: dict[str, object] = {"path": str(binary), "go": go_version, "modules": dict(MODULES), "cache": str(root)}
    if not force and binary.exists() and stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        info.update(build_seconds=0.0, reused=True, size_mb=binary.stat().st_size / 2**20)
        return info
    say = (lambda *_: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    started = time.monotonic()
    for name in SOURCES:
        shutil.copyfile(HERE / name, root / name)
    if not (root / "go.mod").exists():
        _go(["mod", "init", MODULE], root, env)
    say(f"peer: go get {' '.join(f'{m}@{v}' for m, v in MODULES.items())} in {root}")
    _go(["get", *(f"{m}@{v}" for m, v in MODULES.items())], root, env)
    _go(["mod", "tidy"], root, env)
    say("peer: go build (several minutes the first time: the Benthos engine and its dependencies)")
    _go(["build", "-trimpath", "-ldflags=-s -w", "-o", BINARY, "."], root, env)
    stamp_file.write_text(stamp + "\n")
    info.update(build_seconds=time.monotonic() - started, reused=False, size_mb=binary.stat().st_size / 2**20)
    say(f"peer: built {binary} ({info['size_mb']:.1f} MB) in {info['build_seconds']:.0f} s")
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if a matching build is cached")
    parser.add_argument("--cache", type=Path, help="build directory (default ~/.cache/kard-bridge/connect-build)")
    parser.add_argument("--print-path", action="store_true", help="print only the binary's path")
    args = parser.parse_args()
    try:
        info = build(force=args.force, cache=args.cache, quiet=args.print_path)
    except RuntimeError as exc:
        print(f"peer build failed: {exc}", file=sys.stderr)
        sys.exit(1)
    if args.print_path:
        print(info["path"])
    else:
        for key, value in info.items():
            print(f"{key}: {value}")


if __name__ == "__main__":
    main()
