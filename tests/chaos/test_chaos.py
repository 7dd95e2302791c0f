"""The reduced chaos scenario in CI: 3 bridge processes, a 3-node cluster, one fault of each main kind.

Same runner and checker as the full run (``scripts/chaos``); fails on any loss, over-commit, reordering
within a key, crash, unclean SIGTERM exit or recovery slower than 2 × session timeout + 5 s.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.chaos.runner import ChaosRun
from tests.chaos.scenario import REDUCED

pytestmark = [pytest.mark.kafka, pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.fixture
def no_external_kafka() -> None:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        pytest.skip("the chaos suite starts, stops and kills its own brokers; it cannot use an external Kafka")


async def test_reduced_chaos_scenario_loses_nothing(tmp_path: Path, no_external_kafka: None) -> None:
    report = await ChaosRun(REDUCED, tmp_path / "chaos", say=print).run()
    table = report.table()
    print(table)
    assert report.passed, table
    # The run must have exercised what it claims: every fault, real traffic, poison and retries.
    assert len(report.faults) == len(REDUCED.faults)
    assert report.inputs >= REDUCED.records and report.poison > 0 and report.failed >= report.poison
    assert report.delivered + report.failed == report.inputs
