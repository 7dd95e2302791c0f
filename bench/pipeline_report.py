"""The table, the targets and BENCHMARKS.md for bench_pipeline.py (pure formatting over its rows)."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from typing import Any, Protocol

__all__ = ["ANALYSIS_MARKER", "LATENCY_NOTES", "Row", "machine", "markdown", "table", "targets"]


class Row(Protocol):
    contender: str
    kind: str
    data: str
    records: int
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    sandbox_cpu_seconds: float
    details: dict[str, Any]

    @property
    def rate(self) -> float: ...


LATENCY_NOTES = (
    "`API p50/p99 ms`: from the input record's Kafka timestamp (CreateTime, set when it was produced) to the "
    "moment the sandbox started handling the request that carried it (the sandbox's request log); transaction "
    "and matched-transaction items only (their item id is the event id), so every contender is measured the "
    "same way. `result p50/p99 ms` (kard-bridge only): from the same input timestamp to the Kafka timestamp of "
    "the result record the bridge produced for it (the result value carries the input's timestamp). Both are "
    "shown for the **paced** rows only: there records are produced at a fixed rate while the contender runs; "
    "in the throughput rows every record was in Kafka before the contender started, so their latencies (kept "
    "in the JSON) measure time spent waiting in the backlog."
)


def _run(argv: Sequence[str]) -> str:
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (done.stdout or done.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def machine() -> dict[str, Any]:
    """CPU count and model, memory, kernel, toolchain versions and the load average now."""
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    memory_gb = 0.0
    try:
        with open("/proc/meminfo") as f:
            memory_gb = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2**20
    except (OSError, StopIteration):
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(memory_gb, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "go": _run(["go", "version"]),
        "java": _run(["java", "-version"]),
        "load_average": os.getloadavg(),
    }


def _lat(row: Row, key: str) -> str:
    figures = row.details.get(key) or {}
    if row.kind != "paced" or "p50" not in figures:
        return f"{'-':>13}"
    return f"{figures['p50']:>6.0f}/{figures['p99']:<6.0f}"


def table(rows: Sequence[Row], ceilings: dict[str, float], skipped: Sequence[dict[str, str]] = ()) -> str:
    """One line per contender; ``x ceiling`` is against the ceiling on the same data set."""
    header = (
        f"{'contender':<50} {'data':<7} {'records':>9} {'seconds':>8} {'records/s':>10} {'x ceiling':>9} "
        f"{'CPU s/1k':>8} {'CPU %':>6} {'peak RSS MB':>11} {'API p50/p99 ms':>14} {'result p50/p99':>14} "
        f"{'API CPU %':>9} {'API req':>8} {'items/req':>9} {'max conc':>8}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        cpu_k = 1000 * r.cpu_seconds / r.records if r.records else 0.0
        ceiling = ceilings.get(r.data, 0.0)
        ratio = f"{r.rate / ceiling:>9.2f}" if ceiling and r.kind != "paced" else f"{'-':>9}"
        line = (
            f"{r.contender:<50} {r.data:<7} {r.records:>9,} {r.seconds:>8.2f} {r.rate:>10,.0f} {ratio} "
            f"{cpu_k:>8.3f} {100 * r.cpu_seconds / r.seconds:>5.0f}% {r.peak_rss_mb:>11.0f} "
            f"{_lat(r, 'api_latency_ms'):>14} {_lat(r, 'result_latency_ms'):>14}"
        )
        requests = r.details.get("api_requests")
        if requests:
            line += (
                f" {100 * r.sandbox_cpu_seconds / r.seconds:>8.0f}% {requests:>8,} "
                f"{r.details['api_items_accepted'] / requests:>9.1f} {r.details['api_max_in_flight']:>8}"
            )
        lines.append(line)
    lines.extend(f"{s['contender']:<50} n/a: {s['reason']}" for s in skipped)
    return "\n".join(lines)


def _find(rows: Sequence[Row], kind: str, data: str, latency: float) -> Row | None:
    return next((r for r in rows if r.kind == kind and r.data == data and r.details.get("latency_ms") == latency), None)


def _target(name: str, value: float | None, limit: float, *, at_most: bool = False, detail: str = "") -> dict[str, Any]:
    verdict = "n/a" if value is None else "PASS" if (value <= limit if at_most else value >= limit) else "FAIL"
    return {"target": name, "value": value, "limit": limit, "at_most": at_most, "verdict": verdict, "detail": detail}


def targets(rows: Sequence[Row], latencies: Sequence[float], context: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets as ratios from this run, each PASS / FAIL / n/a (contender missing)."""
    out: list[dict[str, Any]] = []
    first = latencies[0]
    ceiling = next((r for r in rows if r.kind == "ceiling" and r.data == "mix"), None)
    bridge0 = _find(rows, "bridge", "mix", first)
    out.append(
        _target(
            f"kard-bridge +{first:g} ms ≥ 0.5 × ceiling (records/s, mixed data)",
            bridge0.rate / ceiling.rate if bridge0 and ceiling else None,
            0.5,
        )
    )
    for ms in latencies:
        peer = _find(rows, "peer", "txn", ms)
        for kind, label in (("bridge", "kard-bridge"), ("batch", "kard-bridge per-batch results")):
            bridge = _find(rows, kind, "txn", ms)
            if kind == "batch" and bridge is None:
                continue  # not run (--contenders without batch)
            out.append(
                _target(
                    f"{label} ≥ 1.0 × peer at +{ms:g} ms (records/s, transactions-only data)",
                    bridge.rate / peer.rate if bridge and peer else None,
                    1.0,
                )
            )
    for ms in latencies[1:]:
        slow = _find(rows, "bridge", "mix", ms)
        out.append(
            _target(
                f"kard-bridge +{ms:g} ms ≥ 0.8 × kard-bridge +{first:g} ms (records/s, mixed data)",
                slow.rate / bridge0.rate if slow and bridge0 else None,
                0.8,
            )
        )
    linger_ms = 1000 * float(context.get("linger", 0.05))
    for ms in latencies:
        paced = next(
            (
                r
                for r in rows
                if r.kind == "paced" and r.details.get("contender_kind") == "bridge" and r.data == "mix"
                and r.details.get("latency_ms") == ms
            ),
            None,
        )  # fmt: skip
        api_ms = context.get("api_latency_ms", {}).get(ms)
        p99 = (paced.details.get("result_latency_ms") or {}).get("p99") if paced else None
        limit = linger_ms + 3 * api_ms if api_ms is not None else float("nan")
        detail = (
            f"linger {linger_ms:.0f} ms + 3 × API latency {api_ms:.1f} ms (median of 20 sequential 100-item POSTs)"
            if api_ms is not None
            else "API latency not measured"
        )
        out.append(
            _target(
                f"kard-bridge p99 to result ≤ linger + 3 × API latency at +{ms:g} ms, half of max load",
                p99 if api_ms is not None else None,
                limit,
                at_most=True,
                detail=detail,
            )
        )
    backlog = next((r for r in rows if r.kind == "backlog"), None)
    out.append(
        _target(
            f"kard-bridge peak RSS ≤ 300 MB with a {backlog.records:,} backlog" if backlog else "peak RSS ≤ 300 MB",
            backlog.peak_rss_mb if backlog else None,
            300.0,
            at_most=True,
        )
    )
    return out


def _target_line(t: dict[str, Any]) -> str:
    value = "-" if t["value"] is None else f"{t['value']:.2f}"
    sign = "≤" if t["at_most"] else "≥"
    return f"| {t['target']} | {value} | {sign} {t['limit']:.2f} | **{t['verdict']}** | {t['detail']} |"


#: BENCHMARKS.md keeps everything from this line on when the harness rewrites the file (hand-written analysis).
ANALYSIS_MARKER = "<!-- analysis: kept by bench_pipeline.py when it rewrites this file -->"


def markdown(doc: dict[str, Any], table_text: str, notes: Sequence[str]) -> str:
    """The whole BENCHMARKS.md."""
    m, peer = doc["machine"], doc.get("peer") or {}
    lines = [
        "# Benchmarks",
        "",
        "Generated by `bench/bench_pipeline.py` (see [bench/README.md](bench/README.md)); every figure below comes "
        "from **one run on one machine state**, so read the ratios, not the absolute numbers.",
        "",
        f"- command: `{doc['command']}`",
        f"- date: {doc['date']} (wall time {doc['wall_seconds'] / 60:.1f} min)",
        f"- commit: `{doc['git']['commit'][:12]}`"
        + (" (bridge/ had uncommitted changes)" if doc["git"]["bridge_dirty"] else ""),
        f"- machine: {m['cpus']} CPUs, {m['cpu_model']}, {m['memory_gb']} GB, {m['platform']}",
        f"- toolchains: Python {m['python']}; {m['go']}; {m['java']}",
        f"- load average at the start: {', '.join(f'{x:.2f}' for x in doc['load_average_start'])}; "
        f"at the end: {', '.join(f'{x:.2f}' for x in m['load_average'])}",
    ]
    if peer:
        lines.append(f"- peer: {peer.get('description', '')}")
    lines += ["", "## Data", ""]
    for d in doc["data"]:
        lines.append(
            f"- `{d['label']}`: {d['records']:,} records in {d['partitions']} partitions, "
            f"{d['value_bytes'] / max(1, d['records']):.0f} B/value avg — {d['description']}"
        )
    lines += ["", "## Results", "", "```", table_text, "```", "", LATENCY_NOTES, ""]
    lines += ["## Targets", "", "| target | value | limit | verdict | limit from |", "|---|---|---|---|---|"]
    lines += [_target_line(t) for t in doc["targets"]]
    lines += ["", "## Notes", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"
