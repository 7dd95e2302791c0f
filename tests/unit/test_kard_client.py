"""Tests for ``bridge.kard.client``: request shape, classification end to end, error edge, deadline, lifecycle."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
import structlog
from pydantic import SecretStr

from bridge import __version__
from bridge.errors import ConfigError, DeliveryError, RejectedError, TransientDeliveryError
from bridge.kard.client import KardClient, KardClientConfig
from bridge.kard.responses import BISECT, NOT_ATTEMPTED, OutcomeKind
from bridge.routes import Endpoint, MappedItem, Route

TXN = Route(Endpoint.TRANSACTIONS, organization_id="org 1")
BULK = Route(Endpoint.BULK_ATTRIBUTIONS)
WALL = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()

Api = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


def txn(n: int) -> MappedItem:
    """Transaction event ``e<n>`` of transaction ``t<n>``."""
    item = {"type": "transaction", "id": f"e{n}", "attributes": {"userId": "u1", "transactionId": f"t{n}"}}
    return MappedItem(TXN, item, f"e{n}", "u1", orjson.dumps(item))


ITEMS = [txn(1), txn(2), txn(3)]


class FakeKard:
    """MockTransport handler: a token endpoint that always works and a scripted API."""

    def __init__(self, api: Api | None = None) -> None:
        self.api = api or (lambda request: httpx.Response(202, json={"data": {"type": "job", "id": "j1"}}))
        self.api_requests: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v2/auth/token"):
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 3600, "token_type": "Bearer"})
        self.api_requests.append(request)
        response = self.api(request)
        return response if isinstance(response, httpx.Response) else await response


def config(**overrides: Any) -> KardClientConfig:
    """Client settings for tests; any field can be overridden."""
    values: dict[str, Any] = {
        "base_url": "https://kard.test",
        "client_id": "client-1",
        "client_secret": SecretStr("secret"),
    }
    return KardClientConfig(**(values | overrides))


def make_client(api: Api | None = None, **overrides: Any) -> tuple[KardClient, FakeKard]:
    """A client on a MockTransport, and the fake behind it."""
    fake = FakeKard(api)
    return KardClient(config(**overrides), transport=httpx.MockTransport(fake), wall_clock=lambda: WALL), fake


def raising(exc_type: type[httpx.TransportError]) -> Api:
    """An API handler that fails the way a network would."""

    def api(request: httpx.Request) -> httpx.Response:
        raise exc_type("simulated", request=request)

    return api


async def test_batch_body_is_the_pre_encoded_items_joined_once() -> None:
    """The body is exactly ``{"data":[`` + the items' encoded bytes joined by commas + ``]}``."""
    client, fake = make_client()
    async with client:
        result = await client.send_batch(TXN, ITEMS)
    (request,) = fake.api_requests
    assert request.content == b'{"data":[' + b",".join(i.encoded for i in ITEMS) + b"]}"
    assert request.method == "POST"
    assert request.url.raw_path == b"/v2/issuers/org%201/transactions"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == f"kard-bridge/{__version__}"
    assert request.headers["Authorization"] == "Bearer tok"
    assert result.all_accepted and result.summary["job_id"] == "j1"


async def test_base_url_path_prefix_is_kept() -> None:
    """A base URL with a path prefix is joined with the relative route path (as the SDK does)."""
    client, fake = make_client(base_url="https://gw.test/kard")
    async with client:
        await client.send_batch(TXN, ITEMS[:1])
    assert str(fake.api_requests[0].url) == "https://gw.test/kard/v2/issuers/org%201/transactions"


async def test_http_client_settings_are_explicit() -> None:
    """HTTP/1.1 only, no env trust, no redirects, and every limit and timeout as configured."""
    client = KardClient(
        config(
            connect_timeout=1.0, read_timeout=2.0, write_timeout=3.0, pool_timeout=4.0,
            max_connections=7, max_keepalive_connections=5, keepalive_expiry=9.0,
        )
    )  # fmt: skip
    http = client._http
    assert http.timeout == httpx.Timeout(connect=1.0, read=2.0, write=3.0, pool=4.0)
    assert not http.trust_env and not http.follow_redirects
    pool = http._transport._pool  # type: ignore[attr-defined]
    assert (pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry) == (7, 5, 9.0)
    assert (pool._http1, pool._http2) == (True, False)
    await client.aclose()


async def test_207_is_mapped_per_item() -> None:
    """A 207 through the client yields per-item outcomes aligned with the items sent."""
    body = {"errors": [{"status": "400", "title": "Invalid", "detail": "cardBIN", "id": "t2"}], "data": {}}
    client, _ = make_client(lambda request: httpx.Response(207, json=body))
    async with client:
        result = await client.send_batch(TXN, ITEMS)
    assert [o.kind for o in result.outcomes] == [OutcomeKind.ACCEPTED, OutcomeKind.REJECTED, OutcomeKind.ACCEPTED]


async def test_whole_400_named_and_unnamed() -> None:
    """A 400 naming one item rejects it and returns the others as not attempted; naming none bisects."""
    named = {"errors": [{"status": "400", "title": "x", "detail": "y", "source": {"pointer": "/data/0/id"}}]}
    client, _ = make_client(lambda request: httpx.Response(400, json=named))
    async with client:
        result = await client.send_batch(TXN, ITEMS)
    assert result.outcomes[0].kind is OutcomeKind.REJECTED and result.outcomes[1:] == (NOT_ATTEMPTED,) * 2
    client, _ = make_client(lambda request: httpx.Response(400, json={"message": "Bad Request"}))
    async with client:
        assert (await client.send_batch(TXN, ITEMS)).outcomes == (BISECT,) * 3
        single = await client.send_batch(TXN, ITEMS[:1])
    assert single.outcomes[0].kind is OutcomeKind.REJECTED


@pytest.mark.parametrize(
    ("retry_after", "expected"), [("7", 7.0), ("Thu, 02 Jan 2025 03:04:35 GMT", 30.0)]
)
async def test_429_raises_transient_with_retry_after(retry_after: str, expected: float) -> None:
    """A 429 raises TransientDeliveryError with the Retry-After hint (seconds or HTTP-date)."""
    client, _ = make_client(lambda request: httpx.Response(429, headers={"Retry-After": retry_after}))
    async with client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.send_batch(TXN, ITEMS)
    assert info.value.status == 429 and info.value.retry_after == pytest.approx(expected)


async def test_503_raises_transient() -> None:
    """A 503 with a non-JSON body raises TransientDeliveryError and is counted by status."""
    client, _ = make_client(lambda request: httpx.Response(503, text="<html>down</html>"))
    async with client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.send_batch(TXN, ITEMS)
        assert client.statistics().requests_by_status == {503: 1}
    assert info.value.status == 503 and info.value.retry_after is None


async def test_redirect_is_not_followed() -> None:
    """A 3xx is not followed (no second request) and is reported as transient, not as a rejection."""
    client, fake = make_client(lambda request: httpx.Response(302, headers={"Location": "https://evil.test/"}))
    async with client:
        with pytest.raises(TransientDeliveryError):
            await client.send_batch(TXN, ITEMS)
    assert len(fake.api_requests) == 1


@pytest.mark.parametrize(
    "exc_type",
    [httpx.ConnectError, httpx.ConnectTimeout, httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError],
)
async def test_transport_failures_are_transient(exc_type: type[httpx.TransportError]) -> None:
    """Connection errors and httpx timeouts become TransientDeliveryError, chained from the httpx error."""
    client, _ = make_client(raising(exc_type))
    async with client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.send_batch(TXN, ITEMS)
        stats = client.statistics()
    assert isinstance(info.value.__cause__, exc_type)
    assert (stats.transport_errors, stats.in_flight) == (1, 0)


@pytest.mark.parametrize("exc", [AttributeError("'NoneType' object has no attribute 'getpeername'"), OSError(107)])
async def test_a_socket_gone_mid_setup_is_a_transient_transport_failure(exc: Exception) -> None:
    """What httpcore's anyio stream raises when a reset connection's socket is already gone (chaos suite find)."""

    def api(request: httpx.Request) -> httpx.Response:
        raise exc

    client, _ = make_client(api)
    async with client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.send_batch(TXN, ITEMS)
        stats = client.statistics()
    assert info.value.__cause__ is exc
    assert (stats.transport_errors, stats.in_flight) == (1, 0)


async def test_pool_timeout_is_counted() -> None:
    """A PoolTimeout is transient and counted separately: with admission control it signals a leak."""
    client, _ = make_client(raising(httpx.PoolTimeout))
    async with client:
        with pytest.raises(TransientDeliveryError):
            await client.send_batch(TXN, ITEMS)
        assert client.statistics().pool_timeouts == 1


async def test_local_protocol_error_is_not_retryable_nor_a_rejection() -> None:
    """An error that means our own bug is a plain DeliveryError: not retryable, and no record's fault."""
    client, _ = make_client(raising(httpx.LocalProtocolError))
    async with client:
        with pytest.raises(DeliveryError) as info:
            await client.send_batch(TXN, ITEMS)
    assert not info.value.retryable
    assert not isinstance(info.value, TransientDeliveryError | RejectedError)


async def test_deadline_expiry_is_transient_and_frees_the_slot() -> None:
    """A response slower than ``request_deadline`` raises TransientDeliveryError; the client keeps working."""
    slow = True

    async def api(request: httpx.Request) -> httpx.Response:
        if slow:
            await asyncio.sleep(3600)
        return httpx.Response(200)

    client, _ = make_client(api, request_deadline=0.05, max_connections=1, max_keepalive_connections=1)
    async with client:
        with pytest.raises(TransientDeliveryError, match="deadline"):
            await client.send_batch(TXN, ITEMS)
        stats = client.statistics()
        assert (stats.deadline_expirations, stats.in_flight) == (1, 0)
        slow = False
        assert (await client.send_batch(TXN, ITEMS)).all_accepted  # the only admission slot was released


async def test_cancelled_requests_release_admission() -> None:
    """Cancelling in-flight requests (shutdown) leaves no admitted request behind and the client usable."""
    started = asyncio.Event()
    hang = True

    async def api(request: httpx.Request) -> httpx.Response:
        started.set()
        if hang:
            await asyncio.sleep(3600)
        return httpx.Response(200)

    client, _ = make_client(api, max_connections=2, max_keepalive_connections=2)
    async with client:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(client.send_batch(TXN, ITEMS)) for _ in range(5)]
            await started.wait()
            await asyncio.sleep(0)
            assert client.statistics().in_flight == 2  # the other three wait at admission, not in the pool
            for task in tasks:
                task.cancel()
        assert all(task.cancelled() for task in tasks)
        assert client.statistics().in_flight == 0
        hang = False
        assert (await client.send_batch(TXN, ITEMS)).all_accepted


async def test_admission_bounds_concurrent_requests() -> None:
    """No more than ``max_connections`` requests are on the wire at once."""
    active = peak = 0

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.001)
        active -= 1
        return httpx.Response(200)

    client, _ = make_client(api, max_connections=3, max_keepalive_connections=3)
    async with client, asyncio.TaskGroup() as tg:
        for _ in range(12):
            tg.create_task(client.send_batch(TXN, ITEMS))
    assert peak == 3


async def test_large_response_is_capped() -> None:
    """A body beyond ``max_response_bytes`` is cut (and logged), and the status still decides the outcome."""
    big = b'{"data":[' + b",".join([b'{"id":"x"}'] * 200_000) + b"]}"
    client, _ = make_client(lambda request: httpx.Response(200, content=big), max_response_bytes=1024)
    with structlog.testing.capture_logs() as logs:
        async with client:
            result = await client.send_batch(TXN, ITEMS)
    assert result.all_accepted and result.summary == {"body": "not_json", "truncated": True}
    assert any(e["event"] == "kard_response_truncated" for e in logs)


async def test_gzip_response_is_decoded() -> None:
    """Compressed bodies are decoded before classification (the cap applies to decoded bytes)."""
    body = gzip.compress(orjson.dumps({"errors": [{"status": "400", "title": "x", "detail": "y", "id": "e3"}]}))
    client, _ = make_client(lambda r: httpx.Response(207, content=body, headers={"Content-Encoding": "gzip"}))
    async with client:
        result = await client.send_batch(TXN, ITEMS)
    assert result.outcomes[2].kind is OutcomeKind.REJECTED


async def test_unconfirmed_bulk_batch_is_logged() -> None:
    """A totalProcessed mismatch is returned as unconfirmed and logged as a warning, without payload values."""
    item = {"type": "offerAttribution", "attributes": {"issuerId": "org1", "userId": "u1"}}
    items = [MappedItem(BULK, item, "d1", "u1", orjson.dumps(item))] * 2
    client, _ = make_client(lambda request: httpx.Response(200, json={"meta": {"totalProcessed": 1}}))
    with structlog.testing.capture_logs() as logs:
        async with client:
            result = await client.send_batch(BULK, items)
    assert not result.confirmed
    (event,) = [e for e in logs if e["event"] == "kard_batch_unconfirmed"]
    assert (event["items"], event["total_processed"], event["route"]) == (2, 1, "bulk_attributions:-")


async def test_ping() -> None:
    """ping() is True on a 2xx GET v2/ping with a token, False on a 403 gateway body or a network error."""
    client, fake = make_client(lambda request: httpx.Response(200, json={"message": "Ping successful"}))
    async with client:
        assert await client.ping() is True
    assert (fake.api_requests[0].method, fake.api_requests[0].url.path) == ("GET", "/v2/ping")
    assert fake.api_requests[0].headers["Authorization"] == "Bearer tok"
    client, _ = make_client(lambda request: httpx.Response(403, json={"message": "Unauthorized"}))
    async with client:
        assert await client.ping() is False
    client, _ = make_client(raising(httpx.ConnectError))
    async with client:
        assert await client.ping() is False
    assert await client.ping() is False  # closed


async def test_lifecycle() -> None:
    """Entering twice fails, aclose() is idempotent, and a closed client refuses to send."""
    client, _ = make_client()
    async with client:
        with pytest.raises(RuntimeError):
            await client.__aenter__()
    await client.aclose()
    with pytest.raises(RuntimeError):
        await client.send_batch(TXN, ITEMS)


async def test_empty_batch_is_a_programming_error() -> None:
    """An empty batch is refused before any request."""
    client, fake = make_client()
    async with client:
        with pytest.raises(ValueError, match="at least one item"):
            await client.send_batch(TXN, [])
    assert fake.api_requests == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"base_url": "ftp://kard.test"},
        {"client_secret": SecretStr("")},
        {"read_timeout": 0.0},
        {"request_deadline": -1.0},
        {"max_connections": 2, "max_keepalive_connections": 3},
        {"max_response_bytes": 0},
    ],
)
def test_invalid_config_is_refused(overrides: dict[str, Any]) -> None:
    """Nonsensical settings raise ConfigError when the config is built."""
    with pytest.raises(ConfigError):
        config(**overrides)
