"""Retry policy: full-jitter backoff, server hints win (capped), and a retry-time budget."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pipeline.retry import Backoff, RetryPolicy, RetryState
from tests.event_strategies import EXAMPLES

_RAND = st.floats(0.0, 1.0, exclude_max=True)


def test_backoff_is_full_jitter_of_an_exponential_ceiling() -> None:
    """The delay is ``rand`` times ``min(cap, base * multiplier ** (attempt - 1))``."""
    backoff = Backoff(base=0.2, cap=30.0, multiplier=2.0)
    assert backoff.delay(1, 0.5) == pytest.approx(0.1)
    assert backoff.delay(3, 0.5) == pytest.approx(0.4)
    assert backoff.delay(20, 0.5) == pytest.approx(15.0)
    assert backoff.delay(4, 0.0) == 0.0


def test_backoff_survives_huge_attempt_numbers() -> None:
    """An attempt count that would overflow a float still yields the cap."""
    assert Backoff().ceiling(100_000) == 30.0


def test_backoff_rejects_bad_arguments() -> None:
    """Attempts count from 1, ``rand`` lies in [0, 1), and settings must make sense."""
    with pytest.raises(ValueError, match="attempt"):
        Backoff().delay(0, 0.5)
    with pytest.raises(ValueError, match="rand"):
        Backoff().delay(1, 1.0)
    with pytest.raises(ValueError, match="base"):
        Backoff(base=1.0, cap=0.5)
    with pytest.raises(ValueError, match="multiplier"):
        Backoff(multiplier=0.5)


@settings(max_examples=EXAMPLES(200), deadline=None)
@given(attempt=st.integers(1, 10_000), rand=_RAND)
def test_backoff_delay_stays_under_its_growing_ceiling(attempt: int, rand: float) -> None:
    """Every delay lies in [0, ceiling), and the ceiling never shrinks as attempts grow."""
    backoff = Backoff()
    ceiling = backoff.ceiling(attempt)
    assert 0.0 <= backoff.delay(attempt, rand) <= ceiling <= backoff.cap
    assert backoff.ceiling(attempt + 1) >= ceiling


def test_state_counts_attempts_and_backs_off() -> None:
    """Without hints, successive failures draw from growing ceilings and are counted."""
    state = RetryPolicy(backoff=Backoff(base=1.0, cap=8.0)).new_state()
    delays = [state.next_delay(now=float(t), retry_after=None, rand=0.5) for t in range(5)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert (state.attempts, state.first_failure) == (5, 0.0)


def test_server_hint_wins_over_backoff() -> None:
    """A ``Retry-After`` hint replaces the backoff delay."""
    state = RetryPolicy().new_state()
    assert state.next_delay(now=0.0, retry_after=7.0, rand=0.9) == 7.0


def test_server_hint_is_capped() -> None:
    """A hint longer than ``max_retry_after`` is cut to it."""
    state = RetryPolicy(max_retry_after=300.0).new_state()
    assert state.next_delay(now=0.0, retry_after=86_400.0, rand=0.5) == 300.0
    assert state.next_delay(now=1.0, retry_after=math.inf, rand=0.5) == 300.0


@pytest.mark.parametrize("hint", [0.0, -3.0, math.nan])
def test_zero_or_invalid_hint_still_waits_a_jitter(hint: float) -> None:
    """A zero, negative or NaN hint waits ``rand * hint_jitter`` so instances do not retry in lockstep."""
    state = RetryPolicy(hint_jitter=0.2).new_state()
    assert state.next_delay(now=0.0, retry_after=hint, rand=0.5) == pytest.approx(0.1)


def test_budget_exhausts_after_max_retry_time_since_first_failure() -> None:
    """The budget runs from the first failure and is exhausted once ``max_retry_time`` has passed."""
    state = RetryPolicy(max_retry_time=60.0).new_state()
    assert not state.exhausted(1000.0)  # no failure yet
    state.next_delay(now=100.0, retry_after=None, rand=0.1)
    state.next_delay(now=130.0, retry_after=None, rand=0.1)
    assert state.deadline == 160.0
    assert not state.exhausted(159.9)
    assert state.exhausted(160.0)


def test_default_policy_retries_forever() -> None:
    """Without ``max_retry_time`` the budget never runs out (hold back, do not dead-letter)."""
    state = RetryState(RetryPolicy())
    state.next_delay(now=0.0, retry_after=None, rand=0.3)
    assert not state.exhausted(1e9)
    assert state.deadline is None


def test_reset_starts_a_fresh_budget() -> None:
    """After a success, the next failure starts the backoff and the budget over."""
    state = RetryPolicy(max_retry_time=10.0, backoff=Backoff(base=1.0)).new_state()
    for t in range(4):
        state.next_delay(now=float(t), retry_after=None, rand=0.5)
    state.reset()
    assert state.next_delay(now=50.0, retry_after=None, rand=0.5) == 0.5
    assert (state.attempts, state.deadline) == (1, 60.0)


def test_policy_rejects_negative_settings() -> None:
    """Negative or NaN limits are configuration errors."""
    with pytest.raises(ValueError, match="max_retry_time"):
        RetryPolicy(max_retry_time=-1.0)
    with pytest.raises(ValueError, match="max_retry_after"):
        RetryPolicy(max_retry_after=math.nan)
    with pytest.raises(ValueError, match="rand"):
        RetryPolicy().new_state().next_delay(now=0.0, retry_after=None, rand=-0.1)
