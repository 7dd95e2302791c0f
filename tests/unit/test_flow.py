"""FlowControl: pause at a high watermark, resume below both low watermarks, strict accounting."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pipeline.flow import FlowControl, FlowStatistics
from tests.event_strategies import EXAMPLES


def flow() -> FlowControl:
    """Watermarks: records 10/4, bytes 1000/400."""
    return FlowControl(high_records=10, low_records=4, high_bytes=1000, low_bytes=400)


def test_pauses_when_records_reach_high_watermark() -> None:
    """Reaching the record high watermark asks for a pause, once."""
    control = flow()
    control.admit(9, 100)
    assert not control.should_pause()
    control.admit(1, 10)
    assert control.should_pause()
    control.mark_paused()
    assert not control.should_pause()
    assert control.paused


def test_pauses_when_bytes_reach_high_watermark() -> None:
    """Reaching the byte high watermark asks for a pause even with few records."""
    control = flow()
    control.admit(1, 1000)
    assert control.should_pause()


def test_resumes_only_when_both_are_at_or_below_low() -> None:
    """Hysteresis: resume waits until records and bytes are both at or below their low watermark."""
    control = flow()
    control.admit(10, 1000)
    control.mark_paused()
    control.release(6, 100)  # records 4 (low), bytes 900
    assert not control.should_resume()
    control.release(0, 500)  # bytes 400 (low)
    assert control.should_resume()
    control.mark_resumed()
    assert not control.should_resume()
    assert not control.should_pause()


def test_never_resumes_when_not_paused() -> None:
    """An empty buffer does not ask to resume a consumer that was never paused."""
    assert not flow().should_resume()


def test_release_more_than_admitted_is_an_error() -> None:
    """Releasing more than admitted raises instead of letting the accounting drift."""
    control = flow()
    control.admit(2, 20)
    with pytest.raises(ValueError, match="only 2 / 20"):
        control.release(3, 10)
    with pytest.raises(ValueError, match="negative"):
        control.admit(-1, 0)
    with pytest.raises(ValueError, match="negative"):
        control.release(0, -1)


def test_statistics_report_fill_ratio_of_the_fuller_dimension() -> None:
    """The fill ratio is the larger of the record and byte fill ratios."""
    control = flow()
    control.admit(5, 800)
    control.mark_paused()
    assert control.statistics() == FlowStatistics(records=5, bytes=800, fill_ratio=0.8, paused=True)


@pytest.mark.parametrize(("low", "high"), [(-1, 10), (10, 10), (11, 10)])
def test_invalid_watermarks_are_rejected(low: int, high: int) -> None:
    """A low watermark must be non-negative and below its high watermark."""
    with pytest.raises(ValueError, match="low_records < high_records"):
        FlowControl(high_records=high, low_records=low, high_bytes=10, low_bytes=0)
    with pytest.raises(ValueError, match="low_bytes < high_bytes"):
        FlowControl(high_records=10, low_records=0, high_bytes=high, low_bytes=low)


_step = st.tuples(st.booleans(), st.integers(0, 6), st.integers(0, 600))


@settings(max_examples=EXAMPLES(200), deadline=None)
@given(steps=st.lists(_step, max_size=100))
def test_loop_acting_on_decisions_keeps_pause_state_consistent(steps: list[tuple[bool, int, int]]) -> None:
    """A consumer loop obeying the decisions is paused at or above a high mark and never stuck paused."""
    control = flow()
    records = size = 0
    for is_admit, n, b in steps:
        if is_admit:
            control.admit(n, b)
            records, size = records + n, size + b
        else:
            n, b = min(n, records), min(b, size)
            control.release(n, b)
            records, size = records - n, size - b
        if control.should_pause():
            control.mark_paused()
        elif control.should_resume():
            control.mark_resumed()
        stats = control.statistics()
        assert (stats.records, stats.bytes) == (records, size)
        if records >= 10 or size >= 1000:
            assert control.paused
        if records <= 4 and size <= 400:
            assert not control.paused
