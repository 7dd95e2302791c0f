"""AdaptiveConcurrency: additive increase per steady RTT window, multiplicative decrease on back-pressure."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pipeline.concurrency import AdaptiveConcurrency

_LONG = os.environ.get("KARD_BRIDGE_HYPOTHESIS_LONG") == "1"
RTT = 0.1


class Driver:
    """Plays a saturated sender against a limiter, one RTT window per :meth:`window` call.

    A window's answers arrive early in it, all but the last; the last lands just after the window's end
    (one baseline RTT after it opened), so it closes the window and the limit read afterwards is the
    decision about exactly this call's answers.
    """

    def __init__(self, limiter: AdaptiveConcurrency) -> None:
        self.limiter = limiter
        self.now = 0.0
        self.primed = False

    def window(self, rtt: float = RTT, *, back_pressure: int = 0, saturated: bool = True) -> int:
        """One window: ``limit`` answers (``back_pressure`` of them 429s); returns the limit after it."""
        ac = self.limiter
        if not self.primed:  # the very first answer opens the first window
            self.primed = True
            ac.on_start(ac.limit if saturated else 0)
            ac.on_response(self.now, rtt)
        baseline = ac.statistics().rtt_baseline or rtt
        short, long = min(baseline, rtt), max(baseline, rtt)
        n = max(ac.limit, back_pressure, 1)
        start = self.now
        for i in range(n):
            ac.on_start(ac.limit if saturated else 0)
            self.now = start + (1.01 * long if i == n - 1 else 0.5 * short * i / n)
            if i < back_pressure:
                ac.on_back_pressure(self.now, 0.001)
            else:
                ac.on_response(self.now, rtt)
        return ac.limit


def test_starts_at_the_initial_limit_clamped_to_the_ceiling() -> None:
    """The initial limit is 1 by default, and a configured initial never exceeds the maximum."""
    assert AdaptiveConcurrency(16).limit == 1
    assert AdaptiveConcurrency(16, initial=4).limit == 4
    assert AdaptiveConcurrency(3, initial=10).limit == 3
    assert AdaptiveConcurrency(3, initial=0).limit == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_limit": 0},
        {"max_limit": 4, "decrease_ratio": 1.0},
        {"max_limit": 4, "decrease_ratio": 0.0},
        {"max_limit": 4, "ewma_alpha": 0.0},
        {"max_limit": 4, "rtt_deviation_scale": -1.0},
    ],
)
def test_out_of_range_parameters_are_refused(kwargs: dict[str, float]) -> None:
    """A ceiling below 1 or a ratio/weight outside its interval raises ValueError."""
    with pytest.raises(ValueError, match="must be"):
        AdaptiveConcurrency(**kwargs)  # type: ignore[arg-type]


def test_steady_latency_adds_one_per_window_up_to_the_ceiling() -> None:
    """While the RTT holds and the limit is in use, every window raises the limit by exactly one."""
    driver = Driver(AdaptiveConcurrency(5))
    driver.window()  # the first window only measures the baseline
    limits = [driver.window() for _ in range(6)]
    assert limits == [2, 3, 4, 5, 5, 5]
    assert driver.limiter.statistics().increases == 4


def test_no_increase_when_the_limit_is_not_reached() -> None:
    """An idle or lightly loaded bridge gives no evidence for more concurrency: the limit holds."""
    driver = Driver(AdaptiveConcurrency(8, initial=3))
    for _ in range(10):
        assert driver.window(saturated=False) == 3


def test_back_pressure_cuts_once_per_window() -> None:
    """Many 429s in one window cut the limit once, multiplicatively (floor, at least by one)."""
    driver = Driver(AdaptiveConcurrency(32, initial=32, decrease_ratio=0.5))
    driver.window()
    assert driver.window(back_pressure=32) == 16
    assert driver.window(back_pressure=16) == 8
    assert driver.limiter.statistics().decreases == 2


def test_a_small_limit_still_decreases_by_one_and_never_below_one() -> None:
    """floor(limit × 0.9) would keep a small limit unchanged; the cut is at least one, down to 1."""
    driver = Driver(AdaptiveConcurrency(8, initial=3))
    driver.window()
    assert [driver.window(back_pressure=1) for _ in range(4)] == [2, 1, 1, 1]


def test_a_latency_spike_cuts_the_limit() -> None:
    """A window whose RTT is well above the baseline counts as back-pressure."""
    driver = Driver(AdaptiveConcurrency(20, initial=10))
    for _ in range(5):
        driver.window()  # baseline 0.1 s; the limit grows to 14
    before = driver.limiter.limit
    assert driver.window(rtt=RTT * 2) == int(before * 0.9)


def test_latency_within_tolerance_neither_cuts_nor_grows() -> None:
    """An RTT a little above the baseline (under the spike threshold) holds the limit."""
    driver = Driver(AdaptiveConcurrency(20, initial=10))
    driver.window()
    assert driver.window(rtt=RTT * 1.05) == 10


def test_back_pressure_answers_are_not_latency_samples() -> None:
    """Instant 429s say nothing about the service time: the baseline only moves with processed requests."""
    driver = Driver(AdaptiveConcurrency(8, initial=8))
    driver.window()
    baseline = driver.limiter.statistics().rtt_baseline
    driver.window(back_pressure=8)
    assert driver.limiter.statistics().rtt_baseline == baseline == pytest.approx(RTT)


def test_the_first_back_pressure_without_a_baseline_waits_for_its_window() -> None:
    """Before any latency sample, the window is sized by the failing request's RTT: one cut per window."""
    ac = AdaptiveConcurrency(10, initial=10, decrease_ratio=0.5)
    for i in range(10):
        ac.on_back_pressure(0.01 * i, 0.5)
    assert ac.limit == 10  # the first window (0.5 s) is still open
    ac.on_back_pressure(0.6, 0.5)
    assert ac.limit == 5


# -- properties ----------------------------------------------------------------------------------------

_event = st.tuples(
    st.sampled_from(["start", "response", "back_pressure"]),
    st.floats(min_value=0.0, max_value=0.5),  # time step
    st.floats(min_value=0.0, max_value=5.0),  # rtt
    st.integers(min_value=0, max_value=100),  # in flight
)


@settings(max_examples=2000 if _LONG else 200, deadline=None)
@given(
    max_limit=st.integers(min_value=1, max_value=64),
    initial=st.integers(min_value=1, max_value=80),
    ratio=st.floats(min_value=0.05, max_value=0.95),
    events=st.lists(_event, max_size=300),
)
def test_limit_always_within_one_and_the_ceiling(
    max_limit: int, initial: int, ratio: float, events: list[tuple[str, float, float, int]]
) -> None:
    """Whatever the outcomes, times and RTTs, the limit stays in [1, max_limit]."""
    ac = AdaptiveConcurrency(max_limit, initial=initial, decrease_ratio=ratio)
    now = 0.0
    for kind, step, rtt, in_flight in events:
        now += step
        if kind == "start":
            ac.on_start(in_flight)
        elif kind == "response":
            ac.on_response(now, rtt)
        else:
            ac.on_back_pressure(now, rtt)
        assert 1 <= ac.limit <= max_limit


@settings(max_examples=2000 if _LONG else 200, deadline=None)
@given(
    initial=st.integers(min_value=1, max_value=64),
    steps=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=0.3), st.floats(min_value=0.001, max_value=2.0)), max_size=300
    ),
)
def test_no_increase_while_back_pressure_keeps_coming(initial: int, steps: list[tuple[float, float]]) -> None:
    """When every answer comes with a 429 beside it, the limit never grows, whatever the latencies."""
    ac = AdaptiveConcurrency(64, initial=initial)
    now, previous = 0.0, ac.limit
    for step, rtt in steps:
        now += step
        ac.on_start(ac.limit)
        ac.on_back_pressure(now, rtt)
        ac.on_response(now, rtt)
        assert ac.limit <= previous
        previous = ac.limit


@settings(max_examples=1000 if _LONG else 100, deadline=None)
@given(
    max_limit=st.integers(min_value=1, max_value=40),
    initial=st.integers(min_value=1, max_value=40),
    rtt=st.floats(min_value=0.001, max_value=10.0),
    jitter=st.lists(st.floats(min_value=-0.005, max_value=0.005), min_size=1, max_size=20),
)
def test_steady_latency_converges_upwards_to_the_ceiling(
    max_limit: int, initial: int, rtt: float, jitter: list[float]
) -> None:
    """With a steady RTT (±0.5 %) and a saturated sender, the limit only grows and reaches the ceiling."""
    driver = Driver(AdaptiveConcurrency(max_limit, initial=initial))
    previous = driver.limiter.limit
    for window in range(2 * max_limit + 2):
        limit = driver.window(rtt=rtt * (1 + jitter[window % len(jitter)]))
        assert limit >= previous
        previous = limit
    assert driver.limiter.limit == max_limit
