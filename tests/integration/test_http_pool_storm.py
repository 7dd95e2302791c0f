"""A cancellation storm leaves the Kard client's connection pool healthy (PITFALLS H3, encode/httpcore#1093).

The project's real :class:`~bridge.kard.client.KardClient`, with a pool of 4 connections, sends 4x that many
batches at once to the real sandbox, which answers slowly (random latency, some hangs). Half of the sends are
cancelled at random moments, chosen alternately among sends still waiting for a pool slot and sends on the
wire (connecting, sending, waiting for the answer or reading it). After every round the pool must hold no
request and only idle connections; after all rounds, with the faults cleared, a fresh batch of pool-size
sends must all succeed within a liveness bound, use every slot at once, and the sandbox must hold the items
of every send that was not cancelled, exactly once. One round starts with the token revoked, so its sends
also go through 401s and a token refresh while they are being cancelled.

Where a send is when it is cancelled is observed with httpx event hooks on the client's ``AsyncClient``:
the request hook runs once the send was admitted (it holds a pool slot), the response hook once the answer's
headers arrived. The pool is inspected through httpx's transport (``_transport._pool``, httpcore's
``AsyncConnectionPool``): private attributes, read only, because that is where a leak would show.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
from collections import Counter
from typing import Any

import httpcore
import httpx
import orjson
import pytest
from pydantic import SecretStr

from bridge.kard.client import KardClient, KardClientConfig
from bridge.kard.responses import OutcomeKind
from bridge.routes import Endpoint, MappedItem, Route
from bridge.sandbox.process import SandboxProcess

POOL = 4
ROUNDS = 6
SENDS_PER_ROUND = 4 * POOL
CANCELS_PER_ROUND = SENDS_PER_ROUND // 2
MID_RESPONSE_CANCELS = 3  # of CANCELS_PER_ROUND: cancelled right after their answer's headers arrived
LIVENESS = 10.0  # seconds: a hang (leaked slot, stuck connection) hits it; it is not a speed measurement
ROUTE = Route(Endpoint.TRANSACTIONS, organization_id="org-storm")
STORM_FAULTS = {
    "endpoint": "transactions",
    "latency": {"dist": "uniform", "low": 0.05, "high": 0.4},
    "hang": {"rate": 0.15, "delay": 1.5},
}

_ids = itertools.count()


def _item(item_id: str) -> MappedItem:
    """A valid transaction item for the sandbox, as the mapper would hand it to the client."""
    item = {
        "type": "transaction",
        "id": item_id,
        "attributes": {
            "userId": f"user-{item_id}",
            "amount": 1250,
            "status": "APPROVED",
            "currency": "USD",
            "description": "COFFEE",
            "cardBIN": "411111",
            "cardLastFour": "1111",
            "direction": "DEBIT",
            "paymentType": "CARD",
            "transactionId": f"txn-{item_id}",
            "authorizationDate": "2025-01-02T03:04:05Z",
        },
    }
    return MappedItem(ROUTE, item, item_id, f"user-{item_id}", orjson.dumps(item), item_id)


def _batch(rng: random.Random) -> list[MappedItem]:
    return [_item(f"storm-{next(_ids):06d}") for _ in range(rng.randint(1, 3))]


class _Phases:
    """Where each send task is: waiting for a slot (no hook yet), on the wire, or reading the answer.

    Tasks in ``armed`` are cancelled as soon as their answer's headers arrive (``call_soon`` from the response
    hook): the cancellation then lands while the body is read or the response is being closed.
    """

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.on_wire: set[asyncio.Task[Any]] = set()
        self.reading: set[asyncio.Task[Any]] = set()
        self.armed: set[asyncio.Task[Any]] = set()
        http.event_hooks = {"request": [self._request], "response": [self._response]}

    async def _request(self, request: httpx.Request) -> None:
        if request.url.path.endswith("/transactions"):
            self.on_wire.add(asyncio.current_task())  # type: ignore[arg-type]

    async def _response(self, response: httpx.Response) -> None:
        if response.request.url.path.endswith("/transactions"):
            task = asyncio.current_task()
            assert task is not None
            self.reading.add(task)
            if task in self.armed:
                asyncio.get_running_loop().call_soon(task.cancel)

    def of(self, task: asyncio.Task[Any]) -> str:
        if task in self.reading:
            return "reading"
        return "on_wire" if task in self.on_wire else "waiting"


def _pool(client: KardClient) -> httpcore.AsyncConnectionPool:
    transport = client._http._transport
    transport = getattr(transport, "inner", transport)  # the client's cancel-safe wrapper, if any
    pool = transport._pool  # type: ignore[attr-defined]
    assert isinstance(pool, httpcore.AsyncConnectionPool)
    return pool


def _assert_pool_healthy(client: KardClient, when: str) -> None:
    """No request left in the pool, at most POOL connections, every one idle (or closed): nothing leaked."""
    pool = _pool(client)
    connections = pool.connections
    assert len(connections) <= POOL, f"{when}: {len(connections)} connections > limit {POOL}: {pool!r}"
    leftover = pool._requests
    assert not leftover, f"{when}: {len(leftover)} requests still held by the pool: {pool!r}"
    stuck = [c.info() for c in connections if not (c.is_idle() or c.is_closed())]
    assert not stuck, f"{when}: connections busy with no request (leaked slots): {stuck}"
    stats = client.statistics()
    assert stats.in_flight == 0, f"{when}: {stats.in_flight} requests still counted in flight"
    assert stats.pool_timeouts == 0


async def _storm_round(
    client: KardClient, phases: _Phases, rng: random.Random, sent: dict[str, list[str]], cancelled_in: Counter[str]
) -> None:
    """SENDS_PER_ROUND concurrent sends; CANCELS_PER_ROUND of them cancelled: a few as soon as their answer
    arrives (mid-response), the others at random moments, alternately waiting for a slot and on the wire."""
    batches = [_batch(rng) for _ in range(SENDS_PER_ROUND)]
    tasks = [asyncio.create_task(client.send_batch(ROUTE, batch)) for batch in batches]
    by_task = dict(zip(tasks, batches, strict=True))
    armed = set(rng.sample(tasks, MID_RESPONSE_CANCELS))
    phases.armed |= armed
    cancelled: set[asyncio.Task[Any]] = set(armed)
    moments = sorted(rng.uniform(0.0, 0.6) for _ in range(CANCELS_PER_ROUND - MID_RESPONSE_CANCELS))
    started = asyncio.get_running_loop().time()
    for i, moment in enumerate(moments):
        await asyncio.sleep(max(0.0, started + moment - asyncio.get_running_loop().time()))
        live = [t for t in tasks if not t.done() and t not in cancelled]
        if not live:
            break
        waiting = i % 2 == 0  # alternate: waiting for a slot, or on the wire (which includes reading)
        preferred = [t for t in live if (phases.of(t) == "waiting") == waiting]
        victim = rng.choice(preferred or live)
        cancelled_in[phases.of(victim)] += 1
        victim.cancel()
        cancelled.add(victim)
    async with asyncio.timeout(LIVENESS):
        results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        ids = [item.item_id for item in by_task[task]]
        if isinstance(result, asyncio.CancelledError):
            assert task in cancelled, "only the sends this test cancelled may end cancelled"
            if task in armed:
                cancelled_in["mid_response"] += 1
            sent["cancelled"] += ids
            continue
        assert not isinstance(result, BaseException), f"a send that was not cancelled failed: {result!r}"
        assert result.status == 202
        assert [o.kind for o in result.outcomes] == [OutcomeKind.ACCEPTED] * len(ids)
        sent["done"] += ids  # a send whose cancellation came after it finished counts as done


@pytest.mark.timeout(180)
async def test_cancellation_storm_leaves_the_pool_healthy(sandbox: SandboxProcess) -> None:
    """Rounds of 16 concurrent sends on a 4-connection pool, half cancelled mid-way (waiting for a slot or on
    the wire); then the pool is clean, fresh sends all succeed at once, and no completed send lost items."""
    rng = random.Random(20260)
    config = KardClientConfig(
        base_url=sandbox.base_url,
        client_id=sandbox.client_id,
        client_secret=SecretStr(sandbox.client_secret),
        max_connections=POOL,
        max_keepalive_connections=POOL,
        pool_timeout=5.0,  # a leaked slot would surface as PoolTimeout, well inside the liveness bound
    )
    sent: dict[str, list[str]] = {"done": [], "cancelled": []}
    cancelled_in: Counter[str] = Counter()
    sandbox.control.set_faults(STORM_FAULTS)
    async with KardClient(config) as client:
        phases = _Phases(client._http)
        for round_no in range(ROUNDS):
            if round_no == ROUNDS // 2:  # one round starts with a refused token: 401s, a refresh, retries
                await asyncio.to_thread(sandbox.control.expire_tokens)
            await _storm_round(client, phases, rng, sent, cancelled_in)
            _assert_pool_healthy(client, f"after storm round {round_no}")
        assert client.statistics().unauthorized_retries > 0, "the token round saw 401s"
        # Every kind of cancellation happened: waiting for a slot, on the wire, and mid-response.
        assert cancelled_in["waiting"] >= ROUNDS, cancelled_in
        assert cancelled_in["on_wire"] + cancelled_in["reading"] >= ROUNDS, cancelled_in
        assert cancelled_in["mid_response"] >= ROUNDS, cancelled_in
        assert len(sent["cancelled"]) > 0 and len(sent["done"]) > 0

        # Faults cleared: a fresh batch of pool-size sends all succeeds promptly.
        sandbox.control.clear_faults()
        fresh = [_batch(rng) for _ in range(POOL)]
        async with asyncio.timeout(LIVENESS):
            answers = await asyncio.gather(*(client.send_batch(ROUTE, batch) for batch in fresh))
        assert [a.status for a in answers] == [202] * POOL
        sent["done"] += [item.item_id for batch in fresh for item in batch]
        _assert_pool_healthy(client, "after the fresh batch")

        # The sandbox holds every completed send's items exactly once; cancelled ones at most once (a send
        # cancelled after its body left may still have been processed); nothing else.
        received = Counter(entry["item"]["id"] for entry in sandbox.control.received("transactions"))
        assert all(received[i] == 1 for i in sent["done"]), "a completed send's items are missing or doubled"
        assert set(received) <= set(sent["done"]) | set(sent["cancelled"])
        assert all(n == 1 for n in received.values())

        # Every slot is usable at once: with a fixed latency, pool-size sends are all in flight together.
        sandbox.control.reset()
        sandbox.control.set_faults({"endpoint": "transactions", "latency": {"fixed": 0.5}})
        async with asyncio.timeout(LIVENESS):
            answers = await asyncio.gather(*(client.send_batch(ROUTE, _batch(rng)) for _ in range(POOL)))
        assert [a.status for a in answers] == [202] * POOL
        assert sandbox.control.stats()["max_in_flight_by_endpoint"]["transactions"] == POOL
        _assert_pool_healthy(client, "after the concurrency probe")
    with contextlib.suppress(Exception):
        sandbox.control.clear_faults()
