"""Dispatcher behaviour with a scripted sender: order per key, retries, 207 splits, bisection, give-up, limits."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence

import orjson
import pytest

from bridge.dispatch import DeliveryFailure, Dispatcher, _Slots
from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.responses import ACCEPTED, BISECT, BatchResponse, ItemOutcome, OutcomeKind
from bridge.pipeline.batcher import Batch, BatchEntry, Batcher
from bridge.pipeline.concurrency import AdaptiveConcurrency
from bridge.pipeline.retry import Backoff, RetryPolicy
from bridge.records import RecordRef, SourceRecord
from bridge.routes import Endpoint, MappedItem, Route

ROUTE = Route(Endpoint.TRANSACTIONS, "org-1")

Script = Callable[[Sequence[MappedItem]], BatchResponse]


def _entry(offset: int, key: str, item_id: str | None = None) -> BatchEntry:
    item = {"type": "transaction", "id": item_id or f"e{offset}", "attributes": {"userId": key}}
    mapped = MappedItem(ROUTE, item, item_id or f"e{offset}", key, orjson.dumps(item), f"e{offset}")
    record = SourceRecord("t", 0, offset, key.encode(), b"{}", (), 0)
    return BatchEntry(RecordRef("t", 0, offset), mapped, record)


def _batch(entries: Sequence[BatchEntry], max_items: int | None = None, max_bytes: int | None = None) -> Batch:
    return Batch(ROUTE, tuple(entries), 0.0, 0, max_items, max_bytes)


def _ok(items: Sequence[MappedItem]) -> BatchResponse:
    return BatchResponse(202, 0.0, {}, tuple(ACCEPTED for _ in items))


class ScriptedSender:
    """Answers each request with the next scripted behaviour (default: accept all) and logs what it got."""

    def __init__(self, *script: Script | BaseException, delay: float = 0.0) -> None:
        self.script = list(script)
        self.requests: list[list[str]] = []
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        self.requests.append([i.item_id for i in items])
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        step = self.script.pop(0) if self.script else _ok
        if isinstance(step, BaseException):
            raise step
        return step(items)


class RecordingSink:
    """Collects outcomes in the order they were published."""

    def __init__(self) -> None:
        self.accepted: list[str] = []
        self.failed: list[tuple[str, DeliveryFailure]] = []

    async def delivered(
        self,
        route: Route,
        entries: Sequence[BatchEntry],
        response: BatchResponse,
        outcomes: Sequence[ItemOutcome],
        attempts: int,
        latency: float,
    ) -> None:
        self.accepted.extend(e.item.item_id for e in entries)

    async def undeliverable(self, route: Route, failures: Sequence[tuple[BatchEntry, DeliveryFailure]]) -> None:
        self.failed.extend((e.item.item_id, f) for e, f in failures)


class CapacitySender:
    """A server that serves ``capacity`` requests at once, each taking ``delay``, and answers 429 beyond."""

    def __init__(self, capacity: int, delay: float) -> None:
        self.capacity = capacity
        self.delay = delay
        self.in_flight = 0
        self.max_in_flight = 0
        self.rejected = 0

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        if self.in_flight >= self.capacity:
            self.rejected += 1
            raise TransientDeliveryError("429", status=429, retry_after=0.01)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight -= 1
        return _ok(items)


def _dispatcher(
    sender: ScriptedSender | CapacitySender,
    sink: RecordingSink,
    concurrency: AdaptiveConcurrency | None = None,
    **policy: float | None,
) -> Dispatcher:
    retry = RetryPolicy(backoff=Backoff(base=0.001, cap=0.01), **policy)  # type: ignore[arg-type]
    return Dispatcher(sender, sink, max_in_flight=4, policy=retry, concurrency=concurrency, rand=lambda: 0.5)


async def test_same_key_batches_are_sent_in_submission_order() -> None:
    """A later record of a key waits for the earlier one, even when it is slow; other keys do not wait."""
    sender = ScriptedSender(delay=0.02)
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1", "approved")]))
        d.submit(_batch([_entry(1, "u1", "settled"), _entry(2, "u2", "other")]))
        assert await d.wait_idle(timeout=5)
    # Batches submitted together share requests; the busy key waits, the other key of its batch does not.
    assert sender.requests == [["approved", "other"], ["settled"]]
    assert sink.accepted.index("approved") < sink.accepted.index("settled")


async def test_a_busy_keys_record_goes_in_the_next_request_with_what_is_free_then() -> None:
    """While a request is out, the next batch's free entries wait for its answer, then go with the deferred ones."""
    sender = ScriptedSender(delay=0.02)
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1", "approved")]))
        await asyncio.sleep(0.005)  # in flight
        d.submit(_batch([_entry(1, "u1", "settled"), _entry(2, "u2", "other")]))
        assert await d.wait_idle(timeout=5)
    assert [sorted(r) for r in sender.requests] == [["approved"], ["other", "settled"]]


async def test_independent_keys_go_in_parallel() -> None:
    """Batches with disjoint keys are in flight together, bounded by max_in_flight."""
    sender = ScriptedSender(delay=0.05)
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        for i in range(8):
            d.submit(_batch([_entry(i, f"u{i}")], max_items=1))
        assert await d.wait_idle(timeout=5)
    assert 1 < sender.max_in_flight <= 4
    assert sorted(sink.accepted) == sorted(f"e{i}" for i in range(8))


async def test_repeated_key_inside_a_batch_is_split_into_waves() -> None:
    """Two events of one key in one batch go in two requests, the earlier first."""
    sender = ScriptedSender()
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1", "a1"), _entry(1, "u2", "b1"), _entry(2, "u1", "a2")]))
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["a1", "b1"], ["a2"]]


async def test_transient_errors_are_retried_honouring_retry_after() -> None:
    """A 429 with a short Retry-After is retried and then delivered, nothing dead-lettered."""
    sender = ScriptedSender(TransientDeliveryError("429", status=429, retry_after=0.05))
    sink = RecordingSink()
    loop = asyncio.get_running_loop()
    async with _dispatcher(sender, sink) as d:
        start = loop.time()
        d.submit(_batch([_entry(0, "u1")]))
        assert await d.wait_idle(timeout=5)
        waited = loop.time() - start
    assert len(sender.requests) == 2
    assert waited >= 0.05
    assert sink.accepted == ["e0"] and not sink.failed


async def test_207_rejects_one_item_and_retries_another_alone() -> None:
    """Per-item outcomes: rejected → failure, retry → re-sent alone, accepted → result."""

    def partial(items: Sequence[MappedItem]) -> BatchResponse:
        outcomes = (
            ACCEPTED,
            ItemOutcome(OutcomeKind.REJECTED, 400, "Invalid", "cardBIN", "/data/1/attributes/cardBIN"),
            ItemOutcome(OutcomeKind.RETRY, 503),
        )
        return BatchResponse(207, 0.0, {}, outcomes)

    sender = ScriptedSender(partial)
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1"), _entry(1, "u2"), _entry(2, "u3")]))
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["e0", "e1", "e2"], ["e2"]]
    assert sink.accepted == ["e0", "e2"]
    assert [(i, f.reason, f.http_status, f.api_pointer) for i, f in sink.failed] == [
        ("e1", "rejected", 400, "/data/1/attributes/cardBIN")
    ]


async def test_whole_batch_400_is_bisected_down_to_the_culprit() -> None:
    """A 400 naming no item splits the batch until the bad item stands alone; the rest are delivered."""

    def judge(items: Sequence[MappedItem]) -> BatchResponse:
        bad = any(i.item_id == "e2" for i in items)
        if not bad:
            return _ok(items)
        if len(items) == 1:
            return BatchResponse(400, 0.0, {}, (ItemOutcome(OutcomeKind.REJECTED, 400, "Invalid"),))
        return BatchResponse(400, 0.0, {}, tuple(BISECT for _ in items))

    sender = ScriptedSender(*([judge] * 10))
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(i, f"u{i}") for i in range(5)]))
        assert await d.wait_idle(timeout=5)
    assert sorted(sink.accepted) == ["e0", "e1", "e3", "e4"]
    assert [i for i, _ in sink.failed] == ["e2"]


async def test_retries_exhausted_becomes_a_failure() -> None:
    """With a maximum retry time, a batch that keeps failing ends as retries_exhausted failures."""
    errors = [TransientDeliveryError("503", status=503) for _ in range(1000)]
    sender = ScriptedSender(*errors)
    sink = RecordingSink()
    async with _dispatcher(sender, sink, max_retry_time=0.05) as d:
        d.submit(_batch([_entry(0, "u1"), _entry(1, "u2")]))
        assert await d.wait_idle(timeout=5)
    assert not sink.accepted
    assert {(i, f.reason, f.http_status) for i, f in sink.failed} == {
        ("e0", "retries_exhausted", 503),
        ("e1", "retries_exhausted", 503),
    }
    assert all(f.attempts >= 2 for _, f in sink.failed)


async def test_auth_failures_hold_back_and_never_dead_letter() -> None:
    """Refused credentials are retried even past max_retry_time: they are not the records' fault."""
    sender = ScriptedSender(*[AuthError("401", status=401) for _ in range(5)])
    sink = RecordingSink()
    async with _dispatcher(sender, sink, max_retry_time=0.0) as d:
        d.submit(_batch([_entry(0, "u1")]))
        assert await d.wait_idle(timeout=5)
        assert d.statistics().auth_failures == 5
    assert sink.accepted == ["e0"] and not sink.failed


async def test_all_or_nothing_endpoints_keep_a_users_events_in_one_request() -> None:
    """Per-user attributions (no 207) of one key travel in a single request, in order."""
    route = Route(Endpoint.USER_ATTRIBUTIONS, "org-1", "u1")
    entries = []
    for offset in range(3):
        item = {"type": "offerAttribution", "attributes": {"entityId": f"o{offset}"}}
        mapped = MappedItem(route, item, f"a{offset}", "u1", orjson.dumps(item), f"a{offset}")
        record = SourceRecord("t", 0, offset, b"u1", b"{}", (), 0)
        entries.append(BatchEntry(RecordRef("t", 0, offset), mapped, record))
    sender = ScriptedSender()
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(Batch(route, tuple(entries), 0.0, 0))
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["a0", "a1", "a2"]]


async def test_a_held_record_in_an_open_batch_keeps_its_key_in_order_across_routes() -> None:
    """A record announced with hold() but still in an open batch holds back later records of its key."""
    fraud = Route(Endpoint.FRAUD, "org-1")
    earlier = _entry(0, "u1", "txn-approved")  # waits in the (open) transactions batch
    item = {"type": "fraudulentTransaction", "id": "t1", "attributes": {"userId": "u1"}}
    later = BatchEntry(
        RecordRef("t", 0, 1),
        MappedItem(fraud, item, "fraud-1", "u1", orjson.dumps(item), "f1"),
        SourceRecord("t", 0, 1, b"u1", b"{}", (), 0),
    )
    sender = ScriptedSender()
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.hold(earlier)
        d.hold(later)
        d.submit(Batch(fraud, (later,), 0.0, 0))  # the later record's batch closes first
        await asyncio.sleep(0.05)
        assert sender.requests == []  # it waits for the earlier record of u1
        d.submit(_batch([earlier]))
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["txn-approved"], ["fraud-1"]]


async def test_forgotten_records_release_their_key() -> None:
    """Records dropped on revoke (forget) no longer hold back their key."""
    sender = ScriptedSender()
    sink = RecordingSink()
    dropped, kept = _entry(0, "u1", "dropped"), _entry(1, "u1", "kept")
    async with _dispatcher(sender, sink) as d:
        d.hold(dropped)
        d.hold(kept)
        d.submit(_batch([kept]))
        d.forget([dropped])
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["kept"]]


async def test_static_limit_is_max_in_flight() -> None:
    """Without an adaptive limiter the limit reported is the configured maximum, whatever happens."""
    sender = ScriptedSender(TransientDeliveryError("429", status=429, retry_after=0.0))
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1")]))
        assert await d.wait_idle(timeout=5)
        assert d.statistics().concurrency_limit == 4
    assert sink.accepted == ["e0"]


async def test_adaptive_limit_grows_while_answers_are_steady() -> None:
    """Fed with each request's RTT, the limit rises from 1 and more requests overlap; it never passes the ceiling."""
    sender = ScriptedSender(delay=0.01)
    sink = RecordingSink()
    limiter = AdaptiveConcurrency(4)
    async with _dispatcher(sender, sink, limiter) as d:
        for i in range(60):
            d.submit(_batch([_entry(i, f"u{i}")], max_items=1))
        assert await d.wait_idle(timeout=10)
        assert d.statistics().concurrency_limit == limiter.limit
    assert limiter.statistics().increases >= 1
    assert 2 <= sender.max_in_flight <= 4
    assert len(sink.accepted) == 60


async def test_adaptive_limit_backs_off_on_429_and_delivers_everything() -> None:
    """429s beyond the server's capacity cut the limit; every record is still delivered, none dead-lettered."""
    sender = CapacitySender(capacity=1, delay=0.01)
    sink = RecordingSink()
    limiter = AdaptiveConcurrency(4, initial=4, decrease_ratio=0.5)
    async with _dispatcher(sender, sink, limiter) as d:
        for i in range(30):
            d.submit(_batch([_entry(i, f"u{i}")], max_items=1))
        assert await d.wait_idle(timeout=10)
    assert limiter.statistics().decreases >= 1
    assert sender.rejected >= 1
    assert sorted(sink.accepted) == sorted(f"e{i}" for i in range(30)) and not sink.failed


async def test_adaptive_ceiling_above_max_in_flight_is_refused() -> None:
    """The adaptive limit may never exceed the HTTP pool, so a larger ceiling is a configuration bug."""
    with pytest.raises(ValueError, match="above max_in_flight"):
        _dispatcher(ScriptedSender(), RecordingSink(), AdaptiveConcurrency(8))


async def test_drain_cancels_batches_waiting_for_an_adaptive_slot() -> None:
    """cancel_all ends batches in flight and batches queued for a slot; the dispatcher then is idle."""
    gate = asyncio.Event()

    class Blocked(ScriptedSender):
        """Never answers until the test opens the gate."""

        async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
            self.requests.append([i.item_id for i in items])
            await gate.wait()
            return _ok(items)

    sender = Blocked()
    async with _dispatcher(sender, RecordingSink(), AdaptiveConcurrency(4, initial=2)) as d:
        for i in range(5):
            d.submit(_batch([_entry(i, f"u{i}")], max_items=1))
        await asyncio.sleep(0.02)
        assert len(sender.requests) == 2 and d.statistics().requests_in_flight == 2
        assert d.cancel_all() == 5
        assert await d.wait_idle(timeout=5)
        assert d.statistics().requests_in_flight == 0


async def test_slots_shrink_without_revoking_and_refill_below_the_new_limit() -> None:
    """Lowering the limit lets holders above it finish; a waiter gets a slot only once in_flight < limit."""
    slots = _Slots(3)
    for _ in range(3):
        await slots.acquire()
    slots.resize(1)
    async with asyncio.TaskGroup() as tg:
        waiter = tg.create_task(slots.acquire())
        await asyncio.sleep(0)
        slots.release()
        slots.release()
        await asyncio.sleep(0)
        assert not waiter.done() and slots.in_flight == 1
        slots.release()
        await asyncio.sleep(0)
        assert waiter.done() and slots.in_flight == 1
        slots.resize(3)  # growing admits at once
        await slots.acquire()
        assert slots.in_flight == 2


async def test_a_cancelled_waiter_never_leaks_a_slot() -> None:
    """Cancelled while queued, or just after a slot was handed over: either way the slot count comes back."""
    slots = _Slots(1)
    await slots.acquire()
    queued = asyncio.get_running_loop().create_task(slots.acquire())
    await asyncio.sleep(0)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    handed = asyncio.get_running_loop().create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # hands the slot to ``handed`` ...
    handed.cancel()  # ... which is cancelled before it runs again
    with pytest.raises(asyncio.CancelledError):
        await handed
    assert slots.in_flight == 0
    await slots.acquire()
    assert slots.in_flight == 1


# -- requests formed per route: coalescing, limits, overlap, ordering under partial failures ---------------


async def test_batches_submitted_together_share_one_request() -> None:
    """Free entries of several batches of a route go in one request, up to the item limit."""
    sender = ScriptedSender()
    async with _dispatcher(sender, RecordingSink()) as d:
        for i in range(3):
            d.submit(_batch([_entry(2 * i, f"u{2 * i}"), _entry(2 * i + 1, f"u{2 * i + 1}")]))
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [[f"e{i}" for i in range(6)]]


async def test_requests_keep_the_batch_item_and_byte_limits() -> None:
    """Coalesced requests never carry more items or body bytes than the batches they came from allowed."""
    sender = ScriptedSender()
    entries = [_entry(i, f"u{i}") for i in range(7)]
    async with _dispatcher(sender, RecordingSink()) as d:
        d.submit(_batch(entries, max_items=3))
        assert await d.wait_idle(timeout=5)
    assert [len(r) for r in sender.requests] == [3, 3, 1]

    sender = ScriptedSender()
    size = entries[0].size  # all the same length
    async with _dispatcher(sender, RecordingSink()) as d:
        d.submit(_batch(entries, max_bytes=11 + 2 * size + 1))  # room for exactly two items
        assert await d.wait_idle(timeout=5)
    assert [len(r) for r in sender.requests] == [2, 2, 2, 1]

    sender = ScriptedSender()
    async with _dispatcher(sender, RecordingSink()) as d:
        d.submit(_batch(entries[:2], max_bytes=11 + size - 1))  # each item alone is already too large
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["e0"], ["e1"]]


async def test_repeats_of_keys_in_a_batch_take_as_many_requests_as_the_busiest_key() -> None:
    """On a 207 endpoint, a batch where keys repeat goes in one request per repeat, not one per entry."""
    sender = ScriptedSender()
    # u0 three times, u1..u9 twice, u10..u29 once: three requests (30, 10, 1 items), in key order.
    keys = ["u0"] * 3 + [f"u{k}" for k in range(1, 10)] * 2 + [f"u{k}" for k in range(10, 30)]
    entries = [_entry(i, key) for i, key in enumerate(keys)]
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch(entries))
        assert await d.wait_idle(timeout=5)
    assert [len(r) for r in sender.requests] == [30, 10, 1]
    assert all(len({e.item.ordering_key for e in entries if e.item.item_id in r}) == len(r) for r in sender.requests)


async def test_full_requests_overlap_while_a_partial_one_waits_for_an_answer() -> None:
    """A backlog of free entries goes as several full requests at once; a remainder waits for an answer."""
    sender = ScriptedSender(delay=0.03)
    async with _dispatcher(sender, RecordingSink()) as d:
        d.submit(_batch([_entry(i, f"u{i}") for i in range(17)], max_items=4))
        assert await d.wait_idle(timeout=5)
    assert [len(r) for r in sender.requests] == [4, 4, 4, 4, 1]
    assert sender.max_in_flight == 4  # the dispatcher's max_in_flight


async def test_free_entries_wait_at_most_the_gather_time_for_a_slow_answer() -> None:
    """While a slow request is out, a new batch's free entries go after the gather wait, not after the answer."""
    sender = ScriptedSender(delay=0.5)
    loop = asyncio.get_running_loop()
    sent_at: list[float] = []

    async def timed(route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        sent_at.append(loop.time())
        return await ScriptedSender.send_batch(sender, route, items)

    sender.send_batch = timed  # type: ignore[method-assign]
    async with _dispatcher(sender, RecordingSink()) as d:
        start = loop.time()
        d.submit(_batch([_entry(0, "u0")]))
        await asyncio.sleep(0.01)
        d.submit(_batch([_entry(1, "u1")]))
        assert await d.wait_idle(timeout=5)
    assert sender.requests == [["e0"], ["e1"]]
    assert sent_at[1] - start < 0.3  # the gather wait (50 ms) plus scheduling, well before the 0.5 s answer


async def test_a_retried_item_holds_back_its_keys_next_record_but_not_the_other_keys() -> None:
    """207 with one item to retry: the keys answered go on at once, the retried key's next record waits for it."""

    def first(items: Sequence[MappedItem]) -> BatchResponse:
        assert [i.item_id for i in items] == ["a1", "b1"]
        return BatchResponse(207, 0.0, {}, (ItemOutcome(OutcomeKind.RETRY, 503), ACCEPTED))

    sender = ScriptedSender(first, delay=0.01)
    sink = RecordingSink()
    policy = RetryPolicy(backoff=Backoff(base=0.2, cap=0.2))
    async with Dispatcher(sender, sink, max_in_flight=4, policy=policy, rand=lambda: 0.99) as d:
        d.submit(_batch([_entry(0, "u1", "a1"), _entry(1, "u2", "b1")]))
        d.submit(_batch([_entry(2, "u1", "a2"), _entry(3, "u2", "b2")]))
        assert await d.wait_idle(timeout=5)
    # b2 goes while a1 is backing off; a2 only after a1 was accepted.
    assert sender.requests == [["a1", "b1"], ["b2"], ["a1"], ["a2"]]
    assert sink.accepted == ["b1", "b2", "a1", "a2"]


async def test_a_rejected_item_frees_its_key_and_a_not_attempted_one_does_not() -> None:
    """Rejected is terminal (the key's next record may go); not_attempted is re-sent before the next record."""

    def first(items: Sequence[MappedItem]) -> BatchResponse:
        outcomes = (ItemOutcome(OutcomeKind.REJECTED, 400, "Invalid"), ItemOutcome(OutcomeKind.NOT_ATTEMPTED, 400))
        return BatchResponse(207, 0.0, {}, outcomes)

    sender = ScriptedSender(first)
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1", "a1"), _entry(1, "u2", "b1"), _entry(2, "u1", "a2"), _entry(3, "u2", "b2")]))
        assert await d.wait_idle(timeout=5)
    requests = sender.requests
    assert requests[0] == ["a1", "b1"]

    def first_with(item_id: str) -> int:
        return next(n for n, r in enumerate(requests) if item_id in r)

    last_b1 = max(n for n, r in enumerate(requests) if "b1" in r)
    assert last_b1 > 0 and first_with("b2") > last_b1  # b1 went again before b2 went at all
    assert first_with("a2") > 0
    assert [i for i, _ in sink.failed] == ["a1"]
    assert sorted(sink.accepted) == ["a2", "b1", "b2"]
    assert sink.accepted.index("b1") < sink.accepted.index("b2")


def _random_entries(rng: random.Random, count: int, keys: int) -> list[BatchEntry]:
    """Transactions and fraud markers (both 207 endpoints) and per-user attributions, keyed over ``keys`` users."""
    fraud = Route(Endpoint.FRAUD, "org-1")
    out = []
    for offset in range(count):
        key = f"u{rng.randrange(keys)}"
        roll = rng.random()
        route = ROUTE if roll < 0.7 else fraud if roll < 0.85 else Route(Endpoint.USER_ATTRIBUTIONS, "org-1", key)
        item = {"type": "x", "id": f"e{offset}", "attributes": {"userId": key}}
        mapped = MappedItem(route, item, f"e{offset}", key, orjson.dumps(item), f"e{offset}")
        out.append(
            BatchEntry(RecordRef("t", 0, offset), mapped, SourceRecord("t", 0, offset, key.encode(), b"{}", (), 0))
        )
    return out


class OrderChecker:
    """A flaky API that checks, at every request, that no record arrives before an earlier record of its key.

    207 endpoints answer per item (accepted, rejected, retry, not attempted) or the whole request fails
    (503, or a 400 to bisect); all-or-nothing endpoints answer for the whole request.
    """

    def __init__(self, rng: random.Random, entries: Sequence[BatchEntry], sink: RecordingSink) -> None:
        self.rng = rng
        self.sink = sink
        self.info = {e.item.item_id: (e.item.ordering_key, e.ref.offset) for e in entries}
        self.by_key: dict[str, list[tuple[int, str]]] = {}
        for e in entries:
            self.by_key.setdefault(e.item.ordering_key, []).append((e.ref.offset, e.item.item_id))
        self.requests = 0
        self.in_flight: set[str] = set()
        self.max_in_flight = 0
        self.violations: list[str] = []

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        self.requests += 1
        ids = [i.item_id for i in items]
        terminal = set(self.sink.accepted) | {i for i, _ in self.sink.failed}
        partial = route.endpoint in (Endpoint.TRANSACTIONS, Endpoint.FRAUD)
        if partial and len({i.ordering_key for i in items}) != len(items):
            self.violations.append(f"two records of one key in a 207 request: {ids}")
        for n, item_id in enumerate(ids):
            key, offset = self.info[item_id]
            for earlier_offset, earlier in self.by_key[key]:
                if earlier_offset >= offset:
                    break
                if earlier not in terminal and not (not partial and earlier in ids[:n]):
                    self.violations.append(f"{item_id} sent before {earlier} was terminal")
                if earlier in self.in_flight:
                    self.violations.append(f"{item_id} sent while {earlier} is in flight")
        self.in_flight.update(ids)
        self.max_in_flight = max(self.max_in_flight, len(self.in_flight))
        try:
            await asyncio.sleep(self.rng.random() * 0.004)
        finally:
            self.in_flight.difference_update(ids)
        roll = self.rng.random()
        if roll < 0.08:
            raise TransientDeliveryError("503", status=503, retry_after=0.0)
        if roll < 0.12 and len(items) > 1:
            return BatchResponse(400, 0.0, {}, tuple(BISECT for _ in items))
        if not partial:
            outcome = ACCEPTED if roll < 0.9 else ItemOutcome(OutcomeKind.RETRY, 503)
            return BatchResponse(200, 0.0, {}, tuple(outcome for _ in items))
        kinds = [ACCEPTED] * 14 + [
            ItemOutcome(OutcomeKind.RETRY, 503),
            ItemOutcome(OutcomeKind.NOT_ATTEMPTED, 400),
            ItemOutcome(OutcomeKind.REJECTED, 400, "Invalid"),
        ]
        return BatchResponse(207, 0.0, {}, tuple(self.rng.choice(kinds) for _ in items))


@pytest.mark.parametrize("seed", range(6))
async def test_key_order_holds_under_partial_failures_retries_and_bisection(seed: int) -> None:
    """Fed like the pump (hold, batcher, submit), with a flaky API: order per key holds, every record ends once."""
    rng = random.Random(seed)
    entries = _random_entries(rng, 600, keys=25)
    sink = RecordingSink()
    api = OrderChecker(rng, entries, sink)
    batcher = Batcher(max_bytes=4096, linger=0.003, max_items=rng.choice((5, 20, 500)))
    retry = RetryPolicy(backoff=Backoff(base=0.001, cap=0.005))
    loop = asyncio.get_running_loop()
    async with Dispatcher(api, sink, max_in_flight=4, policy=retry, rand=rng.random) as d:
        for start in range(0, len(entries), 40):
            for entry in entries[start : start + 40]:
                d.hold(entry)
                for batch in batcher.add(entry, loop.time()):
                    d.submit(batch)
            await asyncio.sleep(rng.random() * 0.006)
            for batch in batcher.due(loop.time()):
                d.submit(batch)
        for batch in batcher.flush_all():
            d.submit(batch)
        assert await d.wait_idle(timeout=20)
    assert not api.violations, api.violations[:5]
    ended = sink.accepted + [i for i, _ in sink.failed]
    assert sorted(ended) == sorted(e.item.item_id for e in entries)
    assert len(set(ended)) == len(ended)
    accepted_offsets: dict[str, list[int]] = {}
    for item_id in sink.accepted:
        key, offset = api.info[item_id]
        accepted_offsets.setdefault(key, []).append(offset)
    assert all(offsets == sorted(offsets) for offsets in accepted_offsets.values())
    assert api.requests < len(entries)  # requests carry several records


async def test_cancel_all_drops_entries_still_waiting_in_a_pool() -> None:
    """An entry waiting for its key (not yet in any request) is dropped by cancel_all, never sent later."""
    gate = asyncio.Event()

    class Blocked(ScriptedSender):
        async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
            self.requests.append([i.item_id for i in items])
            await gate.wait()
            return _ok(items)

    sender = Blocked()
    sink = RecordingSink()
    async with _dispatcher(sender, sink) as d:
        d.submit(_batch([_entry(0, "u1", "first")]))
        d.submit(_batch([_entry(1, "u1", "second")]))
        await asyncio.sleep(0.02)
        assert sender.requests == [["first"]]
        assert d.cancel_all() == 2
        assert await d.wait_idle(timeout=5)
        gate.set()
        await asyncio.sleep(0.02)
    assert sender.requests == [["first"]] and not sink.accepted
