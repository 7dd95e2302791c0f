"""``kard-bridge sandbox``: run the Kard API sandbox until SIGTERM/SIGINT.

On start it prints exactly one line to stdout, ``sandbox listening on http://HOST:PORT`` (flushed), so that a
parent process started with ``--port 0`` can read the port; nothing else is ever written to stdout.
``--faults`` takes the JSON of :mod:`bridge.sandbox.fault_config` (or ``@path`` to a file).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import orjson
import pydantic
from aiohttp import web

from bridge.sandbox.app import create_app
from bridge.sandbox.fault_config import FaultConfig, parse_fault_config
from bridge.sandbox.faults import FaultEngine
from bridge.sandbox.state import SandboxSettings, SandboxState

__all__ = ["register", "serve"]


def register(subparsers: Any) -> None:
    """Add the ``sandbox`` subcommand to the ``kard-bridge`` parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sandbox", help="run the Kard API sandbox (emulator with fault injection) for tests, demo, benchmarks"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port to bind; 0 picks a free port (default 8080)")
    p.add_argument("--client-id", default="sandbox-client", help="accepted client_id (default sandbox-client)")
    p.add_argument("--client-secret", default="sandbox-secret", help="accepted client_secret")
    p.add_argument("--token-ttl", type=float, default=3600.0, help="token lifetime in seconds (default 3600)")
    p.add_argument("--faults", default=None, help="fault configuration JSON, or @file")
    p.add_argument(
        "--record",
        choices=("full", "ids", "none"),
        default="full",
        help="what to keep per accepted item: full JSON, ids only, or nothing (default full)",
    )
    p.add_argument(
        "--unknown-fields",
        choices=("reject", "ignore"),
        default="reject",
        help="unknown JSON fields in requests: reject them (default) or ignore them",
    )
    p.set_defaults(func=_main)


def _load_faults(text: str | None) -> FaultConfig:
    if not text:
        return FaultConfig()
    raw = Path(text[1:]).read_bytes() if text.startswith("@") else text.encode()
    return parse_fault_config(orjson.loads(raw))


def _main(args: argparse.Namespace) -> int:
    try:
        faults = _load_faults(args.faults)
    except (OSError, orjson.JSONDecodeError, pydantic.ValidationError) as exc:
        sys.stderr.write(f"kard-bridge sandbox: invalid --faults: {exc}\n")
        return 2
    if args.token_ttl <= 0:
        sys.stderr.write("kard-bridge sandbox: --token-ttl must be positive\n")
        return 2
    settings = SandboxSettings(
        client_id=args.client_id,
        client_secret=args.client_secret,
        token_ttl=args.token_ttl,
        record=args.record,
        strict=args.unknown_fields == "reject",
    )
    _run(serve(settings, args.host, args.port, faults))
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop when it is installed, else on the default asyncio loop."""
    try:
        import uvloop  # optional accelerator, imported only when serving
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


async def serve(
    settings: SandboxSettings,
    host: str,
    port: int,
    faults: FaultConfig | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the sandbox until SIGTERM/SIGINT (or ``stop`` is set).

    Args:
        on_ready: called with the base URL once listening; by default prints the ``sandbox listening`` line.
        stop: an event that stops the server when set (signals set it too).
    """
    state = SandboxState(settings)
    state.faults = FaultEngine(faults)
    runner = web.AppRunner(create_app(state=state), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        base_url = f"http://{shown}:{bound_port}"
        if on_ready is not None:
            on_ready(base_url)
        else:
            sys.stdout.write(f"sandbox listening on {base_url}\n")
            sys.stdout.flush()
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
        await runner.cleanup()
