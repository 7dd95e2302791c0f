"""The ``kard-bridge`` command: argument parsing only; each subcommand lives with its concern.

Every subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func=<callable(args) -> int>``. Imports are lazy so that ``kard-bridge kafka start`` does not pay
for importing the bridge runtime.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

# (module, attribute) pairs; each register() adds one or more subcommands.
_COMMANDS: tuple[str, ...] = (
    "bridge.devenv.commands",  # kafka start|stop|status
    "bridge.sandbox.commands",  # sandbox
    "bridge.topics_cli",  # topics apply|list
    "bridge.run_cli",  # run
    "bridge.devenv.demo",  # demo
    "bridge.replay",  # replay
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kard-bridge",
        description="Forward card-transaction, eligibility and attribution events from Kafka to the Kard API.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module_name in _COMMANDS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # subcommand not built yet
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    code: int = func(args)
    return code


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    sys.exit(main())
