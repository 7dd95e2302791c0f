"""Fault injection for the Kard sandbox: turns a :class:`FaultConfig` into a per-request decision.

The engine is synchronous and owns the only RNG (``random.Random(seed)``), so a run is reproducible for a given
seed and request order. The middleware in :mod:`bridge.sandbox.app` asks :meth:`FaultEngine.decide` once per
request, then acts in this order:

1. **immediate answers**, no body read: an active ``outage`` (503 with ``Retry-After`` = time left, or a
   dropped connection), ``capacity`` in ``reject`` mode over its limit (429), an empty ``rate_limit`` bucket
   (429);
2. ``capacity`` in ``queue`` mode: wait for a slot (held until the answer is written);
3. ``hang`` (answer after ``delay``, or never), then ``latency`` (``per_item`` is added after the body is read);
4. ``drop`` (``before``), or an ``error_rates`` status (ErrorResponse, or the ``error_body`` style);
5. the endpoint runs, with ``reject_items`` / ``reject_duplicates`` applied per item; ``drop`` (``after``)
   then closes the connection instead of answering. ``reject_items`` names each bad item (error ``id`` and
   ``source.pointer``) unless it has ``"attribute": false``: then any request holding a bad item fails as a
   whole with one error that names none, the way an all-or-nothing API forces a client to bisect.

Rules are applied in order; each sees only requests of its ``endpoint`` scope, skips its first ``after``
matches, and stops after affecting ``times`` requests. Latencies add up; the first terminal outcome wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any, Literal

from bridge.sandbox.fault_config import FaultConfig, FaultRule, Latency, RejectItems, RetryAfter

__all__ = ["FaultDecision", "FaultEngine", "RuleState", "retry_headers"]


@dataclass(slots=True)
class RuleState:
    """The run-time state of one rule: counters, outage window, token bucket, capacity."""

    rule: FaultRule
    index: int
    matched: int = 0
    fired: int = 0
    in_flight: int = 0
    outage_start: float = 0.0
    outage_end: float = 0.0
    tokens: float = 0.0
    refilled_at: float = 0.0
    waiting: int = 0
    semaphore: asyncio.Semaphore | None = None


@dataclass(slots=True)
class FaultDecision:
    """What to do with one request. Empty (``FaultDecision()``) means: serve it normally."""

    immediate_status: int | None = None  # answer this status before reading the body
    immediate_drop: bool = False
    status: int | None = None  # answer this status after hang/latency
    error_body: str = "jsonapi"
    headers: dict[str, str] = field(default_factory=dict)
    detail: str = ""
    hang: bool = False
    hang_delay: float | None = None
    latency: float = 0.0
    per_item_latency: float = 0.0
    drop: Literal["before", "after"] | None = None
    reject_items: list[RejectItems] = field(default_factory=list)
    reject_duplicates: bool = False
    held: list[RuleState] = field(default_factory=list)  # capacity "reject" counters to decrement
    queues: list[RuleState] = field(default_factory=list)  # capacity "queue" slots to wait for
    labels: list[str] = field(default_factory=list)


def retry_headers(spec: RetryAfter, seconds: float | None = None) -> dict[str, str]:
    """``Retry-After`` (and optional ``X-RateLimit-Reset`` / ``Retry-After-Ms``) for ``seconds`` from now."""
    delay = spec.seconds if seconds is None else seconds
    if delay is None:
        return {}
    now = time.time()
    headers = {
        "Retry-After": formatdate(now + delay, usegmt=True)
        if spec.format == "http-date"
        else str(max(0, math.ceil(delay)))
    }
    if spec.reset_header:
        headers["X-RateLimit-Reset"] = str(math.ceil(now + delay))
    if spec.ms_header:
        headers["Retry-After-Ms"] = str(round(delay * 1000))
    return headers


class FaultEngine:
    """Holds the fault configuration, its RNG and per-rule state; :meth:`decide` is called once per request."""

    def __init__(self, config: FaultConfig | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        config = config or FaultConfig()
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        self.config = config.model_copy(update={"seed": seed})
        self._clock = clock
        self._rng = random.Random(seed)
        now = clock()
        self._states = [RuleState(rule, i) for i, rule in enumerate(self.config.rules)]
        for state in self._states:
            if state.rule.outage is not None:
                state.outage_start = now + state.rule.outage.start_in
                state.outage_end = state.outage_start + state.rule.outage.duration
            if state.rule.rate_limit is not None:
                state.tokens = float(state.rule.rate_limit.burst)
                state.refilled_at = now
        self.injected: Counter[str] = Counter()

    def decide(self, endpoint: str) -> FaultDecision:
        """Draw this request's faults; counts ``held`` capacity slots, which :meth:`release` gives back."""
        decision = FaultDecision()
        if not self._states:
            return decision
        now = self._clock()
        for state in self._states:
            rule = state.rule
            if not rule.matches(endpoint):
                continue
            state.matched += 1
            if state.matched <= rule.after or (rule.times is not None and state.fired >= rule.times):
                continue
            if self._apply(state, decision, now):
                state.fired += 1
        self.injected.update(decision.labels)
        return decision

    def release(self, decision: FaultDecision) -> None:
        """Give back the capacity counted for ``decision`` (call once the answer is written)."""
        for state in decision.held:
            state.in_flight -= 1
        decision.held.clear()

    @contextlib.asynccontextmanager
    async def queue_slots(self, decision: FaultDecision) -> AsyncIterator[None]:
        """Hold a slot of every ``capacity`` rule in ``queue`` mode for the duration of the block."""
        acquired: list[tuple[RuleState, asyncio.Semaphore]] = []
        try:
            for state in decision.queues:
                capacity = state.rule.capacity
                assert capacity is not None
                if state.semaphore is None:
                    state.semaphore = asyncio.Semaphore(capacity.max_in_flight)
                state.waiting += 1
                try:
                    await state.semaphore.acquire()
                finally:
                    state.waiting -= 1
                state.in_flight += 1
                acquired.append((state, state.semaphore))
            yield
        finally:
            for state, semaphore in acquired:
                state.in_flight -= 1
                semaphore.release()

    def _apply(self, state: RuleState, d: FaultDecision, now: float) -> bool:
        """Add ``state``'s rule to decision ``d``; True when it injected anything."""
        rule = state.rule
        terminal = d.immediate_status is not None or d.immediate_drop
        before = len(d.labels)
        if rule.outage is not None and state.outage_start <= now < state.outage_end and not terminal:
            terminal = True
            d.labels.append("outage")
            if rule.outage.mode == "drop":
                d.immediate_drop = True
            else:
                d.immediate_status = 503
                d.detail = "the service is unavailable (sandbox outage window)"
                d.headers = retry_headers(rule.retry_after or RetryAfter(), state.outage_end - now)
        if rule.capacity is not None and not terminal:
            if rule.capacity.mode == "queue":
                d.queues.append(state)
                if state.in_flight + state.waiting >= rule.capacity.max_in_flight:
                    d.labels.append("capacity_queued")
            elif state.in_flight >= rule.capacity.max_in_flight:
                terminal = True
                d.labels.append("capacity")
                d.immediate_status = 429
                d.detail = "too many concurrent requests (sandbox capacity limit)"
                d.headers = retry_headers(rule.retry_after or RetryAfter())
            else:
                state.in_flight += 1
                d.held.append(state)
        if rule.rate_limit is not None and not terminal:
            limit = rule.rate_limit
            state.tokens = min(float(limit.burst), state.tokens + (now - state.refilled_at) * limit.rps)
            state.refilled_at = now
            if state.tokens >= 1.0:
                state.tokens -= 1.0
            else:
                terminal = True
                d.labels.append("rate_limit")
                d.immediate_status = 429
                d.detail = "rate limit exceeded (sandbox rate limit)"
                wait = max(1.0, (1.0 - state.tokens) / limit.rps)
                d.headers = retry_headers(rule.retry_after or RetryAfter(), None if rule.retry_after else wait)
        if not terminal:
            self._apply_delayed(rule, d)
        if rule.reject_items is not None:
            d.reject_items.append(rule.reject_items)
            d.labels.append("reject_items")
        if rule.reject_duplicates:
            d.reject_duplicates = True
            d.labels.append("reject_duplicates")
        return len(d.labels) > before

    def _apply_delayed(self, rule: FaultRule, d: FaultDecision) -> None:
        rng = self._rng
        if rule.hang is not None and not d.hang and rng.random() < rule.hang.rate:
            d.hang, d.hang_delay = True, rule.hang.delay
            d.labels.append("hang")
        if rule.latency is not None:
            delay = self._sample(rule.latency)
            if delay > 0 or rule.latency.per_item > 0:
                d.latency += delay
                d.per_item_latency += rule.latency.per_item
                d.labels.append("latency")
        if d.drop is not None or d.status is not None:
            return
        if rule.drop is not None and rng.random() < rule.drop.rate:
            d.drop = rule.drop.when
            d.labels.append(f"drop_{rule.drop.when}")
            if rule.drop.when == "before":
                return
        if rule.error_rates:
            draw, total = rng.random(), 0.0
            for status, rate in sorted(rule.error_rates.items()):
                total += rate
                if draw < total:
                    d.status, d.error_body = int(status), rule.error_body
                    d.detail = f"injected {status} (sandbox error_rates fault)"
                    if status == "429":
                        d.headers = retry_headers(rule.retry_after or RetryAfter())
                    elif rule.retry_after is not None:
                        d.headers = retry_headers(rule.retry_after)
                    d.labels.append(f"error_{status}")
                    break

    def _sample(self, spec: Latency) -> float:
        rng = self._rng
        value = spec.fixed
        if spec.dist == "uniform":
            value += rng.uniform(spec.low, max(spec.low, spec.high))
        elif spec.dist == "normal":
            value += max(0.0, rng.gauss(spec.mean, spec.stddev))
        elif spec.dist == "exponential" and spec.mean > 0:
            value += rng.expovariate(1.0 / spec.mean)
        elif spec.dist == "lognormal" and spec.median > 0:
            value += rng.lognormvariate(math.log(spec.median), spec.sigma)
        return value

    def describe(self) -> dict[str, Any]:
        """The configuration (seed filled in) and each rule's live state, for ``GET /_sandbox/faults``."""
        now = self._clock()
        states = []
        for s in self._states:
            entry: dict[str, Any] = {"matched": s.matched, "fired": s.fired, "in_flight": s.in_flight}
            if s.rule.outage is not None:
                entry["outage_active"] = s.outage_start <= now < s.outage_end
                entry["outage_remaining"] = max(0.0, s.outage_end - max(now, s.outage_start))
            states.append(entry)
        return {
            **self.config.model_dump(mode="json", exclude_defaults=False),
            "state": states,
            "injected": dict(self.injected),
        }
