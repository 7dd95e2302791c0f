"""Chaos scenarios: how much input, how many bridges, and which faults in which order.

``FULL`` is the size the reliability claims in RELIABILITY.md rest on (50,000 records, 5 SIGKILLs, 5 rolling
SIGTERMs, 3 broker restarts of which 1 hard, every API fault, network cuts to the API and to Kafka);
``REDUCED`` is the same shape at CI size (one of each main kind of fault); ``SOAK`` is 10 minutes of steady
input at about half of one bridge's measured maximum with a fault every minute, sampling the bridge's RSS, open
file descriptors and asyncio tasks (no process kills, so one process lives through it all).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

__all__ = ["FAULT_KINDS", "FULL", "REDUCED", "SOAK", "Scenario", "scenario"]

#: Every fault the runner can inject, with a one-line description (see ``tests/chaos/faults.py``).
FAULT_KINDS: dict[str, str] = {
    "bridge-kill": "SIGKILL one bridge process mid-batch, restart it 2 s later",
    "bridge-roll": "SIGTERM one bridge process (graceful drain), restart it once it exited",
    "broker-restart": "clean stop and start of one Kafka node",
    "broker-kill": "SIGKILL one Kafka node, start it again 10 s later",
    "api-429": "sandbox answers 70 % of requests 429 with Retry-After: 1",
    "api-5xx": "sandbox answers 50 % of requests 500/502/503/504",
    "api-slow": "sandbox adds 0.5-2.5 s latency to every answer",
    "api-hang": "sandbox never answers 30 % of requests (the bridge's read timeout fires)",
    "api-drop-after": "sandbox stores 30 % of requests, then closes the connection without an answer",
    "api-outage": "sandbox answers every request 503 (Retry-After: time left) for the outage length",
    "api-cut": "TCP proxy between bridges and the API resets every connection and refuses new ones",
    "api-blackhole": "TCP proxy between bridges and the API stops forwarding (connections hang)",
    "kafka-cut": "TCP proxies between bridges and every Kafka node reset every connection",
}


@dataclass(frozen=True, slots=True)
class Scenario:
    """One chaos run's shape."""

    name: str
    records: int
    faults: tuple[str, ...]
    bridges: int = 3
    brokers: int = 3
    partitions: int = 6
    users: int = 400
    poison_every: int = 250  # one catalogue poison line per this many records
    session_timeout: float = 6.0
    fault_seconds: float = 10.0  # how long storms and cuts last
    outage_seconds: float = 60.0
    settle_seconds: float = 3.0  # quiet time between a recovery and the next fault
    exactly_once: bool = False
    bridge_env: dict[str, str] = field(default_factory=dict)
    rate: float | None = None  # records/s to produce at; None: spread ``records`` over the fault schedule
    fault_interval: float | None = None  # start faults on this period (the soak); None: back to back
    record_mode: str = "full"  # the sandbox's --record: "none" skips the API-side checks (long soaks)
    sample_processes: bool = False  # sample each bridge's RSS, open fds and asyncio tasks every 5 s

    @property
    def recovery_target(self) -> float:
        """2 × session timeout + 5 s, the issue's bound on time to recover after a fault."""
        return 2 * self.session_timeout + 5

    def estimated_seconds(self) -> float:
        """A rough length of the fault schedule, used to pace the input over it."""
        total = 0.0
        for kind in self.faults:
            if kind == "api-outage":
                total += self.outage_seconds + 8
            elif kind.startswith("api-") or kind == "kafka-cut":
                total += self.fault_seconds + 8
            elif kind.startswith("broker"):
                total += 25
            else:
                total += 14
        return total + len(self.faults) * self.settle_seconds


FULL = Scenario(
    name="full",
    records=50_000,
    faults=(
        "bridge-kill", "api-429", "bridge-roll", "broker-restart", "bridge-kill", "api-5xx", "bridge-roll",
        "api-cut", "bridge-kill", "broker-kill", "bridge-roll", "api-slow", "bridge-kill", "api-hang",
        "bridge-roll", "kafka-cut", "api-drop-after", "bridge-kill", "broker-restart", "api-blackhole",
        "api-outage", "bridge-roll",
    ),
)  # fmt: skip

SOAK = Scenario(
    name="soak",
    records=420_000,  # 10 minutes at 700 records/s, about half of one bridge's measured maximum
    rate=700.0,
    bridges=1,
    faults=(
        "api-429", "api-5xx", "api-slow", "api-cut", "kafka-cut", "broker-restart", "api-hang", "api-drop-after",
        "api-outage", "api-blackhole",
    ),
    fault_seconds=10.0,
    outage_seconds=20.0,
    fault_interval=60.0,
    record_mode="none",
    sample_processes=True,
)  # fmt: skip

REDUCED = Scenario(
    name="reduced",
    records=4_000,
    faults=(
        "bridge-kill", "api-429", "bridge-roll", "broker-kill", "api-5xx", "api-cut", "kafka-cut", "api-outage",
    ),
    users=200,
    fault_seconds=5.0,
    outage_seconds=12.0,
    settle_seconds=2.0,
)  # fmt: skip


def scenario(name: str, **changes: object) -> Scenario:
    """``FULL`` or ``REDUCED`` by name, with field overrides (None values are ignored)."""
    base = {"full": FULL, "reduced": REDUCED, "soak": SOAK}[name]
    kept = {k: v for k, v in changes.items() if v is not None}
    for kind in kept.get("faults", base.faults):  # type: ignore[attr-defined]
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; known: {', '.join(FAULT_KINDS)}")
    return replace(base, **kept)  # type: ignore[arg-type]
