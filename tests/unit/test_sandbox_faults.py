"""The sandbox's fault engine without a server: decisions from a config, a seed and a fake clock."""

from __future__ import annotations

import pydantic
import pytest

from bridge.sandbox.fault_config import parse_fault_config
from bridge.sandbox.faults import FaultEngine


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _engine(document: object, clock: FakeClock | None = None) -> FaultEngine:
    return FaultEngine(parse_fault_config(document), clock=clock or FakeClock())


def test_same_seed_same_decisions() -> None:
    """Two engines with one seed make identical error and latency draws."""
    doc = {"seed": 3, "error_rates": {"500": 0.3}, "latency": {"dist": "uniform", "low": 0.0, "high": 1.0}}
    draws = []
    for engine in (_engine(doc), _engine(doc)):
        decisions = [engine.decide("fraud") for _ in range(50)]
        draws.append([(d.status, d.latency) for d in decisions])
    assert draws[0] == draws[1]
    assert any(status == 500 for status, _ in draws[0]) and any(status is None for status, _ in draws[0])


def test_scope_after_and_times() -> None:
    """A rule touches only its endpoints, skips ``after`` matches and stops after ``times`` hits."""
    engine = _engine({"endpoint": ["fraud"], "error_rates": {"503": 1.0}, "after": 1, "times": 2})
    assert engine.decide("transactions").status is None
    assert [engine.decide("fraud").status for _ in range(5)] == [None, 503, 503, None, None]
    assert _engine({"error_rates": {"500": 1.0}}).decide("token").status is None
    assert _engine({"endpoint": "*", "error_rates": {"500": 1.0}}).decide("token").status == 500


def test_outage_window_follows_the_clock() -> None:
    """An outage starts after ``start_in`` and ends ``duration`` later; Retry-After is the time left."""
    clock = FakeClock()
    engine = _engine({"outage": {"duration": 10, "start_in": 5}}, clock)
    assert engine.decide("ping").immediate_status is None
    clock.now += 6
    decision = engine.decide("ping")
    assert decision.immediate_status == 503 and decision.headers["Retry-After"] == "9"
    clock.now += 10
    assert engine.decide("ping").immediate_status is None


def test_rate_limit_refills() -> None:
    """The token bucket admits its burst, refuses with 429, and admits again after refilling."""
    clock = FakeClock()
    engine = _engine({"rate_limit": {"rps": 2, "burst": 2}}, clock)
    assert [engine.decide("ping").immediate_status for _ in range(3)] == [None, None, 429]
    clock.now += 0.5
    assert engine.decide("ping").immediate_status is None


def test_capacity_reject_counts_and_releases() -> None:
    """Capacity in reject mode refuses beyond max_in_flight until earlier requests are released."""
    engine = _engine({"capacity": {"max_in_flight": 1}})
    first = engine.decide("transactions")
    assert first.immediate_status is None and engine.decide("transactions").immediate_status == 429
    engine.release(first)
    assert engine.decide("transactions").immediate_status is None


def test_invalid_configs_are_refused() -> None:
    """Unknown endpoints, non-error statuses and rates above 1 are configuration errors."""
    for bad in (
        {"endpoint": "nope"},
        {"error_rates": {"200": 0.1}},
        {"error_rates": {"500": 0.7, "503": 0.7}},
        {"x": 1},
    ):
        with pytest.raises(pydantic.ValidationError):
            parse_fault_config(bad)
