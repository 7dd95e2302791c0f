"""How long to wait before retrying a delivery, and when to stop: backoff, server hints, a time budget.

Pure arithmetic: the caller passes ``now`` (monotonic seconds) and ``rand`` (``random.random()``), so
every delay is reproducible in tests. Parsing ``Retry-After`` / ``X-RateLimit-Reset`` headers is the Kard
client's job (``bridge/kard``); it hands over seconds as ``TransientDeliveryError.retry_after``.

Policy in one paragraph: without a server hint, wait with *full jitter*, ``rand * min(cap, base *
multiplier ** (attempt - 1))`` (AWS Architecture Blog, "Exponential Backoff And Jitter"), which spreads
retries of many instances. With a hint, the server wins: wait the hint (capped at ``max_retry_after`` so
a bogus header cannot park the bridge for a day), but at least a small jitter so that a ``0`` hint does
not make every instance retry at the same instant. Give up only when ``max_retry_time`` has passed since
the first failure; the default ``None`` retries forever, because an unavailable API is a reason to hold
back (the consumer pauses, nothing is committed past the batch), not to dead-letter good records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["Backoff", "RetryPolicy", "RetryState"]


def _check_rand(rand: float) -> None:
    if not 0.0 <= rand < 1.0:
        raise ValueError(f"rand must be in [0, 1), got {rand}")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter.

    Attributes:
        base: the ceiling of the first delay, in seconds.
        cap: the largest ceiling, in seconds.
        multiplier: growth of the ceiling per attempt (>= 1).

    Raises:
        ValueError: ``base`` is not positive, ``cap < base``, or ``multiplier < 1``.
    """

    base: float = 0.2
    cap: float = 30.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base and self.multiplier >= 1 and math.isfinite(self.cap)):
            raise ValueError(
                f"need 0 < base <= cap < inf and multiplier >= 1, got base={self.base}, "
                f"cap={self.cap}, multiplier={self.multiplier}"
            )

    def ceiling(self, attempt: int) -> float:
        """``min(cap, base * multiplier ** (attempt - 1))``, without overflowing for huge attempts.

        Raises:
            ValueError: ``attempt < 1``.
        """
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        try:
            raw = self.base * self.multiplier ** (attempt - 1)
        except OverflowError:
            return self.cap
        return min(self.cap, raw)

    def delay(self, attempt: int, rand: float) -> float:
        """Seconds to wait after the ``attempt``-th consecutive failure: ``rand * ceiling(attempt)``.

        Args:
            attempt: 1 for the first failure, 2 for the second, ...
            rand: uniform in ``[0, 1)``, e.g. ``random.random()``.

        Raises:
            ValueError: ``attempt < 1`` or ``rand`` outside ``[0, 1)``.
        """
        _check_rand(rand)
        return rand * self.ceiling(attempt)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Settings shared by every retried delivery (one per bridge).

    Attributes:
        backoff: delays when the server gives no hint.
        max_retry_time: seconds after the first failure at which to give up; ``None`` = never give up
            (the default: while the API is unavailable, hold back rather than dead-letter).
        max_retry_after: the largest server hint honoured, in seconds; longer hints are cut to this.
        hint_jitter: with a hint, wait at least ``rand * hint_jitter`` seconds.

    Raises:
        ValueError: a negative or NaN setting.
    """

    backoff: Backoff = field(default_factory=Backoff)
    max_retry_time: float | None = None
    max_retry_after: float = 300.0
    hint_jitter: float = 0.2

    def __post_init__(self) -> None:
        if self.max_retry_time is not None and not self.max_retry_time >= 0:
            raise ValueError(f"max_retry_time must be >= 0 or None, got {self.max_retry_time}")
        if not (self.max_retry_after >= 0 and self.hint_jitter >= 0):
            raise ValueError(
                f"max_retry_after and hint_jitter must be >= 0, got {self.max_retry_after}, {self.hint_jitter}"
            )

    def new_state(self) -> RetryState:
        """A fresh retry budget for one delivery (a batch, or the items of a batch being re-sent)."""
        return RetryState(self)


@dataclass(slots=True)
class RetryState:
    """The retry budget of one delivery: when it first failed and how many attempts failed since.

    Use::

        state = policy.new_state()
        while True:
            try: send(); state.reset(); break
            except TransientDeliveryError as exc:
                delay = state.next_delay(now(), exc.retry_after, random.random())
                if state.exhausted(now()): dead_letter(); break
                sleep(delay)

    ``exhausted`` is checked after a failure, so the last wait may end past the budget by one delay.
    """

    policy: RetryPolicy
    first_failure: float | None = None
    attempts: int = 0

    def next_delay(self, now: float, retry_after: float | None, rand: float) -> float:
        """Record one failed attempt at ``now`` and return how long to wait before the next one.

        Args:
            now: monotonic seconds of the failure.
            retry_after: the server's hint in seconds (``Retry-After`` / ``X-RateLimit-Reset``, already
                parsed), or ``None``. Negative or NaN hints count as 0; hints above
                ``max_retry_after`` are cut to it.
            rand: uniform in ``[0, 1)``.

        Returns:
            ``max(hint, rand * hint_jitter)`` with a hint, else ``backoff.delay(attempts, rand)``.

        Raises:
            ValueError: ``rand`` outside ``[0, 1)``.
        """
        _check_rand(rand)
        if self.first_failure is None:
            self.first_failure = now
        self.attempts += 1
        policy = self.policy
        if retry_after is None:
            return policy.backoff.delay(self.attempts, rand)
        hint = retry_after if retry_after >= 0 else 0.0  # NaN >= 0 is False: NaN counts as 0
        return max(min(hint, policy.max_retry_after), rand * policy.hint_jitter)

    def exhausted(self, now: float) -> bool:
        """``True`` when ``max_retry_time`` is set and has elapsed since the first failure."""
        limit = self.policy.max_retry_time
        if limit is None or self.first_failure is None:
            return False
        return now - self.first_failure >= limit

    @property
    def deadline(self) -> float | None:
        """The ``now`` at which the budget runs out, or ``None`` (no failure yet, or no limit)."""
        limit = self.policy.max_retry_time
        if limit is None or self.first_failure is None:
            return None
        return self.first_failure + limit

    def reset(self) -> None:
        """Forget past failures (after a success): the next failure starts a fresh budget."""
        self.first_failure = None
        self.attempts = 0
