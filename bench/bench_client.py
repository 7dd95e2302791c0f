"""CPU per request of the Kard client (``KardClient.send_batch``) against the sandbox, old code vs new, in one run.

Run: ``.venv/bin/python bench/bench_client.py [--small 3000] [--large 200] [--rounds 3] [--baseline REV]``.

The sandbox runs as a child process (``--record none``: its own work stays small and flat). The bench process
builds the real :class:`~bridge.kard.client.KardClient` from the default settings exactly as ``bridge/app.py``
does (``max_connections = BRIDGE_MAX_IN_FLIGHT`` = 16) and sends, from 16 concurrent tasks:

* **small**: per-user attribution batches of 1–2 items (``v2/issuers/{org}/users/{user}/attributions``, one
  request per user, as the bridge sends mixed data), made by the bridge's own mapping from generated events;
* **large**: 500-item transaction batches (``v2/issuers/{org}/transactions``).

The figure is the bench process's CPU seconds per request (``time.process_time()``: client, mapping is done
before), and requests/s. The *baseline* is the ``bridge/kard`` package as of git revision ``--baseline``
(default: the commit before the client's per-request CPU work was cut), loaded from ``git show`` into a
private package next to the current one, so both run in the same process against the same sandbox. A and B
alternate ``--rounds`` times (order swapped every round): on a shared 2-core machine only pairwise figures
from one run are comparable. ``--variants new`` runs the current client only; ``--profile cprofile`` adds a
cProfile (CPU time) of the measured sends, e.g. ``--variants new --large 1 --profile cprofile``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import cProfile
import importlib
import itertools
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from bridge.config import BridgeSettings, KardSettings
from bridge.devenv.generate import TopicNames, generate_events
from bridge.events.common import EventKind
from bridge.mapping.context import MappingContext
from bridge.mapping.mapper import map_record
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem, Route
from bridge.sandbox.process import SandboxProcess, start_sandbox

__all__ = ["main"]

_ORG = "org-bench"
_BASELINE = "d2d1d0d"  # the last commit before this bench's optimisation of bridge/kard
_ROOT = Path(__file__).resolve().parent.parent

Batches = list[tuple[Route, list[MappedItem]]]


# -- workload -------------------------------------------------------------------------------------------------


def _mapped(topic: str, kind: EventKind, count: int, *, seed: int) -> list[MappedItem]:
    """Items mapped by the bridge's own mapping from generated events of ``topic`` (per-user attributions)."""
    names = TopicNames()
    ctx = MappingContext(kind_by_topic={topic: kind}, organization_id=_ORG, attribution_mode="per_user")
    out: list[MappedItem] = []
    for offset, event in enumerate(generate_events(count * 12, organization_id=_ORG, topics=names, seed=seed)):
        if event.topic != topic:
            continue
        out.append(map_record(SourceRecord(topic, 0, offset, event.key, event.value, (), 0), ctx))
        if len(out) == count:
            break
    return out


def small_batches(count: int) -> Batches:
    """Per-user attribution batches of 1–2 items (one route per user), ``count`` of them (cycled if needed)."""
    items = _mapped(TopicNames().attributions, EventKind.ATTRIBUTION, 3000, seed=11)
    by_route: dict[Route, list[MappedItem]] = {}
    for item in items:
        by_route.setdefault(item.route, []).append(item)
    batches: Batches = []
    for route, group in by_route.items():
        assert route.endpoint is Endpoint.USER_ATTRIBUTIONS
        for i in range(0, len(group), 2):
            batches.append((route, group[i : i + 2]))
    return list(itertools.islice(itertools.cycle(batches), count))


def large_batches(count: int) -> Batches:
    """500-item transaction batches (items reused across batches: the sandbox accepts duplicates)."""
    items = _mapped(TopicNames().transactions, EventKind.CARD_TRANSACTION, 2400, seed=12)
    items = [i for i in items if i.route.endpoint is Endpoint.TRANSACTIONS][:2000]
    route = items[0].route
    chunks = [items[i : i + 500] for i in range(0, len(items) - 499, 500)]
    return [(route, chunks[n % len(chunks)]) for n in range(count)]


# -- the two clients ------------------------------------------------------------------------------------------


def load_baseline(rev: str) -> ModuleType:
    """``bridge/kard`` as of ``rev``, importable as the package ``kard_baseline`` (its client module returned)."""
    tmp = Path(tempfile.mkdtemp(prefix="kard-baseline-"))
    atexit.register(shutil.rmtree, tmp, True)
    package = tmp / "kard_baseline"
    package.mkdir()
    names = subprocess.run(
        ["git", "ls-tree", "--name-only", f"{rev}:bridge/kard/"], cwd=_ROOT, check=True, capture_output=True, text=True
    ).stdout.split()
    for name in (n for n in names if n.endswith(".py")):
        source = subprocess.run(
            ["git", "show", f"{rev}:bridge/kard/{name}"], cwd=_ROOT, check=True, capture_output=True, text=True
        ).stdout
        (package / name).write_text(source.replace("bridge.kard.", "kard_baseline."))
    sys.path.insert(0, str(tmp))
    return importlib.import_module("kard_baseline.client")


def client_for(module: ModuleType, sb: SandboxProcess) -> Any:
    """A ``KardClient`` of ``module`` built from the default settings, as ``bridge/app.py`` builds it."""
    k, b = KardSettings(), BridgeSettings()
    config = module.KardClientConfig(
        base_url=sb.base_url,
        client_id=sb.client_id,
        client_secret=SecretStr(sb.client_secret),
        connect_timeout=k.connect_timeout,
        read_timeout=k.read_timeout,
        write_timeout=k.write_timeout,
        pool_timeout=k.pool_timeout,
        max_connections=b.max_in_flight,
        max_keepalive_connections=b.max_in_flight,
        keepalive_expiry=k.keepalive_expiry,
        request_deadline=k.request_deadline,
        token_refresh_skew=k.token_refresh_skew,
    )
    return module.KardClient(config, on_request=lambda endpoint, status, seconds: None)


# -- measuring ------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One measured run: one client variant, one workload."""

    variant: str
    workload: str
    requests: int
    seconds: float
    cpu: float
    statuses: Counter[int]

    @property
    def cpu_per_request_ms(self) -> float:
        return 1000 * self.cpu / self.requests

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def line(self) -> str:
        bad = sum(n for s, n in self.statuses.items() if not 200 <= s <= 299)
        return (
            f"{self.variant:>8} {self.workload:>6} {self.requests:>8} {self.rate:>9.0f} "
            f"{self.cpu_per_request_ms:>11.3f} {100 * self.cpu / self.seconds:>7.0f}% {bad:>6}"
        )


HEADER = f"{'variant':>8} {'load':>6} {'requests':>8} {'req/s':>9} {'CPU ms/req':>11} {'CPU':>8} {'non2xx':>6}"


async def measure(
    client: Any, variant: str, workload: str, batches: Batches, concurrency: int, profile: cProfile.Profile | None
) -> Cell:
    """Send every batch from ``concurrency`` tasks; CPU and wall time of the whole set."""
    statuses: Counter[int] = Counter()
    todo = iter(batches)

    async def worker() -> None:
        for route, items in todo:
            result = await client.send_batch(route, items)
            statuses[result.status] += 1

    for route, items in batches[:concurrency]:  # warm-up: token, connections, caches
        await client.send_batch(route, items)
    if profile is not None:
        profile.enable()
    cpu0, t0 = time.process_time(), time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(concurrency):
            tg.create_task(worker())
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if profile is not None:
        profile.disable()
    return Cell(variant, workload, len(batches), seconds, cpu, statuses)


async def _run(args: argparse.Namespace) -> None:
    import bridge.kard.client as current

    variants: dict[str, ModuleType] = {}
    for variant in args.variants.split(","):
        variants[variant] = current if variant == "new" else load_baseline(args.baseline)
    workloads = {"small": small_batches(args.small), "large": large_batches(args.large)}
    print(f"small: {args.small} requests of 1-2 per-user attributions; large: {args.large} x 500 transactions; "
          f"concurrency {args.concurrency}; baseline {args.baseline}")  # fmt: skip
    print(HEADER)
    profile = cProfile.Profile(time.process_time) if args.profile == "cprofile" else None  # CPU, not wall time
    cells: list[Cell] = []
    with start_sandbox(record="none") as sb:
        for round_no in range(args.rounds):
            order = list(variants) if round_no % 2 == 0 else list(reversed(variants))
            for workload, batches in workloads.items():
                for variant in order:
                    async with client_for(variants[variant], sb) as client:
                        cell = await measure(client, variant, workload, batches, args.concurrency, profile)
                    cells.append(cell)
                    print(cell.line(), flush=True)
    if profile is not None:
        pstats.Stats(profile).sort_stats("cumulative").print_stats(45)
        pstats.Stats(profile).sort_stats("tottime").print_stats(40)
    if set(variants) != {"new", "old"}:
        return
    print("\nmedians over rounds (new / old):")
    for workload in workloads:
        def med(variant: str, key: str, wl: str = workload) -> float:
            return statistics.median(getattr(c, key) for c in cells if (c.variant, c.workload) == (variant, wl))

        new_cpu, old_cpu = med("new", "cpu_per_request_ms"), med("old", "cpu_per_request_ms")
        new_rate, old_rate = med("new", "rate"), med("old", "rate")
        pairs = [
            n.cpu_per_request_ms / o.cpu_per_request_ms
            for n, o in zip(
                [c for c in cells if (c.variant, c.workload) == ("new", workload)],
                [c for c in cells if (c.variant, c.workload) == ("old", workload)],
                strict=True,
            )
        ]
        print(
            f"{workload:>6}: CPU ms/req old {old_cpu:.3f} new {new_cpu:.3f} (ratio {new_cpu / old_cpu:.2f}; "
            f"per round {', '.join(f'{p:.2f}' for p in pairs)}); req/s old {old_rate:.0f} new {new_rate:.0f} "
            f"(x{new_rate / old_rate:.2f})"
        )


def main() -> None:
    """Parse arguments and print the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--small", type=int, default=3000, help="small (1-2 item) requests per cell")
    parser.add_argument("--large", type=int, default=200, help="500-item requests per cell")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="A/B alternations")
    parser.add_argument("--baseline", default=_BASELINE, help="git revision of the old bridge/kard")
    parser.add_argument("--variants", default="new,old", help="which clients to run: new, old or both")
    parser.add_argument("--profile", choices=("none", "cprofile"), default="none", help="cProfile the measured sends")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    args = parser.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(_run(args))
    else:
        asyncio.run(_run(args))


if __name__ == "__main__":
    main()
