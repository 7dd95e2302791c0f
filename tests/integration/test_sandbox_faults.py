"""The Kard sandbox's fault injection and inspection API, observed over real HTTP with raw httpx."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterator

import httpx
import orjson
import pytest

from bridge.sandbox.process import SandboxProcess
from tests.fixtures.sandbox import SandboxFactory
from tests.integration.test_sandbox import ORG, _client, post_txns, txn


@pytest.fixture
def client(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    """An httpx client with a valid bearer token for the session sandbox."""
    with _client(sandbox) as http:
        yield http


async def _concurrent_posts(sb: SandboxProcess, n: int) -> list[int]:
    """POST ``n`` one-item transaction batches at once; their statuses in order."""
    async with httpx.AsyncClient(base_url=sb.base_url, timeout=30, trust_env=False) as client:
        creds = {"client_id": sb.client_id, "client_secret": sb.client_secret}
        token = (await client.post("/v2/auth/token", json=creds)).json()["access_token"]
        client.headers["Authorization"] = f"Bearer {token}"
        responses = await asyncio.gather(
            *(client.post(f"/v2/issuers/{ORG}/transactions", json={"data": [txn(f"c{i}")]}) for i in range(n))
        )
    return [r.status_code for r in responses]


def test_429_carries_retry_after_seconds_and_reset_header(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """An injected 429 has Retry-After in seconds and X-RateLimit-Reset as an absolute epoch."""
    sandbox.control.set_faults({"error_rates": {"429": 1.0}, "retry_after": {"seconds": 3, "reset_header": True}})
    before = time.time()
    response = post_txns(client, [txn("e1")])
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "3"
    assert before + 2 <= int(response.headers["X-RateLimit-Reset"]) <= time.time() + 4
    assert response.json()["errors"][0]["status"] == "429"
    assert "error_429" in response.headers["X-Sandbox-Fault"]


def test_429_retry_after_as_http_date(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Retry-After can be sent in its HTTP-date form."""
    sandbox.control.set_faults({"error_rates": {"429": 1.0}, "retry_after": {"seconds": 30, "format": "http-date"}})
    response = client.get("/v2/ping")
    when = email.utils.parsedate_to_datetime(response.headers["Retry-After"]).timestamp()
    assert response.status_code == 429 and time.time() + 25 <= when <= time.time() + 31


def test_error_rate_is_seeded_and_counted(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """A 30 % 5xx rate with a seed fails a reproducible share of requests, and the stats agree."""
    outcomes = []
    for _ in range(2):
        sandbox.control.set_faults({"seed": 11, "error_rates": {"500": 0.2, "503": 0.1}})
        outcomes.append([client.get("/v2/ping").status_code for _ in range(100)])
    assert outcomes[0] == outcomes[1]
    failures = [s for s in outcomes[0] if s >= 500]
    assert 15 <= len(failures) <= 45 and {500, 503} == set(failures)
    injected = sandbox.control.stats()["faults_injected"]
    assert injected["error_500"] == outcomes[1].count(500) and injected["error_503"] == outcomes[1].count(503)


def test_error_body_styles(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Injected errors can mimic a gateway ({"message"}), plain text or an empty body."""
    sandbox.control.set_faults({"endpoint": "ping", "error_rates": {"403": 1.0}, "error_body": "gateway"})
    assert client.get("/v2/ping").json() == {"message": "Unauthorized"}
    sandbox.control.set_faults({"error_rates": {"502": 1.0}, "error_body": "text"})
    assert client.get("/v2/ping").text == "Bad Gateway"
    sandbox.control.set_faults({"error_rates": {"504": 1.0}, "error_body": "empty"})
    assert client.get("/v2/ping").content == b""


def test_latency_is_injected(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """A fixed latency delays the answer by at least that long and is reported in the fault header."""
    sandbox.control.set_faults({"latency": {"fixed": 0.3}})
    started = time.monotonic()
    response = client.get("/v2/ping")
    assert time.monotonic() - started >= 0.3
    assert response.status_code == 200 and response.headers["X-Sandbox-Fault"] == "latency"
    sandbox.control.set_faults({"latency": {"dist": "exponential", "mean": 0.01}})
    assert client.get("/v2/ping").status_code == 200


def test_outage_window_answers_503_then_recovers(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """During an outage window every call gets 503 with Retry-After; after it, calls succeed again."""
    sandbox.control.set_faults({"outage": {"duration": 2.0}})
    response = post_txns(client, [txn("e1")])
    assert response.status_code == 503 and response.headers["Retry-After"] in ("1", "2")
    assert client.get("/v2/ping").status_code == 503
    time.sleep(2.1)
    assert post_txns(client, [txn("e1")]).status_code == 202
    assert [r["key"] for r in sandbox.control.received()] == ["e1"]


def test_outage_can_drop_connections(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """An outage in drop mode closes connections without an answer."""
    sandbox.control.set_faults({"outage": {"duration": 30, "mode": "drop"}})
    with pytest.raises(httpx.TransportError):
        client.get("/v2/ping")


def test_dropped_connection_raises_transport_error(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """A dropped connection surfaces in httpx as a transport error, and nothing is recorded."""
    sandbox.control.set_faults({"drop": {"rate": 1.0}})
    with pytest.raises(httpx.TransportError):
        post_txns(client, [txn("e1")])
    assert sandbox.control.received() == []
    assert sandbox.control.stats()["requests"]["transactions"] == {"dropped": 1}


def test_drop_after_processing_records_the_items(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """``drop when=after`` keeps the items although the client saw a failure (the ambiguous case)."""
    sandbox.control.set_faults({"drop": {"rate": 1.0, "when": "after"}})
    with pytest.raises(httpx.TransportError):
        post_txns(client, [txn("e1")])
    assert [r["key"] for r in sandbox.control.received()] == ["e1"]


def test_hung_response_hits_the_client_timeout(sandbox: SandboxProcess) -> None:
    """A hung request never gets an answer; the client's read timeout fires."""
    sandbox.control.set_faults({"hang": {"rate": 1.0}})
    with _client(sandbox, timeout=0.5) as client, pytest.raises(httpx.ReadTimeout):
        client.get("/v2/ping")


def test_slow_hang_answers_after_its_delay(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """A hang with a delay answers normally once the delay has passed."""
    sandbox.control.set_faults({"hang": {"rate": 1.0, "delay": 0.3}})
    started = time.monotonic()
    assert client.get("/v2/ping").status_code == 200
    assert time.monotonic() - started >= 0.3


def test_prefix_rejection_gives_207(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Items whose id or transactionId starts with the prefix fail per item with the configured status."""
    sandbox.control.set_faults({"reject_items": {"prefix": "poison-", "status": "422"}})
    items = [txn("ok-1"), txn("poison-1"), txn("ok-2", transactionId="poison-txn")]
    response = post_txns(client, items)
    assert response.status_code == 207
    assert [(e["status"], e["id"], e["source"]["pointer"]) for e in response.json()["errors"]] == [
        ("422", "poison-1", "/data/1/id"),
        ("422", "ok-2", "/data/2/attributes/transactionId"),
    ]
    assert post_txns(client, [txn("poison-2")]).status_code == 422


def test_faults_are_scoped_and_counted(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """A rule scoped to one endpoint leaves others alone; ``after`` and ``times`` bound it."""
    sandbox.control.set_faults({"endpoint": "transactions", "error_rates": {"500": 1.0}, "after": 1, "times": 2})
    assert client.get("/v2/ping").status_code == 200
    statuses = [post_txns(client, [txn(f"e{i}")]).status_code for i in range(5)]
    assert statuses == [202, 500, 500, 202, 202]
    assert sandbox.control.faults()["state"] == [{"matched": 5, "fired": 2, "in_flight": 0}]


def test_invalid_fault_config_is_refused(sandbox: SandboxProcess) -> None:
    """The control API refuses an invalid fault configuration with 400 and the reasons."""
    with pytest.raises(httpx.HTTPStatusError) as info:
        sandbox.control.set_faults({"error_rates": {"200": 0.5}})
    assert info.value.response.status_code == 400
    with pytest.raises(httpx.HTTPStatusError):
        sandbox.control.set_faults({"endpoint": "nope", "latency": {"fixed": 1}})


def test_faults_given_at_start(sandbox_factory: SandboxFactory) -> None:
    """``--faults`` JSON configures faults from the start; GET returns it with its seed."""
    sb = sandbox_factory(faults={"seed": 5, "rules": [{"endpoint": "ping", "error_rates": {"503": 1.0}}]})
    with _client(sb) as client:
        assert client.get("/v2/ping").status_code == 503
        config = sb.control.faults()
        assert config["seed"] == 5 and config["rules"][0]["endpoint"] == "ping"
        sb.control.clear_faults()
        assert client.get("/v2/ping").status_code == 200


def test_token_endpoint_is_faulted_only_when_named(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Unscoped rules spare the token endpoint; ``endpoint: token`` (or ``*``) targets it."""
    creds = {"client_id": sandbox.client_id, "client_secret": sandbox.client_secret}
    sandbox.control.set_faults({"error_rates": {"500": 1.0}})
    assert client.post("/v2/auth/token", json=creds).status_code == 200
    sandbox.control.set_faults({"endpoint": "token", "error_rates": {"500": 1.0}})
    assert client.post("/v2/auth/token", json=creds).status_code == 500
    assert client.get("/v2/ping").status_code == 200


async def test_capacity_limit_rejects_excess_concurrency(sandbox: SandboxProcess) -> None:
    """Beyond max_in_flight concurrent requests the sandbox answers 429; the rest succeed."""
    sandbox.control.set_faults({"latency": {"fixed": 2.0}, "capacity": {"max_in_flight": 2}})
    statuses = await _concurrent_posts(sandbox, 6)
    assert sorted(statuses) == [202, 202, 429, 429, 429, 429]
    assert sandbox.control.stats()["faults_injected"]["capacity"] == 4


async def test_capacity_queue_serves_everyone(sandbox: SandboxProcess) -> None:
    """In queue mode excess requests wait for a slot instead of failing."""
    sandbox.control.set_faults({"latency": {"fixed": 0.5}, "capacity": {"max_in_flight": 2, "mode": "queue"}})
    assert await _concurrent_posts(sandbox, 6) == [202] * 6
    stats = sandbox.control.stats()
    assert stats["faults_injected"]["capacity_queued"] >= 1 and stats["max_in_flight"] >= 3


def test_rate_limit_bucket(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """A token bucket admits its burst, then answers 429 with Retry-After."""
    sandbox.control.set_faults({"rate_limit": {"rps": 0.1, "burst": 3}})
    statuses = [client.get("/v2/ping") for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    assert int(statuses[3].headers["Retry-After"]) >= 1


def test_reject_duplicates(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """With reject_duplicates an id already accepted fails per item with 409."""
    sandbox.control.set_faults({"reject_duplicates": True})
    assert post_txns(client, [txn("e1")]).status_code == 202
    response = post_txns(client, [txn("e1"), txn("e2")])
    assert response.status_code == 207
    assert [(e["status"], e["id"]) for e in response.json()["errors"]] == [("409", "e1")]


# ------------------------------------------------------------------------------------------- inspection


def test_received_filters_pages_and_streams(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Received items can be filtered by endpoint, paged, and streamed as JSON lines, in arrival order."""
    post_txns(client, [txn(f"e{i}") for i in range(30)])
    client.post(
        f"/v2/issuers/{ORG}/fraud",
        json={"data": [{"type": "fraudulentTransaction", "id": "t", "attributes": {"userId": "u"}}]},
    )
    post_txns(client, [txn(f"f{i}") for i in range(5)])
    everything = sandbox.control.received()
    assert len(everything) == 36 and [r["seq"] for r in everything] == sorted(r["seq"] for r in everything)
    txns = sandbox.control.received("transactions")
    assert [r["key"] for r in txns] == [f"e{i}" for i in range(30)] + [f"f{i}" for i in range(5)]
    page = httpx.get(
        f"{sandbox.base_url}/_sandbox/received", params={"endpoint": "transactions", "offset": 28, "limit": 3}
    )
    assert page.json()["total"] == 35 and [r["key"] for r in page.json()["items"]] == ["e28", "e29", "f0"]
    assert [r["key"] for r in sandbox.control.iter_received("fraud")] == ["t"]
    assert all(isinstance(r["time"], float) and r["endpoint"] == "transactions" for r in txns)


def test_duplicates_and_status_counters(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Re-sent ids are counted as duplicates; requests are counted per endpoint and status."""
    batch = [txn("e1"), txn("e2")]
    post_txns(client, batch)
    post_txns(client, batch)
    post_txns(client, [txn("e1"), txn("bad", cardBIN="1")])
    post_txns(client, [txn("x", cardBIN="1")])
    assert sandbox.control.duplicates() == {"transactions": {"e1": 3, "e2": 2}}
    stats = sandbox.control.stats()
    assert stats["requests"]["transactions"] == {"202": 2, "207": 1, "400": 1}
    assert stats["items"]["transactions"] == {"received": 7, "accepted": 5, "rejected": 2}
    assert stats["duplicates"]["transactions"] == {"keys": 2, "extra": 3}


async def test_max_in_flight_is_tracked(sandbox: SandboxProcess) -> None:
    """The highest number of concurrent requests is reported."""
    sandbox.control.set_faults({"latency": {"fixed": 1.0}})
    assert await _concurrent_posts(sandbox, 5) == [202] * 5
    stats = sandbox.control.stats()
    assert stats["max_in_flight"] >= 2 and stats["max_in_flight_by_endpoint"]["transactions"] >= 2
    assert stats["in_flight"] == 0


def test_request_log_masks_the_token(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """The request log keeps headers with the bearer token masked."""
    client.get("/v2/ping", headers={"X-Test": "1"})
    (entry,) = sandbox.control.requests("ping")
    assert entry["headers"]["Authorization"] == "Bearer ***" and entry["headers"]["X-Test"] == "1"
    assert entry["status"] == 200 and entry["method"] == "GET"


def test_record_ids_mode_keeps_keys_only(sandbox_factory: SandboxFactory) -> None:
    """With ``--record ids`` items are listed by key without their JSON; duplicates are still counted."""
    sb = sandbox_factory(record="ids")
    with _client(sb) as client:
        post_txns(client, [txn("e1")])
        post_txns(client, [txn("e1")])
    received = sb.control.received()
    assert [r["key"] for r in received] == ["e1", "e1"] and "item" not in received[0]
    assert sb.control.duplicates() == {"transactions": {"e1": 2}}


def test_reset_forgets_everything(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Reset clears items, counters and faults; issued tokens keep working."""
    sandbox.control.set_faults({"latency": {"fixed": 0.01}})
    post_txns(client, [txn("e1")])
    sandbox.control.reset()
    assert sandbox.control.received() == [] and sandbox.control.stats()["requests"] == {}
    assert sandbox.control.faults()["rules"] == []
    assert client.get("/v2/ping").status_code == 200
    raw = httpx.get(f"{sandbox.base_url}/_sandbox/received", params={"format": "jsonl"})
    assert [orjson.loads(line) for line in raw.content.splitlines()] == []
