"""Batcher: count, byte and linger flushes per route; exact bodies; order kept; revoked entries removed."""

from __future__ import annotations

import itertools
from unittest import mock

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.pipeline.batcher import Batch, BatchEntry, Batcher, BatcherStatistics
from bridge.records import RecordRef, TopicPartition
from bridge.routes import ENDPOINT_LIMITS, Endpoint, MappedItem, Route
from tests.event_strategies import EXAMPLES, LONG_RUN_MARKS

# KARD_BRIDGE_HYPOTHESIS_LONG=1: the property runs 1,000,000 examples and the timeout is lifted.
pytestmark = LONG_RUN_MARKS

TX = Route(Endpoint.TRANSACTIONS, organization_id="org-1")
ATTR = Route(Endpoint.BULK_ATTRIBUTIONS)  # max 100 items
TP0 = TopicPartition("payments", 0)
TP1 = TopicPartition("payments", 1)

_offsets = itertools.count()


def entry(route: Route, size: int = 20, tp: TopicPartition = TP0) -> BatchEntry:
    """An entry whose encoded item is a JSON object of exactly ``size`` bytes (size >= 8)."""
    offset = next(_offsets)
    encoded = b'{"p":"' + b"x" * (size - 8) + b'"}'
    assert len(encoded) == size
    item = MappedItem(route=route, item={}, item_id=str(offset), ordering_key="u", encoded=encoded)
    return BatchEntry(RecordRef(tp.topic, tp.partition, offset), item)


def test_body_is_the_data_envelope_and_size_is_exact() -> None:
    """The body is ``{"data":[...]}`` joined by commas, valid JSON, and its length equals ``size``."""
    batcher = Batcher(max_bytes=10_000, linger=1.0)
    entries = [entry(TX, size) for size in (8, 9, 30)]
    for e in entries:
        assert batcher.add(e, now=0.0) == []
    (batch,) = batcher.flush_all()
    assert batch.body_bytes == b'{"data":[' + b",".join(e.item.encoded for e in entries) + b"]}"
    assert batch.size == len(batch.body_bytes)
    assert len(orjson.loads(batch.body_bytes)["data"]) == 3
    assert batch.body_bytes is batch.body_bytes  # built once
    assert batch.refs == [e.ref for e in entries]


def test_flushes_at_route_item_limit() -> None:
    """A route's batch is emitted as soon as it holds the endpoint's maximum number of items."""
    batcher = Batcher(max_bytes=1_000_000, linger=10.0)
    emitted: list[Batch] = []
    for _ in range(ATTR.max_items + 1):
        emitted += batcher.add(entry(ATTR, 8), now=0.0)
    assert [len(b.entries) for b in emitted] == [ATTR.max_items]
    assert batcher.statistics().buffered_entries == 1


def test_configured_item_cap_lowers_the_route_limit() -> None:
    """``max_items`` below the route's limit wins; above it, the route's limit still applies."""
    assert Batcher(max_bytes=10_000, linger=1.0, max_items=3).item_limit(TX) == 3
    assert Batcher(max_bytes=10_000, linger=1.0, max_items=1000).item_limit(ATTR) == ATTR.max_items
    batcher = Batcher(max_bytes=10_000, linger=1.0, max_items=3)
    sizes = [len(b.entries) for _ in range(7) for b in batcher.add(entry(TX), now=0.0)]
    assert sizes == [3, 3]


def test_closed_batches_carry_the_limits_they_were_built_under() -> None:
    """The dispatcher may merge a route's batches into one request; it reads the limits from the batches."""
    batcher = Batcher(max_bytes=5_000, linger=1.0, max_items=200)
    batcher.add(entry(TX), now=0.0)
    batcher.add(entry(ATTR), now=0.0)
    tx, attr = batcher.flush_all()
    assert (tx.max_items, tx.max_bytes) == (200, 5_000)
    assert (attr.max_items, attr.max_bytes) == (ATTR.max_items, 5_000)  # the endpoint's own limit is lower
    assert (Batch(TX, (), 0.0, 0).max_items, Batch(TX, (), 0.0, 0).max_bytes) == (None, None)


def test_flushes_before_exceeding_max_bytes() -> None:
    """An entry that would overflow the byte cap pushes the open batch out and starts a new one."""
    batcher = Batcher(max_bytes=11 + 20 + 1 + 20 + 5, linger=1.0)  # room for two 20-byte items
    assert batcher.add(entry(TX), now=0.0) == []
    assert batcher.add(entry(TX), now=0.0) == []
    (pushed,) = batcher.add(entry(TX), now=0.0)
    assert len(pushed.entries) == 2
    assert pushed.size == 52
    assert batcher.statistics().buffered_entries == 1


def test_batch_exactly_full_by_bytes_is_emitted_at_once() -> None:
    """A batch with no room left for another item is emitted by the add that filled it."""
    batcher = Batcher(max_bytes=11 + 20 + 1 + 20, linger=1.0)
    assert batcher.add(entry(TX), now=0.0) == []
    (full,) = batcher.add(entry(TX), now=0.0)
    assert full.size == batcher.max_bytes


def test_oversized_entry_is_emitted_alone_after_open_batch() -> None:
    """An entry too big for any batch is emitted alone, after the route's open batch, keeping order."""
    batcher = Batcher(max_bytes=100, linger=1.0)
    small = entry(TX, 20)
    huge = entry(TX, 200)
    assert batcher.oversized(huge)
    assert not batcher.oversized(small)
    batcher.add(small, now=0.0)
    first, second = batcher.add(huge, now=0.0)
    assert first.entries == (small,)
    assert second.entries == (huge,)
    assert batcher.statistics().open_batches == 0


def test_linger_emits_after_deadline_and_next_due_reports_it() -> None:
    """A batch is due exactly ``linger`` seconds after its first entry, and ``next_due`` says when."""
    batcher = Batcher(max_bytes=10_000, linger=0.5)
    assert batcher.next_due() is None
    batcher.add(entry(TX), now=10.0)
    batcher.add(entry(TX), now=10.4)
    assert batcher.next_due() == 10.5
    assert batcher.due(10.49) == []
    (batch,) = batcher.due(10.5)
    assert (batch.created_at, len(batch.entries)) == (10.0, 2)
    assert batcher.next_due() is None


def test_due_at_next_due_always_emits() -> None:
    """Waking exactly at ``next_due()`` emits that batch, whatever the float rounding."""
    batcher = Batcher(max_bytes=10_000, linger=0.5)
    batcher.add(entry(TX), now=0.6682964727603343)
    deadline = batcher.next_due()
    assert deadline is not None
    assert len(batcher.due(deadline)) == 1


def test_due_returns_oldest_routes_first() -> None:
    """Lingered batches of several routes come out oldest first; younger ones stay open."""
    batcher = Batcher(max_bytes=10_000, linger=1.0)
    batcher.add(entry(ATTR), now=1.0)
    batcher.add(entry(TX), now=2.0)
    batcher.add(entry(ATTR), now=2.5)
    batcher.add(entry(Route(Endpoint.FRAUD, "org-1")), now=3.0)
    assert [b.route for b in batcher.due(3.5)] == [ATTR, TX]
    assert batcher.next_due() == 4.0


def test_time_going_backwards_is_clamped() -> None:
    """A ``now`` older than one already seen is taken as the latest seen, so deadlines stay ordered."""
    batcher = Batcher(max_bytes=10_000, linger=1.0)
    batcher.add(entry(ATTR), now=5.0)
    batcher.add(entry(TX), now=4.0)
    assert batcher.next_due() == 6.0
    assert [b.created_at for b in batcher.flush_all()] == [5.0, 5.0]


def test_remove_partitions_takes_entries_out_unsent() -> None:
    """Entries of revoked partitions leave open batches in order; the rest stay with their deadline."""
    batcher = Batcher(max_bytes=10_000, linger=1.0)
    a, b, c, d = entry(TX, tp=TP0), entry(TX, tp=TP1), entry(TX, tp=TP0), entry(ATTR, tp=TP1)
    for now, e in enumerate((a, b, c, d)):
        batcher.add(e, now=float(now))
    assert batcher.remove_partitions({TP1}) == [b, d]
    assert batcher.statistics() == BatcherStatistics(
        open_batches=1, buffered_entries=2, buffered_bytes=40, emitted_batches=0, emitted_entries=0
    )
    (batch,) = batcher.flush_all()
    assert batch.entries == (a, c)
    assert batch.size == len(batch.body_bytes)
    assert batch.created_at == 0.0
    assert batcher.remove_partitions({TP0}) == []


def test_statistics_track_buffer_and_counters() -> None:
    """Statistics count open batches, buffered entries and bytes, and emitted totals."""
    batcher = Batcher(max_bytes=10_000, linger=1.0, max_items=2)
    for _ in range(3):
        batcher.add(entry(TX, 10), now=0.0)
    batcher.add(entry(ATTR, 12), now=0.0)
    assert batcher.statistics() == BatcherStatistics(
        open_batches=2, buffered_entries=2, buffered_bytes=22, emitted_batches=1, emitted_entries=2
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_bytes": 12, "linger": 1.0}, "max_bytes"),
        ({"max_bytes": 100, "linger": -1.0}, "linger"),
        ({"max_bytes": 100, "linger": float("nan")}, "linger"),
        ({"max_bytes": 100, "linger": 1.0, "max_items": 0}, "max_items"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, float], message: str) -> None:
    """Settings that could never produce a valid batch raise ValueError naming the setting."""
    with pytest.raises(ValueError, match=message):
        Batcher(**kwargs)  # type: ignore[arg-type]


# -- properties -----------------------------------------------------------------------------------------

_ROUTES = (TX, ATTR, Route(Endpoint.USER_ATTRIBUTIONS, "org-1", "user-7"))
_TPS = (TP0, TP1)
_ENVELOPE = len(b'{"data":[]}')

_add = st.tuples(
    st.just("add"), st.sampled_from(_ROUTES), st.sampled_from(_TPS), st.integers(8, 120), st.floats(0, 0.3)
)
# A run of small entries on one route, so count limits are reached, not only byte limits.
_burst = st.tuples(st.just("burst"), st.sampled_from(_ROUTES), st.sampled_from(_TPS), st.integers(2, 12))
_due = st.tuples(st.just("due"), st.floats(0, 1.0))
_remove = st.tuples(st.just("remove"), st.sampled_from(_TPS))
_flush = st.tuples(st.just("flush"), st.sampled_from(_ROUTES))
_ops = st.lists(st.one_of(_add, _add, _add, _burst, _due, _remove, _flush), max_size=120)
# Endpoint item limits, lowered per example (the batcher reads them through Route.max_items), so the
# route's own limit is exercised with a handful of entries; the real limits stay possible.
_limits = st.fixed_dictionaries({e: st.one_of(st.integers(1, 6), st.just(ENDPOINT_LIMITS[e])) for e in Endpoint})


@settings(
    max_examples=EXAMPLES(200),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    ops=_ops,
    max_bytes=st.one_of(st.integers(13, 120), st.integers(13, 600), st.integers(600, 4000)),
    max_items=st.one_of(st.none(), st.integers(1, 6)),
    linger=st.floats(0, 0.8),
    limits=_limits,
)
def test_batches_respect_limits_and_lose_or_duplicate_nothing(
    ops: list[tuple[object, ...]], max_bytes: int, max_items: int | None, linger: float, limits: dict[Endpoint, int]
) -> None:
    """Any add/due/flush/remove sequence: every entry leaves exactly once (in a batch or removed), in route
    order, and every batch keeps the item-count limit (the route's, lowered by ``max_items``) and the byte
    limit (only a lone oversized entry may exceed it); lingered batches were due, and nothing overdue stays."""
    with mock.patch.dict(ENDPOINT_LIMITS, limits):
        _run_batcher_ops(ops, max_bytes, max_items, linger, limits)


def _run_batcher_ops(
    ops: list[tuple[object, ...]], max_bytes: int, max_items: int | None, linger: float, limits: dict[Endpoint, int]
) -> None:
    batcher = Batcher(max_bytes=max_bytes, linger=linger, max_items=max_items)
    now = 0.0
    added: list[BatchEntry] = []
    removed: list[BatchEntry] = []
    emitted: list[Batch] = []
    left: set[int] = set()  # ids of entries added and not yet emitted or removed

    def count_limit(route: Route) -> int:
        """The item limit computed independently of ``Batcher.item_limit``."""
        limit = limits[route.endpoint]
        return limit if max_items is None else min(limit, max_items)

    def check(batches: list[Batch], *, lingered: bool) -> None:
        for batch in batches:
            entries = batch.entries
            assert entries, "no empty batch"
            assert all(e.item.route == batch.route for e in entries)
            # limits: item count, and body bytes measured on the body itself
            assert len(entries) <= count_limit(batch.route)
            body = batch.body_bytes
            assert batch.size == len(body)
            lone_oversized = len(entries) == 1 and _ENVELOPE + len(entries[0].item.encoded) > max_bytes
            assert len(body) <= max_bytes or lone_oversized, f"{len(body)} bytes > {max_bytes}"
            assert len(orjson.loads(body)["data"]) == len(entries)
            if lingered:
                assert batch.created_at + linger <= now
            # no duplicate and no invention: each entry was waiting, and now it is not
            for e in entries:
                assert id(e) in left, "emitted twice, or emitted after its removal, or never added"
                left.discard(id(e))
        emitted.extend(batches)

    def add(route: Route, tp: TopicPartition, size: int) -> None:
        new = entry(route, size, tp)
        added.append(new)
        left.add(id(new))
        check(batcher.add(new, now), lingered=False)

    for op in ops:
        if op[0] == "add":
            _, route, tp, size, step = op
            assert isinstance(route, Route) and isinstance(tp, TopicPartition)
            assert isinstance(size, int) and isinstance(step, float)
            now += step
            add(route, tp, size)
        elif op[0] == "burst":
            _, route, tp, n = op
            assert isinstance(route, Route) and isinstance(tp, TopicPartition) and isinstance(n, int)
            for _ in range(n):
                add(route, tp, 8)
        elif op[0] == "due":
            step = op[1]
            assert isinstance(step, float)
            now += step
            check(batcher.due(now), lingered=True)
            deadline = batcher.next_due()
            assert deadline is None or deadline > now  # nothing overdue is left behind
        elif op[0] == "flush":
            route = op[1]
            assert isinstance(route, Route)
            flushed = batcher.flush(route)
            check(flushed, lingered=False)
            assert all(b.route == route for b in flushed)
        else:
            tp = op[1]
            assert isinstance(tp, TopicPartition)
            taken = batcher.remove_partitions({tp})
            for e in taken:
                assert e.ref.tp == tp, "only the revoked partition's entries are taken"
                assert id(e) in left, "removed twice, or removed after it was emitted"
                left.discard(id(e))
            removed += taken
        stats = batcher.statistics()
        assert stats.buffered_entries == len(left), "the batcher's own count disagrees: lost or duplicated"
        assert stats.emitted_entries == sum(len(b.entries) for b in emitted)
    check(batcher.flush_all(), lingered=False)

    stats = batcher.statistics()
    assert (stats.open_batches, stats.buffered_entries, stats.buffered_bytes) == (0, 0, 0)
    assert not left, f"{len(left)} entries were lost: never emitted nor removed"
    out = [e for b in emitted for e in b.entries]
    # no loss and no duplicate, stated on the totals as well
    assert len(out) + len(removed) == len(added)
    assert len({id(e) for e in out} | {id(e) for e in removed}) == len(added)
    # per-route order: what was emitted is what was added and not removed, in the same order
    removed_ids = {id(e) for e in removed}
    for route in _ROUTES:
        kept = [e for e in added if e.item.route == route and id(e) not in removed_ids]
        assert [e for e in out if e.item.route == route] == kept


def _rebuilt(batch: Batch, entries: tuple[BatchEntry, ...]) -> Batch:
    """``batch`` with other entries and a consistent size (so only the entry checks can notice)."""
    size = _ENVELOPE + sum(e.size for e in entries) + len(entries) - 1
    return Batch(batch.route, entries, batch.created_at, size)


@pytest.mark.parametrize(
    ("bug", "message"),
    [("duplicate", "emitted twice"), ("lose", "were lost"), ("overfill", "bytes > 100")],
)
def test_batcher_property_catches_broken_batchers(bug: str, message: str) -> None:
    """The property's checks are not vacuous: a batcher that duplicates, loses or overfills fails them."""
    original_emit = Batcher._emit
    original_add = Batcher.add

    def duplicating_emit(self: Batcher, route: Route) -> Batch:
        batch = original_emit(self, route)
        return _rebuilt(batch, batch.entries + batch.entries[:1])

    def losing_emit(self: Batcher, route: Route) -> Batch:
        batch = original_emit(self, route)
        return _rebuilt(batch, batch.entries[1:]) if len(batch.entries) > 1 else batch

    def overfilling_add(self: Batcher, e: BatchEntry, now: float) -> list[Batch]:
        limit, self.max_bytes = self.max_bytes, 10**9
        try:
            return original_add(self, e, now)
        finally:
            self.max_bytes = limit

    name, replacement = {
        "duplicate": ("_emit", duplicating_emit),
        "lose": ("_emit", losing_emit),
        "overfill": ("add", overfilling_add),
    }[bug]
    ops: list[tuple[object, ...]] = [("add", TX, TP0, 40, 0.0) for _ in range(5)]
    max_bytes = 100 if bug == "overfill" else 1000  # 1000: one batch of five, emitted by the final flush
    with mock.patch.object(Batcher, name, replacement), pytest.raises(AssertionError, match=message):
        _run_batcher_ops(ops, max_bytes=max_bytes, max_items=None, linger=0.5, limits=dict(ENDPOINT_LIMITS))


def test_flush_emits_only_the_named_route() -> None:
    """flush(route) closes that route's open batch and leaves the others open."""
    a, b = Route(Endpoint.TRANSACTIONS, "o1"), Route(Endpoint.FRAUD, "o1")
    batcher = Batcher(max_bytes=10_000, linger=10.0)
    for i, route in enumerate((a, b, a)):
        item = MappedItem(route, {}, f"i{i}", "k", b"{}", f"i{i}")
        batcher.add(BatchEntry(RecordRef("t", 0, i), item), 0.0)
    [flushed] = batcher.flush(b)
    assert flushed.route == b and [e.item.item_id for e in flushed.entries] == ["i1"]
    assert batcher.flush(b) == []
    assert [len(x.entries) for x in batcher.flush_all()] == [2]
