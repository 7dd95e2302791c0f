"""Adaptive request concurrency: how many Kard API requests may be on the wire right now (AIMD).

In the spirit of Vector's Adaptive Request Concurrency (ARC), itself borrowed from TCP congestion control:
probe upwards one request at a time while the API answers as fast as before, back off multiplicatively as
soon as it says it is overloaded (408, 429, 5xx, timeouts, connection errors) or its latency jumps. The
configured ``max_limit`` (``BRIDGE_MAX_IN_FLIGHT``) stays the ceiling; the floor is 1.

The decision is taken once per **RTT window**, a stretch of about one baseline round trip, when the
first observation after the window's end arrives (so there is at most one decrease per window: a burst
of 429s from requests sent together counts once):

* **baseline**: an EWMA (``ewma_alpha``) of past windows' mean RTT, with an EWMA of its variance; the
  *deviation* is the square root of that variance.
* **decrease** (``limit ← max(1, floor(limit × decrease_ratio))``, at least by 1): the window saw
  back-pressure, or its mean RTT exceeds ``baseline + threshold``, where ``threshold`` is
  ``rtt_deviation_scale × deviation`` but at least ``min_spike × baseline`` (with a perfectly steady
  latency the deviation is 0 and every rounding error would otherwise count as a spike).
* **increase** (``+1``): no back-pressure, the mean RTT stayed within ``steady_tolerance`` of the baseline,
  and the limit was *reached* during the window (a request started with the in-flight count at the
  limit: without that there is no evidence that more concurrency would help, and an idle bridge would
  drift to the maximum).
* otherwise the limit holds. Only a window with latency samples updates the baseline; back-pressure
  answers (often instant 429s) and failures say nothing about the service time.

Differences from Vector, both for steady latencies: the spike threshold has the ``min_spike`` floor, and
"steady" allows ``steady_tolerance`` (1 %) above the baseline where Vector wants at most the baseline
(float noise in the window mean then blocks half the increases). The first window only sets the baseline.

Sans-I/O like the rest of :mod:`bridge.pipeline`: the caller passes ``now`` (monotonic seconds) and each
request's measured RTT; nothing here awaits, sleeps or reads a clock. The dispatcher applies
:attr:`AdaptiveConcurrency.limit` to its in-flight slots; a lowered limit revokes nothing, requests
above it finish and nobody new starts until the count is below the limit.
"""

from __future__ import annotations

import math
from typing import NamedTuple

__all__ = ["AdaptiveConcurrency", "ConcurrencyStatistics"]


class ConcurrencyStatistics(NamedTuple):
    """A snapshot for metrics and benchmarks.

    Attributes:
        limit: requests allowed on the wire now.
        max_limit: the ceiling.
        rtt_baseline: the EWMA of window RTTs in seconds (None before the first sample).
        rtt_deviation: its EWMA deviation in seconds.
        increases: windows that raised the limit.
        decreases: windows that cut it.
    """

    limit: int
    max_limit: int
    rtt_baseline: float | None
    rtt_deviation: float
    increases: int
    decreases: int


class AdaptiveConcurrency:
    """An AIMD concurrency limit fed with request outcomes (see the module docstring for the rules).

    Args:
        max_limit: the ceiling (the configured maximum of requests in flight).
        initial: the limit to start with (clamped to ``[1, max_limit]``); Vector starts at 1.
        decrease_ratio: the multiplicative cut, in ``(0, 1)``.
        ewma_alpha: weight of the newest window in the baseline, in ``(0, 1]``.
        rtt_deviation_scale: how many deviations above the baseline count as a latency spike.
        min_spike: the smallest spike threshold, as a fraction of the baseline.
        steady_tolerance: a window's RTT up to ``baseline × (1 + steady_tolerance)`` counts as steady.

    Raises:
        ValueError: a parameter out of range.

    Use: call :meth:`on_start` when a request takes a slot (with the in-flight count, that request
    included), then exactly one of :meth:`on_response` (the API processed it: the RTT is a sample) or
    :meth:`on_back_pressure` (408/429/5xx, timeout, connection error), or neither (the outcome says
    nothing about load, e.g. refused credentials). Read :attr:`limit` after each call.
    """

    __slots__ = (
        "_back_pressure",
        "_decrease_ratio",
        "_decreases",
        "_ewma_alpha",
        "_increases",
        "_limit",
        "_mean",
        "_min_spike",
        "_reached",
        "_scale",
        "_steady",
        "_variance",
        "_window_end",
        "_window_n",
        "_window_sum",
        "max_limit",
    )

    def __init__(
        self,
        max_limit: int,
        *,
        initial: int = 1,
        decrease_ratio: float = 0.9,
        ewma_alpha: float = 0.4,
        rtt_deviation_scale: float = 2.5,
        min_spike: float = 0.1,
        steady_tolerance: float = 0.01,
    ) -> None:
        if max_limit < 1:
            raise ValueError(f"max_limit must be >= 1, got {max_limit}")
        if not 0.0 < decrease_ratio < 1.0:
            raise ValueError(f"decrease_ratio must be in (0, 1), got {decrease_ratio}")
        if not 0.0 < ewma_alpha <= 1.0:
            raise ValueError(f"ewma_alpha must be in (0, 1], got {ewma_alpha}")
        if not (rtt_deviation_scale >= 0 and min_spike >= 0 and steady_tolerance >= 0):
            raise ValueError("rtt_deviation_scale, min_spike and steady_tolerance must be >= 0")
        self.max_limit = max_limit
        self._limit = min(max(1, initial), max_limit)
        self._decrease_ratio = decrease_ratio
        self._ewma_alpha = ewma_alpha
        self._scale = rtt_deviation_scale
        self._min_spike = min_spike
        self._steady = steady_tolerance
        self._mean: float | None = None
        self._variance = 0.0
        self._window_end: float | None = None  # None: no window open yet
        self._window_sum = 0.0
        self._window_n = 0
        self._back_pressure = False
        self._reached = False
        self._increases = 0
        self._decreases = 0

    @property
    def limit(self) -> int:
        """Requests allowed on the wire now, in ``[1, max_limit]``."""
        return self._limit

    def on_start(self, in_flight: int) -> None:
        """A request took a slot; ``in_flight`` counts it. At the limit, the window may increase."""
        if in_flight >= self._limit:
            self._reached = True

    def on_response(self, now: float, rtt: float) -> None:
        """The API processed a request (any HTTP answer that is not back-pressure) in ``rtt`` seconds."""
        if math.isfinite(rtt) and rtt >= 0:
            self._window_sum += rtt
            self._window_n += 1
        self._tick(now, rtt)

    def on_back_pressure(self, now: float, rtt: float) -> None:
        """The API signalled overload (408/429/5xx) or did not answer (timeout, connection error).

        ``rtt`` is not a latency sample; it only sizes the first window when no baseline exists yet.
        """
        self._back_pressure = True
        self._tick(now, rtt)

    def statistics(self) -> ConcurrencyStatistics:
        """A snapshot; O(1)."""
        return ConcurrencyStatistics(
            self._limit, self.max_limit, self._mean, math.sqrt(self._variance), self._increases, self._decreases
        )

    def _tick(self, now: float, rtt: float) -> None:
        if self._window_end is None:  # the first observation opens the first window
            self._window_end = now + _duration(self._mean, rtt)
        if now < self._window_end:
            return
        current = self._window_sum / self._window_n if self._window_n else None
        self._decide(current)
        if current is not None:
            self._update_baseline(current)
        self._window_end = now + _duration(self._mean, rtt)
        self._window_sum, self._window_n = 0.0, 0
        self._back_pressure = self._reached = False

    def _decide(self, current: float | None) -> None:
        mean, limit = self._mean, self._limit
        if mean is None or current is None:  # no baseline or no sample: only back-pressure counts
            spike = steady = False
        else:
            threshold = max(self._scale * math.sqrt(self._variance), self._min_spike * mean)
            spike = current > mean + threshold
            steady = current <= mean * (1.0 + self._steady)
        if (self._back_pressure or spike) and limit > 1:
            self._limit = max(1, min(limit - 1, math.floor(limit * self._decrease_ratio)))
            self._decreases += 1
        elif steady and self._reached and not self._back_pressure and limit < self.max_limit:
            self._limit = limit + 1
            self._increases += 1

    def _update_baseline(self, sample: float) -> None:
        """EWMA of the mean and the variance (West's incremental form, as Vector's ``EwmaVar``)."""
        mean = self._mean
        if mean is None:
            self._mean, self._variance = sample, 0.0
            return
        alpha = self._ewma_alpha
        difference = sample - mean
        increment = alpha * difference
        self._mean = mean + increment
        self._variance = (1.0 - alpha) * (self._variance + difference * increment)


def _duration(mean: float | None, rtt: float) -> float:
    """A window lasts one baseline RTT (the last request's RTT before there is a baseline)."""
    value = mean if mean is not None else rtt
    return value if math.isfinite(value) and value > 0 else 0.0
