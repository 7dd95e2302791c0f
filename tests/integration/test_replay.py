"""``kard-bridge replay`` against the real broker, the real sandbox and the real bridge.

The scenarios: a poisoned batch is fixed and replayed and every replayed record gets its result; an
interrupted replay (``--max``, then SIGINT) resumes without duplicates; the loop guard stops a record
that keeps failing; a dry run writes and commits nothing. Conditions are polled, never slept on.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from bridge.config import Settings, load_settings
from bridge.events.outcomes import HEADER_REPLAY_COUNT, FailureHeaders, ReasonClass, replay_count_of
from bridge.records import Header
from bridge.replay import Filters
from bridge.replay.cli import default_group
from bridge.replay.replayer import HEADER_REPLAY_ID, HEADER_REPLAYED_FROM, ReplayOptions, ReplayStats, run_replay
from bridge.replay.report import Reporter
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    Message,
    OutputRecord,
    Produced,
    committed_offsets,
    end_offsets,
    expected_items,
    generated_messages,
    item_wire_key,
    produce,
    read_outcomes,
    read_records,
    received_key,
    wait_committed_to_end,
    wait_until,
)
from tests.fixtures.kafka import TopicFactory

pytestmark = pytest.mark.kafka

NOW = datetime.now(UTC)


# -- helpers ---------------------------------------------------------------------------------------------


def settings_for(bootstrap: str) -> Settings:
    """Settings that reach the test broker (the replay needs nothing else)."""
    return load_settings(kafka={"bootstrap_servers": bootstrap, "fetch_max_wait": 0.05})


async def replay(bootstrap: str, options: ReplayOptions) -> tuple[ReplayStats, str]:
    """Run a replay in this event loop; returns its counters and what it printed on stdout."""
    out, err = io.StringIO(), io.StringIO()
    reporter = Reporter(out, err, filters=options.filters, target=options.to_topic, dry_run=options.dry_run)
    stats = await run_replay(settings_for(bootstrap), options, reporter, handle_signals=False)
    return stats, out.getvalue()


def cli_env(bootstrap: str) -> dict[str, str]:
    """This environment without bridge settings, pointed at the test broker."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "KARD_", "BRIDGE_"))}
    env["KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
    return env


async def replay_cli(bootstrap: str, *args: str) -> tuple[int, list[dict[str, Any]]]:
    """Run ``python -m bridge replay ARGS --json`` as a process; returns the exit code and the JSON lines."""
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge", "replay", *args, "--json"],
        env=cli_env(bootstrap),
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.stderr.count(b"Traceback") == 0, proc.stderr.decode(errors="replace")
    return proc.returncode, [orjson.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def failure_message(
    dlq: str, source: str, index: int, *, replay_count: int = 0, reason_class: ReasonClass = ReasonClass.REJECTED
) -> Message:
    """A failure record as the bridge writes it: the input's key, value and headers plus ``kard-bridge.*``."""
    rejected = reason_class is ReasonClass.REJECTED
    failure = FailureHeaders(
        reason="http_409" if rejected else "malformed_json",
        reason_class=reason_class,
        message="synthetic failure",
        http_status=409 if rejected else None,
        attempts=1 if rejected else 0,
        first_failure_at=NOW,
        last_failure_at=NOW,
        source_topic=source,
        source_partition=index % 3,
        source_offset=index,
        bridge_version="test",
        replay_count=replay_count,
    )
    own: tuple[Header, ...] = (("origin", f"input-{index}".encode()),)
    if replay_count:  # what a replayed record that failed again carries
        own += ((HEADER_REPLAY_ID, b"earlier-run"), (HEADER_REPLAYED_FROM, f"{dlq}:0:{index}".encode()))
    return Message(dlq, f"user-{index}".encode(), f'{{"n":{index}}}'.encode(), own + failure.to_headers())


def copies_by_origin(records: Sequence[OutputRecord]) -> Counter[bytes]:
    """How many replayed copies each DLQ record has in ``records`` (by ``kard-bridge.replayed-from``)."""
    return Counter(dict(r.headers)[HEADER_REPLAYED_FROM] for r in records if HEADER_REPLAYED_FROM in dict(r.headers))


def coord_text(record: Produced | OutputRecord) -> bytes:
    return f"{record.topic}:{record.partition}:{record.offset}".encode()


async def _synthetic_dlq(
    kafka_bootstrap: str, topic_factory: TopicFactory, count: int, **failure: Any
) -> tuple[str, str, list[Produced]]:
    """A source topic and its DLQ (2 partitions) holding ``count`` failure records; returns both names and them."""
    source = topic_factory(partitions=3)
    dlq = topic_factory(partitions=2, prefix=f"{source}.dlq")
    produced = await produce(kafka_bootstrap, [failure_message(dlq, source, i, **failure) for i in range(count)])
    return source, dlq, produced


# -- 1. a poisoned batch is fixed and replayed --------------------------------------------------------------


async def test_rejected_records_are_replayed_after_the_fix_and_all_get_results(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """Items the API rejected land on the DLQ; once the API accepts them, a replay delivers each exactly once."""
    prefix = f"rp{uuid.uuid4().hex[:4]}"
    poisoned = (f"{prefix}-00000001", f"{prefix}-00000015")  # event ids of sequence 10-19 and 150-159
    sandbox.control.set_faults(
        {"rules": [{"endpoint": "transactions", "reject_items": {"prefix": p, "fields": ["id"]}} for p in poisoned]}
    )
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 300, users=400, prefix=prefix))
    first = await bridge_factory(sandbox, bridge={"linger": 0.2})
    await wait_committed_to_end(kafka_bootstrap, first.group_id, bridge_topics.inputs, 120, alive=first.check)
    await first.stop()
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    rejected = {o.record for o in outcomes.failures if o.failure and o.failure.reason_class is ReasonClass.REJECTED}
    assert len(rejected) >= 10 and len(outcomes.failures) == len(rejected)

    sandbox.control.clear_faults()
    code, lines = await replay_cli(kafka_bootstrap, "--input", bridge_topics.transactions, "--reason-class", "rejected")
    summary = lines[-1]["summary"]
    assert code == 0, summary
    assert (summary["replayed"], summary["errors"], summary["stopped"]) == (len(rejected), 0, "end")
    assert {line["dlq"]["offset"] for line in lines[:-1] if line["action"] == "replay"} == {r.offset for r in rejected}

    second = await bridge_factory(sandbox, group_id=first.group_id, bridge={"linger": 0.2})
    await wait_committed_to_end(kafka_bootstrap, second.group_id, bridge_topics.inputs, 120, alive=second.check)
    await second.stop()

    copies = [
        r for r in await read_records(kafka_bootstrap, bridge_topics.inputs) if HEADER_REPLAYED_FROM in dict(r.headers)
    ]
    assert copies_by_origin(copies) == Counter(coord_text(r) for r in rejected), "one copy per failure record"
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    for copy in copies:
        outcome = outcomes.single((copy.topic, copy.partition, copy.offset))
        assert outcome.result is not None, f"replayed copy {copy.offset} failed again: {outcome.failure}"
        assert dict(copy.headers)[HEADER_REPLAY_COUNT] == b"1"
    originals: dict[bytes | None, Produced] = {r.value: r for r in produced}
    for copy in copies:
        original = originals[copy.value]
        assert copy.key == original.key
        assert [h for h in copy.headers if not h[0].startswith("kard-bridge.")] == list(original.headers)
    mapped = expected_items(produced, first.settings)
    received = Counter(received_key(entry) for entry in await asyncio.to_thread(sandbox.control.received))
    assert received == Counter(item_wire_key(item) for item in mapped.values()), "every item arrived exactly once"


# -- 2. an interrupted replay resumes without duplicates ----------------------------------------------------


async def test_replay_stopped_by_max_resumes_where_it_stopped(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """--max 3 replays three records; the next run replays the rest; each record is republished once."""
    source, dlq, produced = await _synthetic_dlq(kafka_bootstrap, topic_factory, 10)
    group = f"replay-{uuid.uuid4().hex[:8]}"

    first, _ = await replay(kafka_bootstrap, ReplayOptions(dlq, group, max_records=3))
    assert (first.replayed, first.stopped, first.exit_code) == (3, "max", 0)
    assert sum(first.committed.values()) == 3
    second, _ = await replay(kafka_bootstrap, ReplayOptions(dlq, group))
    assert (second.total, second.replayed, second.stopped) == (7, 7, "end")
    third, _ = await replay(kafka_bootstrap, ReplayOptions(dlq, group))
    assert (third.total, third.replayed) == (0, 0)

    copies = await read_records(kafka_bootstrap, [source])
    assert copies_by_origin(copies) == Counter(coord_text(r) for r in produced)
    assert {dict(c.headers)[HEADER_REPLAY_ID].decode() for c in copies} == {first.replay_id, second.replay_id}
    committed = await committed_offsets(kafka_bootstrap, group)
    assert committed == await end_offsets(kafka_bootstrap, [dlq])


async def test_replay_interrupted_by_sigint_resumes_without_duplicates(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """SIGINT stops a rate-limited replay after committing what was acked; a second run finishes, no duplicates."""
    source, dlq, produced = await _synthetic_dlq(kafka_bootstrap, topic_factory, 16)
    proc = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "bridge", "replay", "--from-topic", dlq, "--rate", "2", "--json"],
        env=cli_env(kafka_bootstrap),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:

        async def some_copies() -> bool:
            ends = await end_offsets(kafka_bootstrap, [source])
            return sum(ends.values()) >= 3

        await wait_until(some_copies, 60, what="the first replayed copies")
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, stderr.decode(errors="replace")
    summary = orjson.loads(stdout.splitlines()[-1])["summary"]
    assert summary["stopped"] == "interrupted" and 3 <= summary["replayed"] < len(produced)
    assert sum(summary["committed"].values()) == summary["replayed"], "everything acked was committed"

    code, lines = await replay_cli(kafka_bootstrap, "--from-topic", dlq)
    assert code == 0 and lines[-1]["summary"]["replayed"] == len(produced) - summary["replayed"]
    copies = await read_records(kafka_bootstrap, [source])
    assert copies_by_origin(copies) == Counter(coord_text(r) for r in produced), "each record exactly once"


# -- 3. the loop guard ------------------------------------------------------------------------------------------


async def test_loop_guard_stops_a_record_that_keeps_failing(
    kafka_bootstrap: str, bridge_topics: BridgeTopics, bridge_factory: BridgeFactory, sandbox: SandboxProcess
) -> None:
    """A record the API keeps rejecting is replayed --max-replays times, then blocked and reported, not republished."""
    prefix = f"lg{uuid.uuid4().hex[:4]}"
    sandbox.control.set_faults(
        {"endpoint": "transactions", "reject_items": {"prefix": f"{prefix}-00000001", "fields": ["id"]}}
    )
    await produce(kafka_bootstrap, generated_messages(bridge_topics, 60, users=100, prefix=prefix))
    running = await bridge_factory(sandbox, bridge={"linger": 0.1})
    dlq = bridge_topics.dlq(bridge_topics.transactions)
    options = ReplayOptions(dlq, default_group(dlq), Filters(max_replays=2))

    async def settled() -> int:
        await wait_committed_to_end(kafka_bootstrap, running.group_id, bridge_topics.inputs, 120, alive=running.check)
        return sum((await end_offsets(kafka_bootstrap, [dlq])).values())

    rejected = await settled()
    assert rejected >= 5
    for generation in (1, 2):
        stats, _ = await replay(kafka_bootstrap, options)
        assert (stats.replayed, stats.blocked) == (rejected, 0)
        assert await settled() == rejected * (generation + 1), "every copy was rejected again"
    inputs_before = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
    stats, printed = await replay(kafka_bootstrap, options)
    assert (stats.replayed, stats.blocked, stats.exit_code) == (0, rejected, 0)
    assert printed.count("blocked (replayed 2 times, limit 2)") == rejected
    assert await end_offsets(kafka_bootstrap, bridge_topics.inputs) == inputs_before, "nothing was republished"
    assert await committed_offsets(kafka_bootstrap, options.group_id) == await end_offsets(kafka_bootstrap, [dlq])
    await running.stop()

    failures = await read_records(kafka_bootstrap, [dlq])
    counts = Counter(replay_count_of(r.headers) for r in failures)
    assert counts == {0: rejected, 1: rejected, 2: rejected}, "the count survived each new failure"


# -- 4. a dry run writes nothing and commits nothing ----------------------------------------------------------


async def test_dry_run_lists_the_selection_and_writes_and_commits_nothing(
    kafka_bootstrap: str, topic_factory: TopicFactory
) -> None:
    """--dry-run lists what would be replayed (and what the loop guard blocks) without producing or committing."""
    source = topic_factory(partitions=3)
    dlq = topic_factory(partitions=2, prefix=f"{source}.dlq")
    messages = [
        failure_message(dlq, source, 0),
        failure_message(dlq, source, 1, reason_class=ReasonClass.DECODE),
        failure_message(dlq, source, 2, replay_count=3),
        failure_message(dlq, source, 3, replay_count=2),
    ]
    await produce(kafka_bootstrap, messages)
    code, lines = await replay_cli(kafka_bootstrap, "--from-topic", dlq, "--dry-run", "--reason-class", "rejected")
    assert code == 0
    listed = {(line["source"]["offset"], line["action"]) for line in lines[:-1]}
    assert listed == {(0, "replay"), (2, "block"), (3, "replay")}
    summary = lines[-1]["summary"]
    assert (summary["replayed"], summary["skipped"], summary["blocked"], summary["committed"]) == (2, 1, 1, {})

    stats, table = await replay(kafka_bootstrap, ReplayOptions(dlq, default_group(dlq), dry_run=True))
    assert stats.replayed == 3 and table.splitlines()[0].startswith("DLQ")
    assert "would replay           3" in table

    assert sum((await end_offsets(kafka_bootstrap, [source])).values()) == 0, "nothing was written"
    assert await committed_offsets(kafka_bootstrap, default_group(dlq)) == {}, "nothing was committed"
