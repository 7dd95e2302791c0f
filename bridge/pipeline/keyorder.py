"""Per-key order for the dispatcher, sans I/O: which submitted entries may be sent now, and in which request.

Every unfinished record waits in a queue per ordering key (``(topic, partition, user id)``) in input order:
announced with :meth:`KeyOrder.hold` when it is consumed, or queued by :meth:`KeyOrder.submit` when it was
not. A record may be sent only while it is the oldest unfinished record of its key (the *head*), so a later
record never reaches the API while an earlier one is in flight, and it stops holding its key back as soon
as it is :meth:`released <KeyOrder.release>` (terminal: its outcome published; or dropped).

Submitted entries join their route's :class:`Pool`; the pool's ``free`` entries are the heads among them.
:meth:`KeyOrder.take` forms one request from the free entries, oldest first, up to the pool's item and byte
limits. On endpoints that can answer 207 (transactions, fraud) a request holds one record per key: a
partial success could otherwise let a later record land while the earlier one is retried. On all-or-nothing
endpoints (attributions, eligibility) a free entry takes the run of its key's next records that are unsent
entries of the same route along, in order.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bridge.pipeline.batcher import Batch, BatchEntry
from bridge.records import TopicPartition
from bridge.routes import Endpoint, Route

__all__ = ["PARTIAL_SUCCESS", "Job", "Key", "KeyOrder", "Pool", "order_key"]

Key = tuple[str, int, str]  # (topic, partition, ordering key)

#: Endpoints that may accept part of a request (HTTP 207): there, two events of one key never share a request.
PARTIAL_SUCCESS = frozenset({Endpoint.TRANSACTIONS, Endpoint.FRAUD})

_ENVELOPE = 11  # the request body around the items: {"data":[ and ]}
_NO_LIMIT = 1 << 62


def order_key(entry: BatchEntry) -> Key:
    """Order is kept per ordering key *within a partition*: Kafka orders nothing across partitions."""
    ref = entry.ref
    return (ref.topic, ref.partition, entry.item.ordering_key)


@dataclass(slots=True, eq=False)
class Job:
    """One submitted batch: ``done`` once every entry of it is terminal (or dropped)."""

    batch: Batch
    unfinished: int
    partitions: frozenset[TopicPartition] = frozenset()
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass(slots=True, eq=False)
class Pool:
    """A route's submitted entries not yet in a request; ``waiting``, ``tasks`` and ``timer`` are the dispatcher's."""

    route: Route
    partial: bool  # 207-capable endpoint: one entry per key per request
    max_items: int
    max_bytes: int | None
    #: the entries that may go now (heads of their keys), by id(entry), in the order they became free
    free: dict[int, tuple[Key, BatchEntry]] = field(default_factory=dict)
    unsent: int = 0  # entries not yet in a request (free, or waiting for an earlier record of their key)
    waiting: int = 0  # requests formed and awaiting an answer (not those sleeping in back-off)
    tasks: int = 0  # request tasks alive
    timer: asyncio.TimerHandle | None = None


class KeyOrder:
    """The queues per key, the pools per route and the unfinished batches; synchronous, no I/O."""

    __slots__ = ("jobs", "owners", "pools", "queues", "unsent")

    def __init__(self) -> None:
        self.queues: dict[Key, deque[BatchEntry]] = {}  # unfinished records per key, in input order
        self.owners: dict[int, Job | None] = {}  # id(entry) -> its batch's job; None while in an open batch
        self.unsent: set[int] = set()  # id(entry) of submitted entries not yet in a request
        self.pools: dict[Route, Pool] = {}
        self.jobs: set[Job] = set()

    def hold(self, entry: BatchEntry) -> None:
        """Queue ``entry`` behind the earlier records of its key, before its batch is closed."""
        self.queues.setdefault(order_key(entry), deque()).append(entry)
        self.owners[id(entry)] = None

    def submit(self, batch: Batch) -> Pool:
        """Put a closed batch's entries in their route's pool (those not held queue now); returns the pool."""
        pool = self._pool(batch)
        entries = batch.entries
        job = Job(batch, len(entries), frozenset(e.ref.tp for e in entries))
        owners, queues, unsent, free = self.owners, self.queues, self.unsent, pool.free
        for entry in entries:
            key = order_key(entry)
            eid = id(entry)
            queue = queues.get(key)
            if queue is None:
                queue = queues[key] = deque()
            if eid not in owners:
                queue.append(entry)
            owners[eid] = job
            unsent.add(eid)
            if queue[0] is entry:
                free[eid] = (key, entry)
        pool.unsent += len(entries)
        self.jobs.add(job)
        return pool

    def take(self, pool: Pool) -> list[BatchEntry]:
        """Take one request's worth of ``pool``'s free entries, oldest first (with their runs, all-or-nothing).

        An entry larger than the byte limit on its own still goes, alone: the batcher emitted it that way.
        """
        free, unsent = pool.free, self.unsent
        max_items = pool.max_items
        max_bytes = _NO_LIMIT if pool.max_bytes is None else pool.max_bytes
        taken: list[BatchEntry] = []
        heads: list[int] = []
        size = _ENVELOPE - 1
        for eid, (key, entry) in free.items():
            run = [entry] if pool.partial else self._run_of(key, pool.route)
            fits = 0
            for queued in run:
                grown = size + queued.size + 1
                if len(taken) >= max_items or (grown > max_bytes and taken):
                    break
                taken.append(queued)
                size = grown
                fits += 1
            if not fits:
                break
            heads.append(eid)
            if len(taken) >= max_items:
                break
        for eid in heads:
            del free[eid]
        for entry in taken:
            unsent.discard(id(entry))
        pool.unsent -= len(taken)
        return taken

    def release(self, entries: Sequence[BatchEntry]) -> list[Pool]:
        """``entries`` are terminal (or dropped): free the next record of each key; finish their batches.

        Returns the pools that got new free entries. Releasing an entry twice is a no-op.
        """
        owners, queues, unsent, pools, jobs = self.owners, self.queues, self.unsent, self.pools, self.jobs
        woken: list[Pool] = []
        for entry in entries:
            eid = id(entry)
            if eid not in owners:
                continue
            job = owners.pop(eid)
            key = order_key(entry)
            if eid in unsent:  # dropped before it was sent
                unsent.discard(eid)
                pool = pools.get(entry.item.route)
                if pool is not None:
                    pool.free.pop(eid, None)
                    pool.unsent -= 1
            queue = queues.get(key)
            if queue is not None:
                if queue[0] is entry:
                    queue.popleft()
                else:
                    for i, queued in enumerate(queue):
                        if queued is entry:
                            del queue[i]
                            break
                if not queue:
                    del queues[key]
                else:
                    head = queue[0]
                    hid = id(head)
                    if hid in unsent:
                        pool = pools.get(head.item.route)
                        if pool is not None and hid not in pool.free:
                            pool.free[hid] = (key, head)
                            woken.append(pool)
            if job is not None:
                job.unfinished -= 1
                if job.unfinished == 0:
                    job.done.set()
                    jobs.discard(job)
        return woken

    def unsent_entries(self) -> list[BatchEntry]:
        """Every submitted entry not yet in a request."""
        unsent = self.unsent
        return [entry for queue in self.queues.values() for entry in queue if id(entry) in unsent]

    def discard_if_idle(self, pool: Pool) -> None:
        """Forget ``pool`` once it has nothing unsent and no request task (one pool per user on some routes)."""
        if not pool.unsent and not pool.tasks and self.pools.get(pool.route) is pool:
            del self.pools[pool.route]

    def _pool(self, batch: Batch) -> Pool:
        route = batch.route
        limit = route.max_items if batch.max_items is None else min(route.max_items, batch.max_items)
        pool = self.pools.get(route)
        if pool is None:
            pool = self.pools[route] = Pool(route, route.endpoint in PARTIAL_SUCCESS, limit, batch.max_bytes)
        else:
            pool.max_items, pool.max_bytes = limit, batch.max_bytes
        return pool

    def _run_of(self, key: Key, route: Route) -> list[BatchEntry]:
        """The oldest records of ``key`` while they are unsent entries of ``route``, in order."""
        run: list[BatchEntry] = []
        unsent = self.unsent
        for queued in self.queues[key]:
            if id(queued) not in unsent or queued.item.route != route:
                break
            run.append(queued)
        return run
