"""Groups mapped items per route into request bodies, flushed on item count, body bytes or linger time.

Items that share a :class:`~bridge.routes.Route` can travel in one ``{"data":[...]}`` request. The
batcher keeps one open batch per route and emits it when it is full (the route's ``max_items``, a lower
configured item cap, or the body-byte cap) or when its first entry has waited ``linger`` seconds.
It never sends anything itself: the dispatcher calls it and acts on the batches it returns.

Body size is exact, not estimated: ``body = b'{"data":[' + b','.join(encoded) + b']}'``, so the size of
a batch of n entries is ``11 + sum(len(encoded)) + (n - 1)``.

Ordering: within a route, entries leave in the order they were added (I7), and a route's batches leave
in order. Across routes there is no ordering.

Linger deadlines are kept in an ordered dict whose order is the creation order of the open batches;
since ``now`` never goes backwards, the first open batch is always the one due first, so
:meth:`Batcher.next_due` is O(1) and :meth:`Batcher.due` is O(batches returned), even with one open
batch per user (the ``user_attributions`` route carries the user id).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.records import RecordRef, SourceRecord, TopicPartition
from bridge.routes import MappedItem, Route

__all__ = ["Batch", "BatchEntry", "Batcher", "BatcherStatistics"]

_PREFIX = b'{"data":['
_SUFFIX = b"]}"
_ENVELOPE = len(_PREFIX) + len(_SUFFIX)
_MIN_ITEM = 2  # the smallest JSON object, b"{}": a batch with less room than ", {}" left is full


@dataclass(frozen=True, slots=True)
class BatchEntry:
    """One mapped item and the input record it came from (its offset is finished when the item is)."""

    ref: RecordRef
    item: MappedItem
    #: the consumed record itself, kept so a failure record can carry its key, value and headers verbatim
    record: SourceRecord | None = field(default=None, compare=False, repr=False)

    @property
    def size(self) -> int:
        """Bytes this entry adds to a body, not counting the separating comma."""
        return len(self.item.encoded)


@dataclass(slots=True)
class Batch:
    """A closed batch: one request's worth of entries for one route.

    Attributes:
        route: where all entries go.
        entries: in the order they were added.
        created_at: the ``now`` of the first entry's :meth:`Batcher.add` (monotonic seconds).
        size: the exact length of :attr:`body_bytes`, known without building it.
        max_items: the item limit the batch was built under (``None``: the route's own limit). The
            dispatcher may merge entries of several batches of a route into one request; it never
            puts more than this in one.
        max_bytes: the body-byte limit the batch was built under (``None``: no byte limit).
    """

    route: Route
    entries: tuple[BatchEntry, ...]
    created_at: float
    size: int
    max_items: int | None = None
    max_bytes: int | None = None
    _body: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def body_bytes(self) -> bytes:
        """The request body ``{"data":[item,...]}``, built on first access and then reused."""
        if self._body is None:
            self._body = _PREFIX + b",".join([e.item.encoded for e in self.entries]) + _SUFFIX
        return self._body

    @property
    def refs(self) -> list[RecordRef]:
        """The input records of the entries, in order."""
        return [e.ref for e in self.entries]


class BatcherStatistics(NamedTuple):
    """A snapshot for the metrics layer.

    Attributes:
        open_batches: routes with an open (not yet emitted) batch.
        buffered_entries: entries waiting in open batches.
        buffered_bytes: sum of the entries' encoded sizes (envelope and commas not counted).
        emitted_batches: batches returned so far (a counter).
        emitted_entries: entries returned in batches so far (a counter; removed entries not counted).
    """

    open_batches: int
    buffered_entries: int
    buffered_bytes: int
    emitted_batches: int
    emitted_entries: int


@dataclass(slots=True)
class _OpenBatch:
    route: Route
    limit: int
    created_at: float
    entries: list[BatchEntry] = field(default_factory=list)
    size: int = _ENVELOPE - 1  # + (len + 1) per entry gives 11 + sum(len) + (n - 1)

    def close(self, max_bytes: int) -> Batch:
        return Batch(self.route, tuple(self.entries), self.created_at, self.size, self.limit, max_bytes)


class Batcher:
    """Per-route micro-batching by count, bytes and linger; synchronous, time passed in.

    Args:
        max_bytes: the largest body to build, envelope and commas included.
        linger: seconds an open batch may wait after its first entry before :meth:`due` emits it.
        max_items: an optional cap below the routes' own ``max_items`` (the lower of the two applies).

    Oversized entries: an entry whose body alone (``11 + size``) exceeds ``max_bytes`` is not refused.
    It is emitted at once in a batch of its own (after the route's open batch, to keep order): the
    batcher is total, so every entry is emitted exactly once. When ``max_bytes`` is the API's hard body
    limit, check :meth:`oversized` before adding and send such records to the DLQ (``too_large``).

    ``now`` must be monotonic; a ``now`` earlier than one already seen is taken as the latest seen.

    Raises:
        ValueError: ``max_bytes`` cannot hold one ``{}`` item, ``linger`` is negative, or ``max_items``
            is below 1.
    """

    __slots__ = (
        "_buffered_bytes",
        "_buffered_entries",
        "_emitted_batches",
        "_emitted_entries",
        "_last_now",
        "_open",
        "linger",
        "max_bytes",
        "max_items",
    )

    def __init__(self, *, max_bytes: int, linger: float, max_items: int | None = None) -> None:
        if max_bytes < _ENVELOPE + _MIN_ITEM:
            raise ValueError(f"max_bytes must be at least {_ENVELOPE + _MIN_ITEM}, got {max_bytes}")
        if not linger >= 0:  # also rejects NaN
            raise ValueError(f"linger must be >= 0 seconds, got {linger}")
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {max_items}")
        self.max_bytes = max_bytes
        self.linger = float(linger)
        self.max_items = max_items
        self._open: OrderedDict[Route, _OpenBatch] = OrderedDict()
        self._last_now = float("-inf")
        self._buffered_entries = 0
        self._buffered_bytes = 0
        self._emitted_batches = 0
        self._emitted_entries = 0

    # -- adding and emitting ------------------------------------------------------------------------

    def oversized(self, entry: BatchEntry) -> bool:
        """``True`` when ``entry`` alone makes a body larger than ``max_bytes``."""
        return _ENVELOPE + entry.size > self.max_bytes

    def item_limit(self, route: Route) -> int:
        """Items per batch for ``route``: its endpoint's limit, lowered by ``max_items`` when set."""
        limit = route.max_items
        return limit if self.max_items is None else min(limit, self.max_items)

    def add(self, entry: BatchEntry, now: float) -> list[Batch]:
        """Add ``entry`` to its route's open batch; return the batches that this made ready.

        The result (0, 1 or 2 batches, in send order) holds: the open batch if ``entry`` did not fit in
        it; the batch holding ``entry`` if that batch is now full by count or bytes; or ``entry`` alone
        if it is oversized.
        """
        now = self._clock(now)
        route = entry.item.route
        size = entry.size
        ready: list[Batch] = []
        batch = self._open.get(route)
        if batch is not None and (len(batch.entries) >= batch.limit or batch.size + 1 + size > self.max_bytes):
            ready.append(self._emit(route))
            batch = None
        if batch is None:
            batch = _OpenBatch(route, self.item_limit(route), now)
            self._open[route] = batch
        batch.entries.append(entry)
        batch.size += size + 1
        self._buffered_entries += 1
        self._buffered_bytes += size
        if len(batch.entries) >= batch.limit or batch.size + 1 + _MIN_ITEM > self.max_bytes:
            ready.append(self._emit(route))
        return ready

    def due(self, now: float) -> list[Batch]:
        """Emit the open batches whose first entry was added ``linger`` seconds ago or more.

        Calling ``due(next_due())`` always emits at least the batch ``next_due`` reported.
        """
        now = self._clock(now)
        ready: list[Batch] = []
        while self._open:
            route, batch = next(iter(self._open.items()))
            # Same float expression as next_due(), so due(next_due()) always emits that batch.
            if batch.created_at + self.linger > now:
                break
            ready.append(self._emit(route))
        return ready

    def next_due(self) -> float | None:
        """The earliest linger deadline of the open batches (sleep until then); ``None`` if none is open."""
        if not self._open:
            return None
        first = next(iter(self._open.values()))
        return first.created_at + self.linger

    def flush(self, route: Route) -> list[Batch]:
        """Emit ``route``'s open batch now, if there is one (to keep a key's order across routes)."""
        return [self._emit(route)] if route in self._open else []

    def flush_all(self) -> list[Batch]:
        """Emit every open batch now, oldest first (shutdown and revoke drains)."""
        return [self._emit(route) for route in list(self._open)]

    def remove_partitions(self, tps: Collection[TopicPartition]) -> list[BatchEntry]:
        """Take the entries of revoked partitions out of the open batches, unsent, in their order.

        Open batches keep their ``created_at`` (their linger deadline does not move); a batch left
        empty is dropped. O(buffered entries).
        """
        if not tps or not self._open:
            return []
        keys = {(tp.topic, tp.partition) for tp in tps}
        removed: list[BatchEntry] = []
        for route in list(self._open):
            batch = self._open[route]
            kept: list[BatchEntry] = []
            for entry in batch.entries:
                if (entry.ref.topic, entry.ref.partition) in keys:
                    removed.append(entry)
                    batch.size -= entry.size + 1
                    self._buffered_entries -= 1
                    self._buffered_bytes -= entry.size
                else:
                    kept.append(entry)
            if not kept:
                del self._open[route]
            elif len(kept) != len(batch.entries):
                batch.entries = kept
        return removed

    def statistics(self) -> BatcherStatistics:
        """A snapshot for metrics; O(1)."""
        return BatcherStatistics(
            open_batches=len(self._open),
            buffered_entries=self._buffered_entries,
            buffered_bytes=self._buffered_bytes,
            emitted_batches=self._emitted_batches,
            emitted_entries=self._emitted_entries,
        )

    # -- internals ----------------------------------------------------------------------------------

    def _clock(self, now: float) -> float:
        if now > self._last_now:
            self._last_now = now
        return self._last_now

    def _emit(self, route: Route) -> Batch:
        batch = self._open.pop(route)
        closed = batch.close(self.max_bytes)
        n = len(closed.entries)
        self._buffered_entries -= n
        self._buffered_bytes -= closed.size - _ENVELOPE - (n - 1)
        self._emitted_batches += 1
        self._emitted_entries += n
        return closed
