"""What the Kard sandbox received: accepted items, a request log, counters, duplicates; all for inspection.

Benchmarks push ~1M items through the sandbox, so storage is columnar and sized by ``record`` mode:

* ``full`` (default, for tests): per accepted item, its request (shared object), index, key and the item's
  JSON bytes (re-serialised by orjson, so key order is kept but whitespace is not);
* ``ids``: the same without the JSON bytes (a few hundred bytes per item, mostly the key and its count);
* ``none``: counters only; no per-item records and no duplicate counts.

An item's **key** is its own ``id`` where it has one (transactions, fraud, users, upload parts), the path's
user id for ``users_delete``, the new upload id for ``uploads_create``, and otherwise ``digest:<hex>``: a
BLAKE2b digest of the endpoint, path parameters and the item's canonical JSON (attributions, eligibility,
audits). Duplicates are counted per endpoint and key.
"""

from __future__ import annotations

import hashlib
import time
from array import array
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

__all__ = ["RecordMode", "RequestMeta", "RequestRecord", "Store"]

RecordMode = Literal["full", "ids", "none"]


@dataclass(slots=True)
class RequestMeta:
    """One request's identity, shared by every item it carried (one pointer per stored item)."""

    seq: int
    time: float
    endpoint: str
    params: dict[str, str]


@dataclass(slots=True)
class RequestRecord:
    """One entry of the request log."""

    meta: RequestMeta
    method: str
    path: str
    generation: int = 0
    status: int = 0
    items: int = 0
    accepted: int = 0
    faults: list[str] = field(default_factory=list)
    headers: dict[str, str] | None = None

    def as_json(self) -> dict[str, Any]:
        """The JSON form served by ``GET /_sandbox/requests``."""
        out: dict[str, Any] = {
            "seq": self.meta.seq,
            "time": self.meta.time,
            "endpoint": self.meta.endpoint,
            "params": self.meta.params,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "items": self.items,
            "accepted": self.accepted,
            "faults": self.faults,
        }
        if self.headers is not None:
            out["headers"] = self.headers
        return out


class Store:
    """Accepted items, the request log and the counters. Single-threaded: used from the event loop only."""

    def __init__(self, record: RecordMode = "full", *, max_requests: int = 200_000) -> None:
        self.record: RecordMode = record
        self._max_requests = max_requests
        self.started_at = time.time()
        self._seq = 0
        self._generation = 0
        self.reset()

    def reset(self) -> None:
        """Forget everything received and every counter (the sequence number keeps growing).

        Requests still in flight across a reset are neither counted nor recorded when they finish.
        """
        self._generation += 1
        self.reset_at = time.time()
        self.request_log: deque[RequestRecord] = deque(maxlen=self._max_requests)
        self.requests_total = 0
        self.status_counts: dict[str, Counter[str]] = {}
        self.items_received: Counter[str] = Counter()
        self.items_accepted: Counter[str] = Counter()
        self.items_rejected: Counter[str] = Counter()
        self.token_requests = 0
        self.tokens_issued = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._in_flight_by: Counter[str] = Counter()
        self.max_in_flight_by: Counter[str] = Counter()
        self._metas: list[RequestMeta] = []
        self._index = array("I")
        self._keys: list[str] = []
        # full mode: one compact blob per request (joined item JSONs) + each item's [start, end) in it. Keeping
        # each item's own orjson.dumps() result instead costs ~4 KiB per item (orjson's buffer is not shrunk).
        self._blobs: list[bytes] = []
        self._starts = array("I")
        self._ends = array("I")
        self._positions: dict[str, array[int]] = {}
        self._counts: dict[str, dict[str, int]] = {}

    # ------------------------------------------------------------------------------------- request lifecycle

    def begin(
        self, endpoint: str, method: str, path: str, params: dict[str, str], headers: dict[str, str] | None
    ) -> RequestRecord:
        """Open a request: give it the next sequence number, log it and count it as in flight."""
        self._seq += 1
        rec = RequestRecord(
            RequestMeta(self._seq, time.time(), endpoint, params), method, path, generation=self._generation
        )
        if self.record == "full":
            rec.headers = headers
        self.request_log.append(rec)
        self.requests_total += 1
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        self._in_flight_by[endpoint] += 1
        self.max_in_flight_by[endpoint] = max(self.max_in_flight_by[endpoint], self._in_flight_by[endpoint])
        if endpoint == "token":
            self.token_requests += 1
        return rec

    def finish(self, rec: RequestRecord, status: int) -> None:
        """Close a request with the status it was answered with (0: connection dropped or abandoned)."""
        rec.status = status
        if rec.generation != self._generation:
            return
        endpoint = rec.meta.endpoint
        self.in_flight -= 1
        self._in_flight_by[endpoint] -= 1
        self.status_counts.setdefault(endpoint, Counter())[str(status) if status else "dropped"] += 1

    # ------------------------------------------------------------------------------------------------ items

    @staticmethod
    def digest_key(endpoint: str, params: dict[str, str], item: Any) -> str:
        """The stable key of an item without an id: a digest of endpoint, path parameters and canonical JSON."""
        canonical = orjson.dumps([endpoint, params, item], option=orjson.OPT_SORT_KEYS)
        return "digest:" + hashlib.blake2b(canonical, digest_size=12).hexdigest()

    def item_key(self, endpoint: str, params: dict[str, str], item: Any) -> str:
        """The key an item is recorded and deduplicated under (see the module docstring)."""
        if type(item) is dict:
            item_id = item.get("id")
            if type(item_id) is str and item_id:
                return item_id
        return self.digest_key(endpoint, params, item)

    def seen(self, endpoint: str, key: str) -> int:
        """How many times an item with this key was already accepted on ``endpoint``."""
        counts = self._counts.get(endpoint)
        return counts.get(key, 0) if counts else 0

    def count(self, rec: RequestRecord, received: int, rejected: int) -> None:
        """Count a request's items; ``rejected`` ones are not recorded."""
        endpoint = rec.meta.endpoint
        rec.items = received
        if rec.generation != self._generation:
            return
        self.items_received[endpoint] += received
        self.items_rejected[endpoint] += rejected

    def add(self, rec: RequestRecord, accepted: list[tuple[int, str, Any]]) -> None:
        """Record accepted items as ``(index in data, key, item)``."""
        meta = rec.meta
        endpoint = meta.endpoint
        rec.accepted = len(accepted)
        if rec.generation != self._generation:
            return
        self.items_accepted[endpoint] += len(accepted)
        if self.record == "none":
            return
        counts = self._counts.setdefault(endpoint, {})
        first = len(self._keys)
        self._positions.setdefault(endpoint, array("I")).extend(range(first, first + len(accepted)))
        self._metas.extend([meta] * len(accepted))
        keys = self._keys
        for index, key, _ in accepted:
            counts[key] = counts.get(key, 0) + 1
            self._index.append(index)
            keys.append(key)
        if self.record == "full":
            parts = [orjson.dumps(item) for _, _, item in accepted]
            blob = b"".join(parts)
            end = 0
            for part in parts:
                self._starts.append(end)
                end += len(part)
                self._ends.append(end)
            self._blobs.extend([blob] * len(parts))

    # ------------------------------------------------------------------------------------------ inspection

    def _entry(self, pos: int) -> dict[str, Any]:
        meta = self._metas[pos]
        out: dict[str, Any] = {
            "seq": meta.seq,
            "time": meta.time,
            "endpoint": meta.endpoint,
            "params": meta.params,
            "index": self._index[pos],
            "key": self._keys[pos],
        }
        if self.record == "full":
            out["item"] = orjson.loads(self._blobs[pos][self._starts[pos] : self._ends[pos]])
        return out

    def received_count(self, endpoint: str | None = None) -> int:
        """How many accepted items are stored (for ``endpoint``, or all)."""
        if endpoint is None:
            return len(self._keys)
        positions = self._positions.get(endpoint)
        return len(positions) if positions is not None else 0

    def iter_received(
        self, endpoint: str | None = None, offset: int = 0, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Accepted items in arrival order, as JSON-ready dicts (see ``GET /_sandbox/received``)."""
        if endpoint is None:
            stop = len(self._keys) if limit is None else min(len(self._keys), offset + limit)
            for pos in range(offset, stop):
                yield self._entry(pos)
            return
        positions = self._positions.get(endpoint, array("I"))
        stop = len(positions) if limit is None else min(len(positions), offset + limit)
        for i in range(offset, stop):
            yield self._entry(positions[i])

    def duplicates(self, endpoint: str | None = None) -> dict[str, dict[str, int]]:
        """Keys accepted more than once, with their counts, by endpoint."""
        names = [endpoint] if endpoint is not None else list(self._counts)
        return {name: {k: n for k, n in self._counts.get(name, {}).items() if n > 1} for name in names}

    def stats(self) -> dict[str, Any]:
        """Every counter, for ``GET /_sandbox/stats``."""
        dup = {}
        for name, counts in self._counts.items():
            extra = sum(n - 1 for n in counts.values() if n > 1)
            dup[name] = {"keys": sum(1 for n in counts.values() if n > 1), "extra": extra}
        endpoints = set(self.items_received) | set(self.items_accepted)
        return {
            "record": self.record,
            "started_at": self.started_at,
            "reset_at": self.reset_at,
            "requests_total": self.requests_total,
            "requests": {name: dict(c) for name, c in self.status_counts.items()},
            "items": {
                name: {
                    "received": self.items_received[name],
                    "accepted": self.items_accepted[name],
                    "rejected": self.items_rejected[name],
                }
                for name in sorted(endpoints)
            },
            "stored_items": len(self._keys),
            "duplicates": dup,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "max_in_flight_by_endpoint": dict(self.max_in_flight_by),
            "token_requests": self.token_requests,
            "tokens_issued": self.tokens_issued,
        }
