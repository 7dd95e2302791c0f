"""The ``kard-bridge`` command: argument parsing only; each subcommand lives with its concern.

Every subcommand module exposes ``register(subparsers)`` which adds its parser and sets
``func=<callable(args) -> int>``. Imports are lazy so that ``kard-bridge kafka start`` does not pay
for importing the bridge runtime.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

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
            module.register(sub)
        except Exception as exc:  # noqa: BLE001 - one broken subcommand must not disable the others
            # The failure surfaces when that subcommand is used (and in its tests), not for every command.
            name = module_name.rsplit(".", 1)[-1].removesuffix("_cli")
            broken = sub.add_parser(name, help=f"(unavailable: {type(exc).__name__})")
            broken.set_defaults(func=_unavailable(module_name, exc))
    return parser


def _unavailable(module_name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def run(_args: argparse.Namespace) -> int:
        print(f"kard-bridge: {module_name} cannot be loaded: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2

    return run


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
