"""Tests for ``bridge.kard.client``: request shape, classification end to end, error edge, deadline, lifecycle."""

from __future__ import annotations

import asyncio
import gzip
import random
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
from tests.unit.test_kard_pool import serving

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


# -- the request path: what AsyncClient.send did, without its per-request work ---------------------------------


@pytest.mark.parametrize("base_url", ["https://kard.test", "https://gw.test/kard", "http://127.0.0.1:8080/api/"])
async def test_requests_are_exactly_what_build_request_makes(base_url: str) -> None:
    """URL, headers (names, values, order), extensions and body equal ``build_request``'s, for plain ids (the
    shortcut) and for ids that need URL parsing (dots, spaces, slashes, non-ASCII, empty), first and cached."""
    client, _ = make_client(base_url=base_url)
    rng = random.Random(7)
    alphabet = "abcXYZ019._~-%/ ?#üñ@+"
    ids = ["u1", "user-000123", "first.last@example.com", ".", "..", "a b", "x/y", "%41", "ü", "", "~_-."]
    ids += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 12))) for _ in range(200)]
    assert client._plain_url is not None
    async with client:
        for body in (b'{"data":[{}]}', b"x" * 1000, None):
            method = "GET" if body is None else "POST"
            for user_id in ids:
                path = Route(Endpoint.USER_ATTRIBUTIONS, organization_id="org 1", user_id=user_id).path
                for _ in range(2):  # the path's first request, then the cached one
                    made = client._request(method, path, body)
                    built = client._http.build_request(method, path, content=body, headers=None if body is None else {
                        "Content-Type": "application/json"
                    })  # fmt: skip
                    assert (str(made.url), made.url.raw_path) == (str(built.url), built.url.raw_path), user_id
                    assert made.headers.raw == built.headers.raw
                    assert made.extensions == built.extensions
                    assert made.read() == built.read()


async def test_cookies_are_neither_kept_nor_sent() -> None:
    """A Set-Cookie from the API is ignored: no later request (API or token) carries a Cookie header."""
    client, fake = make_client(lambda request: httpx.Response(202, headers={"Set-Cookie": "AWSALB=abc; Path=/"}))
    async with client:
        await client.send_batch(TXN, ITEMS)
        await client.send_batch(TXN, ITEMS)
        assert not client._http.cookies
    assert all("Cookie" not in request.headers for request in fake.api_requests)


async def test_event_hooks_run_around_each_request() -> None:
    """Request hooks see each request before it is sent, response hooks each response (with its request)."""
    client, _ = make_client()
    seen: list[tuple[str, str]] = []

    async def on_request(request: httpx.Request) -> None:
        seen.append(("request", request.url.path))

    async def on_response(response: httpx.Response) -> None:
        seen.append(("response", f"{response.status_code} {response.request.url.path}"))

    client._http.event_hooks = {"request": [on_request], "response": [on_response]}
    async with client:
        await client.send_batch(TXN, ITEMS)
    path = "/v2/issuers/org 1/transactions"
    token = [("request", "/v2/auth/token"), ("response", "200 /v2/auth/token")]  # through AsyncClient, as before
    assert seen == [*token, ("request", path), ("response", f"202 {path}")]


# -- over real sockets, on the default transport ------------------------------------------------------------


def socket_client(url: str, **overrides: Any) -> KardClient:
    return KardClient(config(base_url=url, **overrides), wall_clock=lambda: WALL)


async def test_default_transport_end_to_end_with_token_refresh_gzip_and_cap() -> None:
    """Through the default transport: token, 401 refresh and retry, a gzip 207 decoded, a body over the cap cut
    (and its connection dropped), statuses counted, one connection kept alive for all the rest."""
    token = 0
    answers: list[bytes] = []

    def respond(head: bytes, body: bytes) -> bytes:
        nonlocal token
        if head.startswith(b"POST /v2/auth/token"):
            token += 1
            doc = orjson.dumps({"access_token": f"tok{token}", "expires_in": 3600})
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(doc), doc)
        if b"authorization: bearer tok1" in head.lower():
            return b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\n\r\n{}"
        return answers.pop(0)

    errors = gzip.compress(orjson.dumps({"errors": [{"status": "400", "title": "x", "detail": "y", "id": "e2"}]}))
    answers.append(b"HTTP/1.1 207 Multi-Status\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(errors))
    answers[-1] += errors
    answers.append(b"HTTP/1.1 202 Accepted\r\nContent-Length: 5000\r\n\r\n" + b"x" * 5000)
    async with serving() as server:
        server.respond = respond
        async with socket_client(server.url, max_response_bytes=1024) as client:
            result = await client.send_batch(TXN, ITEMS)
            assert [o.kind for o in result.outcomes] == [
                OutcomeKind.ACCEPTED, OutcomeKind.REJECTED, OutcomeKind.ACCEPTED
            ]  # fmt: skip
            capped = await client.send_batch(TXN, ITEMS)
            assert capped.all_accepted and capped.summary["truncated"] is True
            stats = client.statistics()
            assert (stats.requests_by_status, stats.unauthorized_retries, stats.token_refreshes) == (
                {207: 1, 202: 1}, 1, 2
            )  # fmt: skip
            pool = client._http._transport._pool  # type: ignore[attr-defined]
            assert pool.connections == []  # the capped answer's connection was dropped, not drained ...
        assert server.connections == 1  # ... and all the rest went over one kept-alive connection


async def test_default_transport_errors_are_translated() -> None:
    """A connection closed without an answer is transient; so is a read timeout; the client stays usable."""
    async with serving() as server:
        token = b'{"access_token": "t", "expires_in": 3600}'
        server.respond = lambda head, body: (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(token), token)
            if b"/auth/token" in head else None
        )  # fmt: skip
        async with socket_client(server.url, read_timeout=0.1) as client:
            with pytest.raises(TransientDeliveryError, match="RemoteProtocolError"):
                await client.send_batch(TXN, ITEMS)

            async def slow(head: bytes) -> None:
                if b"/auth/token" not in head:
                    await asyncio.sleep(0.5)

            server.gate = slow
            with pytest.raises(TransientDeliveryError, match="ReadTimeout"):
                await client.send_batch(TXN, ITEMS)
            assert client.statistics().transport_errors == 2 and client.statistics().in_flight == 0


async def test_with_another_httpcore_the_client_shields_httpcores_own_pool(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an httpcore release the pool was not checked against, the client runs on httpcore's pool, through
    the cancel-safe wrapper, and a request cancelled on the wire leaves no slot behind."""
    import httpcore

    from bridge.kard.client import _CancelSafeTransport

    monkeypatch.setattr(httpcore, "__version__", "9.9.9")
    token = b'{"access_token": "t", "expires_in": 3600}'
    hang = True

    async def gate(head: bytes) -> None:
        if hang and b"/auth/token" not in head:
            await asyncio.sleep(3600)

    async with serving() as server:
        server.gate = gate
        server.respond = lambda head, body: (
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(token), token)
            if b"/auth/token" in head else b"HTTP/1.1 202 Accepted\r\nContent-Length: 2\r\n\r\n{}"
        )  # fmt: skip
        async with socket_client(server.url, max_connections=1, max_keepalive_connections=1) as client:
            assert isinstance(client._transport, _CancelSafeTransport)
            assert type(client._transport._pool) is httpcore.AsyncConnectionPool
            sending = asyncio.ensure_future(client.send_batch(TXN, ITEMS))
            await asyncio.sleep(0.1)
            sending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sending
            hang = False
            async with asyncio.timeout(5):
                assert (await client.send_batch(TXN, ITEMS)).all_accepted
