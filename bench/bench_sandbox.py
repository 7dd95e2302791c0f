"""Throughput of the Kard sandbox: requests/s and items/s with 500-item transaction bodies over real HTTP.

Run: ``.venv/bin/python bench/bench_sandbox.py [--seconds 5] [--concurrency 1,8,32] [--record ids,full]``.

The sandbox runs as a child process (``kard-bridge sandbox --port 0 --record MODE``); an httpx.AsyncClient
posts pre-encoded bodies (every item id unique) from N concurrent tasks for a fixed time. Besides the client's
view (req/s, items/s, latency) the table shows the sandbox's own CPU use, read from ``/proc/<pid>/stat``, and
**capacity**: items validated and stored per CPU-second of the sandbox. Capacity is the figure that answers
"is the sandbox the bottleneck?": the bridge's target is ~20k items/s, so capacity must be well above it.
On a 2-core machine the client and the sandbox share the CPU, so items/s is a lower bound of the sandbox's
speed; compare figures from one run on one machine only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import time
from collections import Counter
from dataclasses import dataclass

import httpx
import orjson

from bridge.sandbox.process import SandboxProcess, start_sandbox

__all__ = ["main"]

ITEMS = 500
_TICKS = os.sysconf("SC_CLK_TCK")


def _template() -> bytes:
    """A 500-item transactions body; ``@@`` in every id is replaced by the request number."""
    items = [
        {
            "type": "transaction",
            "id": f"evt-@@-{i}",
            "attributes": {
                "userId": f"user-{i % 97}",
                "amount": 1000 + i,
                "subtotal": 900,
                "status": "SETTLED",
                "currency": "USD",
                "description": "ADVANCEAUTO 125 MAIN ST",
                "mcc": "5533",
                "cardBIN": "123456",
                "cardLastFour": "4321",
                "cardNetwork": "VISA",
                "direction": "DEBIT",
                "paymentType": "CARD",
                "transactionId": f"txn-@@-{i}",
                "authorizationDate": "2025-01-02T03:04:05Z",
                "settledDate": "2025-01-03T03:04:05.250Z",
                "merchant": {"id": "123456789012345", "name": "ADVANCEAUTO", "addrState": "PA", "addrZipcode": "19147"},
                "processorMids": {"processor": "VISA", "mids": {"vmid": "12345678901", "vsid": "12345678"}},
            },
        }
        for i in range(ITEMS)
    ]
    return orjson.dumps({"data": items})


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Row:
    """One measured cell of the table."""

    record: str
    concurrency: int
    requests: int
    seconds: float
    latencies: list[float]
    statuses: Counter[int]
    server_cpu: float
    client_cpu: float
    accepted: int

    def line(self) -> str:
        items_s = self.accepted / self.seconds
        lat = sorted(self.latencies)
        p50 = statistics.median(lat) * 1000 if lat else 0.0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000 if lat else 0.0
        errors = sum(n for s, n in self.statuses.items() if not 200 <= s < 300)
        capacity = self.accepted / self.server_cpu if self.server_cpu else 0.0
        return (
            f"{self.record:>6} {self.concurrency:>5} {self.requests:>8} {self.requests / self.seconds:>8.1f} "
            f"{items_s:>10,.0f} {p50:>8.1f} {p99:>8.1f} {errors:>6} {100 * self.server_cpu / self.seconds:>7.0f}% "
            f"{100 * self.client_cpu / self.seconds:>7.0f}% {capacity:>12,.0f}"
        )


HEADER = (
    f"{'record':>6} {'conc':>5} {'requests':>8} {'req/s':>8} {'items/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'non2xx':>6} {'srv CPU':>8} {'cli CPU':>8} {'items/srv-CPU-s':>12}"
)


async def _measure(sb: SandboxProcess, record: str, concurrency: int, seconds: float, template: bytes) -> Row:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=sb.base_url, limits=limits, timeout=60, trust_env=False) as client:
        creds = {"client_id": sb.client_id, "client_secret": sb.client_secret}
        token = (await client.post("/v2/auth/token", json=creds)).json()["access_token"]
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        numbers = itertools.count()
        latencies: list[float] = []
        statuses: Counter[int] = Counter()
        sb.control.reset()

        async def worker(deadline: float) -> None:
            while time.perf_counter() < deadline:
                body = template.replace(b"@@", str(next(numbers)).encode())
                started = time.perf_counter()
                response = await client.post("/v2/issuers/bench/transactions", content=body, headers=headers)
                latencies.append(time.perf_counter() - started)
                statuses[response.status_code] += 1

        await client.post("/v2/issuers/bench/transactions", content=template, headers=headers)  # warm-up
        sb.control.reset()
        cpu0, client0, t0 = _cpu_seconds(sb.pid), time.process_time(), time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(concurrency):
                tg.create_task(worker(t0 + seconds))
        elapsed = time.perf_counter() - t0
        server_cpu, client_cpu = _cpu_seconds(sb.pid) - cpu0, time.process_time() - client0
    accepted = sb.control.stats()["items"].get("transactions", {}).get("accepted", 0)
    return Row(record, concurrency, len(latencies), elapsed, latencies, statuses, server_cpu, client_cpu, accepted)


async def _run(args: argparse.Namespace) -> None:
    template = _template()
    print(f"body: {ITEMS} transactions, {len(template) / 1024:.0f} KiB; {args.seconds:g} s per cell")
    print(HEADER)
    for record in args.record.split(","):
        with start_sandbox(record=record) as sb:
            for concurrency in (int(c) for c in args.concurrency.split(",")):
                print((await _measure(sb, record, concurrency, args.seconds, template)).line(), flush=True)


def main() -> None:
    """Parse arguments and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="measuring time per cell")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client concurrencies")
    parser.add_argument("--record", default="ids,full", help="sandbox --record modes to compare")
    args = parser.parse_args()
    try:
        import uvloop  # the client side runs on uvloop too when available
    except ImportError:
        asyncio.run(_run(args))
    else:
        uvloop.run(_run(args))


if __name__ == "__main__":
    main()
