"""Tests for ``bridge.kard.auth``: token fetch, cache, early refresh, single flight, one refresh on 401, no leaks."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import structlog
from pydantic import SecretStr

from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.auth import KardAuth
from bridge.kard.client import KardClient, KardClientConfig
from bridge.routes import Endpoint, MappedItem, Route

SECRET = "s3cr3t-CLIENT-SECRET-value"
ROUTE = Route(Endpoint.FRAUD, organization_id="org1")
ITEM_DICT = {"type": "fraudulentTransaction", "id": "t1", "attributes": {"userId": "u1"}}
ITEM = MappedItem(ROUTE, ITEM_DICT, "t1", "u1", orjson.dumps(ITEM_DICT))
ITEM_BODY = b'{"data":[' + ITEM.encoded + b"]}"

ApiHandler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class FakeKard:
    """MockTransport handler: a token endpoint issuing numbered tokens, and a scripted API."""

    def __init__(self, api: ApiHandler | None = None, *, expires_in: int = 3600) -> None:
        self.api = api or (lambda request: httpx.Response(200, json={"data": []}))
        self.expires_in = expires_in
        self.token_requests: list[httpx.Request] = []
        self.api_requests: list[httpx.Request] = []
        self.api_seen: list[tuple[str | None, bytes]] = []  # (Authorization, body) as sent: retries reuse the object
        self.token_response: httpx.Response | None = None  # set to script a token failure

    def token(self, n: int) -> str:
        """The n-th token issued (1-based); distinctive so that leak checks can look for it."""
        return f"TOKEN-{n}-abcdefghijklmnop"

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v2/auth/token":
            self.token_requests.append(request)
            await asyncio.sleep(0)  # let concurrent callers pile up behind the refresh
            if self.token_response is not None:
                return self.token_response
            body = {"access_token": self.token(len(self.token_requests)), "expires_in": self.expires_in}
            return httpx.Response(200, json={**body, "token_type": "Bearer"})
        self.api_requests.append(request)
        self.api_seen.append((request.headers.get("Authorization"), request.content))
        response = self.api(request)
        return response if isinstance(response, httpx.Response) else await response


def make_client(fake: FakeKard, clock: FakeClock | None = None, **overrides: Any) -> KardClient:
    """A KardClient on a MockTransport (no sockets)."""
    config = KardClientConfig(
        base_url="https://kard.test", client_id="client-1", client_secret=SecretStr(SECRET), **overrides
    )
    return KardClient(config, transport=httpx.MockTransport(fake), clock=clock or FakeClock())


async def test_token_request_shape() -> None:
    """The token request is a JSON POST to v2/auth/token with snake_case credentials and no Authorization."""
    fake = FakeKard()
    async with make_client(fake) as client:
        await client.send_batch(ROUTE, [ITEM])
    (token_request,) = fake.token_requests
    assert token_request.method == "POST"
    assert str(token_request.url) == "https://kard.test/v2/auth/token"
    assert orjson.loads(token_request.content) == {"client_id": "client-1", "client_secret": SECRET}
    assert token_request.headers["Content-Type"] == "application/json"
    assert "Authorization" not in token_request.headers
    assert fake.api_requests[0].headers["Authorization"] == f"Bearer {fake.token(1)}"


async def test_token_is_cached_between_requests() -> None:
    """A valid token is reused: three batches, one token request."""
    fake = FakeKard()
    async with make_client(fake) as client:
        for _ in range(3):
            await client.send_batch(ROUTE, [ITEM])
    assert len(fake.token_requests) == 1
    assert client.statistics().token_refreshes == 1


async def test_fifty_concurrent_callers_cause_one_token_request() -> None:
    """Single flight: 50 concurrent batches with no token yet make exactly one token request."""
    fake = FakeKard()
    client = make_client(fake, max_connections=64, max_keepalive_connections=64)
    async with client, asyncio.TaskGroup() as tg:
        for _ in range(50):
            tg.create_task(client.send_batch(ROUTE, [ITEM]))
    assert len(fake.token_requests) == 1
    assert len(fake.api_requests) == 50
    assert {auth for auth, _ in fake.api_seen} == {f"Bearer {fake.token(1)}"}


async def test_fifty_concurrent_callers_at_expiry_cause_one_refresh() -> None:
    """When the cached token reaches its refresh point, 50 concurrent callers trigger one refresh."""
    fake, clock = FakeKard(), FakeClock()
    async with make_client(fake, clock, max_connections=64, max_keepalive_connections=64) as client:
        await client.send_batch(ROUTE, [ITEM])
        clock.now += 3600
        async with asyncio.TaskGroup() as tg:
            for _ in range(50):
                tg.create_task(client.send_batch(ROUTE, [ITEM]))
    assert len(fake.token_requests) == 2


async def test_token_is_refreshed_skew_seconds_before_expiry() -> None:
    """With expires_in=3600 and a 60 s skew the token is kept until 3540 s, then replaced proactively."""
    fake, clock = FakeKard(), FakeClock()
    async with make_client(fake, clock, token_refresh_skew=60.0) as client:
        await client.send_batch(ROUTE, [ITEM])
        clock.now += 3539.9
        await client.send_batch(ROUTE, [ITEM])
        assert len(fake.token_requests) == 1
        clock.now += 0.1
        await client.send_batch(ROUTE, [ITEM])
    assert len(fake.token_requests) == 2
    assert fake.api_seen[-1][0] == f"Bearer {fake.token(2)}"


async def test_short_lived_token_is_not_expired_on_arrival() -> None:
    """A token shorter than the skew lives half its lifetime, not zero (unlike the SDK's buffer)."""
    fake, clock = FakeKard(expires_in=60), FakeClock()
    async with make_client(fake, clock, token_refresh_skew=60.0) as client:
        await client.send_batch(ROUTE, [ITEM])
        clock.now += 29
        await client.send_batch(ROUTE, [ITEM])
        assert len(fake.token_requests) == 1
        clock.now += 1
        await client.send_batch(ROUTE, [ITEM])
    assert len(fake.token_requests) == 2


async def test_401_refreshes_once_and_retries_once() -> None:
    """A 401 on the first token replaces the token and retries the same request, which then succeeds."""
    fake = FakeKard()

    def api(request: httpx.Request) -> httpx.Response:
        revoked = request.headers["Authorization"] == f"Bearer {fake.token(1)}"
        return httpx.Response(401, json={"message": "Unauthorized"}) if revoked else httpx.Response(200)

    fake.api = api
    async with make_client(fake) as client:
        result = await client.send_batch(ROUTE, [ITEM])
    assert result.all_accepted
    assert len(fake.token_requests) == 2
    assert [auth for auth, _ in fake.api_seen] == [f"Bearer {fake.token(1)}", f"Bearer {fake.token(2)}"]
    assert fake.api_seen[0][1] == fake.api_seen[1][1] == ITEM_BODY  # the same body is re-sent
    stats = client.statistics()
    assert (stats.unauthorized_retries, stats.token_refreshes, stats.requests_by_status) == (1, 2, {200: 1})


async def test_second_401_raises_auth_error() -> None:
    """If the fresh token is refused too, the request fails with AuthError after exactly two attempts."""
    fake = FakeKard(lambda request: httpx.Response(401, json={"errors": [{"status": "401", "title": "no"}]}))
    async with make_client(fake) as client:
        with pytest.raises(AuthError) as info:
            await client.send_batch(ROUTE, [ITEM])
    assert info.value.status == 401 and not info.value.retryable
    assert len(fake.api_requests) == 2
    assert len(fake.token_requests) == 2


async def test_concurrent_401s_share_one_refresh() -> None:
    """Many requests refused with the same stale token cause one replacement, not one each."""
    fake = FakeKard()
    revoked: set[str] = set()
    refused = 0
    all_refused = asyncio.Event()

    async def api(request: httpx.Request) -> httpx.Response:
        nonlocal refused
        if request.headers["Authorization"] not in revoked:
            return httpx.Response(200)
        refused += 1
        if refused == 20:
            all_refused.set()
        await all_refused.wait()  # every caller has sent with the stale token before any 401 comes back
        return httpx.Response(401)

    fake.api = api
    async with make_client(fake, max_connections=32, max_keepalive_connections=32) as client:
        assert await client.ping()  # caches token 1, still valid
        revoked.add(f"Bearer {fake.token(1)}")  # the server revokes it
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(client.send_batch(ROUTE, [ITEM])) for _ in range(20)]
    assert all(t.result().all_accepted for t in tasks)
    assert [auth for auth, _ in fake.api_seen].count(f"Bearer {fake.token(1)}") == 21  # ping + 20 refused
    assert len(fake.token_requests) == 2
    assert client.statistics().unauthorized_retries == 20


@pytest.mark.parametrize("status", [400, 401, 403])
async def test_token_endpoint_refusal_is_auth_error(status: int) -> None:
    """Bad credentials (a 4xx from the token endpoint) raise AuthError and no API request is made."""
    fake = FakeKard()
    fake.token_response = httpx.Response(status, json={"error": "invalid_client"})
    async with make_client(fake) as client:
        with pytest.raises(AuthError) as info:
            await client.send_batch(ROUTE, [ITEM])
        assert client.statistics().token_failures == 1
    assert info.value.status == status
    assert fake.api_requests == []


async def test_token_endpoint_5xx_is_transient_with_hint() -> None:
    """A 503 from the token endpoint is transient and carries its Retry-After."""
    fake = FakeKard()
    fake.token_response = httpx.Response(503, headers={"Retry-After": "5"}, text="busy")
    async with make_client(fake) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.send_batch(ROUTE, [ITEM])
    assert (info.value.status, info.value.retry_after) == (503, 5.0)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"message": "ok"}',
        b'{"access_token": "", "expires_in": 3600}',
        b'{"access_token": "abc def", "expires_in": 3600}',
        b'{"access_token": "abc", "expires_in": "soon"}',
        b'{"access_token": "abc", "expires_in": 0}',
    ],
)
async def test_malformed_token_response_is_transient(body: bytes) -> None:
    """A 2xx without a usable token (gateway body, empty/unsafe token, bad expires_in) is transient."""
    fake = FakeKard()
    fake.token_response = httpx.Response(200, content=body)
    async with make_client(fake) as client:
        with pytest.raises(TransientDeliveryError):
            await client.send_batch(ROUTE, [ITEM])


async def test_token_transport_error_is_translated() -> None:
    """A connection failure while fetching the token becomes a TransientDeliveryError at the client edge."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    config = KardClientConfig(base_url="https://kard.test", client_id="c", client_secret=SecretStr(SECRET))
    async with KardClient(config, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.send_batch(ROUTE, [ITEM])
        assert client.statistics().token_failures == 1
    assert isinstance(info.value.__cause__, httpx.ConnectError)


async def test_secrets_never_appear_in_reprs_errors_or_logs() -> None:
    """Neither the client secret nor any issued token shows up in reprs, exception texts or log events."""
    fake = FakeKard()
    calls = 0

    def api(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401) if calls <= 2 else httpx.Response(200)

    fake.api = api
    texts: list[str] = []
    with structlog.testing.capture_logs() as logs:
        async with make_client(fake) as client:
            with pytest.raises(AuthError) as twice:  # 401 → refresh → 401
                await client.send_batch(ROUTE, [ITEM])
            await client.send_batch(ROUTE, [ITEM])  # then a success with the second token
            texts += [repr(client), repr(client._auth), repr(client.statistics())]
    refusing = FakeKard()
    refusing.token_response = httpx.Response(401, json={"error": "invalid_client", "echo": SECRET})
    with structlog.testing.capture_logs() as more_logs:
        async with make_client(refusing) as client2:
            with pytest.raises(AuthError) as refused:
                await client2.send_batch(ROUTE, [ITEM])
    config = KardClientConfig(base_url="https://kard.test", client_id="c", client_secret=SecretStr(SECRET))
    for exc in (twice.value, refused.value):
        texts += [str(exc), repr(exc), repr(vars(exc)), repr(exc.__cause__), repr(exc.__context__)]
    texts += [repr(config), str(config)]
    texts += [repr(event) for event in logs + more_logs]
    assert {e["event"] for e in logs} >= {"kard_token_refreshed", "kard_token_rejected"}
    assert {e["event"] for e in more_logs} >= {"kard_token_fetch_failed"}
    blob = "\n".join(texts)
    assert SECRET not in blob
    for n in range(1, 4):
        assert fake.token(n) not in blob


async def test_secret_not_in_second_401_error() -> None:
    """The AuthError raised after the retried 401 carries no token or secret."""
    fake = FakeKard(lambda request: httpx.Response(401))
    async with make_client(fake) as client:
        with pytest.raises(AuthError) as info:
            await client.send_batch(ROUTE, [ITEM])
    text = f"{info.value!s} {info.value!r} {info.value.__dict__!r}"
    assert SECRET not in text and fake.token(1) not in text and fake.token(2) not in text


def test_auth_repr_and_sync_use() -> None:
    """KardAuth's repr shows no secret, and using it with a sync httpx.Client fails loudly."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    auth = KardAuth(http=http, client_id="client-1", client_secret=SecretStr(SECRET))
    assert SECRET not in repr(auth) and "client-1" in repr(auth)
    sync_client = httpx.Client(transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    with sync_client, pytest.raises(TypeError):
        sync_client.get("https://kard.test/v2/ping", auth=auth)
