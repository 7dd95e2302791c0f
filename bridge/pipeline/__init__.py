"""The sans-I/O core: synchronous state machines that decide, while the async shell acts.

Nothing in this package awaits, reads a clock or touches a socket. Time enters as a ``now: float``
argument (monotonic seconds) and randomness as a ``rand: float`` in ``[0, 1)``, so every decision is a
pure function of the calls made so far and can be tested without an event loop (STYLE.md §10).

- :mod:`~bridge.pipeline.offsets`: which offsets may be committed (invariants I2 and I3).
- :mod:`~bridge.pipeline.batcher`: groups mapped items per route into request bodies.
- :mod:`~bridge.pipeline.flow`: buffered records/bytes → pause/resume decisions (backpressure).
- :mod:`~bridge.pipeline.retry`: backoff with full jitter, ``Retry-After`` hints, a retry-time budget.
"""

from __future__ import annotations

from bridge.pipeline.batcher import Batch, BatchEntry, Batcher, BatcherStatistics
from bridge.pipeline.flow import FlowControl, FlowStatistics
from bridge.pipeline.offsets import OffsetTracker, OffsetTrackerStatistics
from bridge.pipeline.retry import Backoff, RetryPolicy, RetryState

__all__ = [
    "Backoff",
    "Batch",
    "BatchEntry",
    "Batcher",
    "BatcherStatistics",
    "FlowControl",
    "FlowStatistics",
    "OffsetTracker",
    "OffsetTrackerStatistics",
    "RetryPolicy",
    "RetryState",
]
