"""``python -m tests.chaos``: run a chaos scenario and print the checker's table (exit 1 when it fails)."""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from tests.chaos.runner import run_scenario
from tests.chaos.scenario import FAULT_KINDS, scenario


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__)
    parser.add_argument("--scenario", choices=["full", "reduced", "soak"], default="full")
    parser.add_argument("--rate", type=float, help="records/s to produce at (the soak: 700)")
    parser.add_argument("--bridges", type=int, help="bridge processes (default: the scenario's)")
    parser.add_argument("--records", type=int, help="events to produce (default: the scenario's)")
    parser.add_argument("--faults", help=f"comma-separated fault schedule; kinds: {', '.join(FAULT_KINDS)}")
    parser.add_argument("--outage-seconds", type=float)
    parser.add_argument("--fault-seconds", type=float, help="how long storms and cuts last")
    parser.add_argument("--exactly-once", action="store_true", help="run the bridges with transactional outputs")
    parser.add_argument("--bridge-env", action="append", default=[], metavar="NAME=VALUE", help="extra bridge env")
    parser.add_argument("--workdir", type=Path, help="where logs and the report go (default: a new temp dir)")
    args = parser.parse_args(argv)

    env = dict(item.split("=", 1) for item in args.bridge_env)
    if args.scenario == "soak" and args.rate and not args.records:
        args.records = int(args.rate * 600)  # the soak lasts 10 minutes at whatever rate
    chosen = scenario(
        args.scenario,
        records=args.records,
        rate=args.rate,
        bridges=args.bridges,
        faults=tuple(args.faults.split(",")) if args.faults else None,
        outage_seconds=args.outage_seconds,
        fault_seconds=args.fault_seconds,
        exactly_once=args.exactly_once or None,
        bridge_env=env or None,
    )
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix=f"kard-chaos-{chosen.name}-"))
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    print(f"chaos scenario {chosen.name}: {chosen.records} events, {len(chosen.faults)} faults, workdir {workdir}")
    t0 = time.monotonic()
    report = run_scenario(chosen, workdir, say=lambda line: print(line, flush=True))
    print()
    print(f"chaos run {chosen.name} started {started}, took {time.monotonic() - t0:.0f} s")
    print(report.table())
    print(f"\nreport: {workdir / 'report.md'} and report.json; bridge logs in {workdir / 'bridges'}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
