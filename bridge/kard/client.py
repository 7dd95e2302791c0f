"""The runtime Kard API client: one long-lived ``httpx.AsyncClient``, batch sends, and the httpx error edge.

Why it looks like this (PITFALLS §4):

* **One client per process** (H5), HTTP/1.1 only (H4), ``trust_env=False`` (H9), no redirects, every
  ``httpx.Limits`` / ``httpx.Timeout`` value explicit (H1).
* **An overall deadline per request** (``asyncio.timeout(request_deadline)``), because httpx's read
  timeout is per chunk (H2). It covers the token fetch, the send, the 401 retry and the capped body read.
* **Cancellation safety** (H3: a request cancelled while it waits for a pool slot or connects can leak
  the slot in httpcore ≤ 1.0.9). Requests pass a semaphore of ``max_connections`` permits *before* the
  deadline starts, so a request never queues inside httpcore's pool and the deadline (or a shutdown
  cancel) never hits one waiting there; waiting at our semaphore is cancellation-safe. Responses are
  streamed and closed in ``finally``, so an expired deadline drops the connection instead of leaving it
  checked out. A cancellation landing *inside* httpcore's close leaked the slot too
  (``tests/integration/test_http_pool_storm.py`` found it): the default transport's pool
  (:mod:`bridge.kard.pool`) closes and checks in without awaiting anything, so there is no inside to land
  in; with any other transport every response close (ours, and httpx's own at the end of a body) runs in
  a shielded task of its own (:class:`_CancelSafeStream`). ``statistics().pool_timeouts`` > 0 therefore
  means a leak (or a foreign user of the pool): alert on it; recreating the client is the documented remedy.
* **Foreign exceptions are translated here only**, by :meth:`KardClient._translate`, into the bridge's
  ``DeliveryError`` tree (``raise ... from exc``). Timeouts, network and remote-protocol errors are
  ``TransientDeliveryError``; errors that mean a bug or a misconfiguration (``LocalProtocolError``,
  ``UnsupportedProtocol``, ``InvalidURL``…) are a plain ``DeliveryError``: not retryable, not a rejection
  of any record, so the dispatcher must stop rather than dead-letter.
* **The hot path** builds the body once by joining the items' pre-encoded bytes, sends it, reads at most
  ``max_response_bytes``, and hands status, headers and bytes to the pure ``responses.classify_response``.
  On mixed data the bridge sends one small request per user, so the client's CPU per request counts:
  ``bench/bench_client.py`` measures it. A path's first request is ``AsyncClient.build_request``'s; later
  ones are ``httpx.Request`` objects made from its absolute URL (a bounded cache) and the same headers, so
  no URL parsing or header merging per request; and :meth:`KardClient._send` does what
  ``AsyncClient.send`` does for it and no more: the auth flow (:class:`~bridge.kard.auth.KardAuth`, 401
  retry included), the event hooks, the transport. Left out: redirects (never followed here; a 3xx is
  classified like any answer) and cookies (the client's jar keeps none: the API authenticates by token).
  The default transport (:mod:`bridge.kard.transport`) takes the httpx request straight to a pool made
  for this client, on httpcore's HTTP/1.1 connection (h11) and plain asyncio sockets; its responses
  close synchronously, and :func:`~bridge.kard.responses.read_capped` reads their body in one loop.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self

import httpx
import structlog
from pydantic import SecretStr

from bridge import __version__
from bridge.errors import ConfigError, DeliveryError, TransientDeliveryError
from bridge.kard.auth import KardAuth
from bridge.kard.responses import BatchResponse, classify_response, read_capped
from bridge.kard.transport import make_transport
from bridge.routes import MappedItem, Route

__all__ = ["PING_PATH", "KardClient", "KardClientConfig", "KardClientStatistics"]

PING_PATH = "v2/ping"
_BODY_HEAD = b'{"data":['
_BODY_TAIL = b"]}"
_JSON_BODY = {"Content-Type": "application/json"}
_NO_BODY = httpx.ByteStream(b"")
#: A relative path that URL parsing leaves as it is: segments of unreserved characters and upper-case
#: percent escapes (``routes.Route.path`` quotes ids so), none empty, none ``.`` or ``..``.
_SEGMENT = r"(?!\.\.?(?:/|$))(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})+"
_PLAIN_PATH = re.compile(f"{_SEGMENT}(?:/{_SEGMENT})*")
_URL_CACHE_LIMIT = 4096
#: httpx failures worth retrying: the server or the network misbehaved, not our request.
_TRANSIENT_HTTPX = (
    httpx.TimeoutException,
    httpx.NetworkError,
    httpx.RemoteProtocolError,
    httpx.DecodingError,
)

_log = structlog.get_logger()


@dataclass(frozen=True, slots=True)
class KardClientConfig:
    """Everything the Kard client needs; durations in seconds. ``repr`` masks the secret (``SecretStr``).

    Attributes:
        base_url: API root, e.g. ``https://rewards-api.getkard.com`` (http or https, may have a path).
        client_id, client_secret: OAuth client credentials.
        connect_timeout, read_timeout, write_timeout, pool_timeout: httpx's per-phase timeouts
            (``read_timeout`` is per chunk, not total).
        max_connections: pool size, and the number of requests the client lets in at once.
        max_keepalive_connections: idle connections kept (≤ ``max_connections``).
        keepalive_expiry: seconds an idle connection is kept; keep it below the server's idle timeout.
        request_deadline: overall limit for one request, token fetch and 401 retry included.
        token_refresh_skew: replace the token this many seconds before it expires.
        max_response_bytes: response bodies are read up to this size; the rest is dropped.
        user_agent: the ``User-Agent`` header.
    """

    base_url: str
    client_id: str
    client_secret: SecretStr
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    pool_timeout: float = 30.0
    max_connections: int = 16
    max_keepalive_connections: int = 16
    keepalive_expiry: float = 30.0
    request_deadline: float = 60.0
    token_refresh_skew: float = 60.0
    max_response_bytes: int = 1024 * 1024
    user_agent: str = f"kard-bridge/{__version__}"

    def __post_init__(self) -> None:
        problems = []
        if not self.base_url.startswith(("https://", "http://")):
            problems.append("base_url must start with https:// or http://")
        if not self.client_id or not self.client_secret.get_secret_value():
            problems.append("client_id and client_secret must not be empty")
        positive = ("connect_timeout", "read_timeout", "write_timeout", "pool_timeout", "request_deadline")
        problems += [f"{name} must be > 0" for name in positive if not getattr(self, name) > 0]
        if not 1 <= self.max_keepalive_connections <= self.max_connections:
            problems.append("need 1 <= max_keepalive_connections <= max_connections")
        if not (self.keepalive_expiry >= 0 and self.token_refresh_skew >= 0 and self.max_response_bytes > 0):
            problems.append("keepalive_expiry and token_refresh_skew must be >= 0, max_response_bytes > 0")
        if problems:
            raise ConfigError("invalid Kard client settings: " + "; ".join(problems))


class KardClientStatistics(NamedTuple):
    """A snapshot for the metrics layer.

    Attributes:
        in_flight: requests admitted and not finished.
        requests_by_status: final HTTP status → count (API requests; token requests are not included).
        transport_errors: requests that failed in httpx (timeouts, connection errors...).
        deadline_expirations: requests cut by ``request_deadline``.
        pool_timeouts: ``httpx.PoolTimeout`` seen; should stay 0 (see module docstring).
        token_refreshes, token_failures, unauthorized_retries: from :class:`~bridge.kard.auth.KardAuth`.
    """

    in_flight: int
    requests_by_status: Mapping[int, int]
    transport_errors: int
    deadline_expirations: int
    pool_timeouts: int
    token_refreshes: int
    token_failures: int
    unauthorized_retries: int


class _NoCookies(http.cookiejar.CookieJar):
    """A cookie jar that keeps nothing: the Kard API authenticates by token, and no cookie is sent back."""

    def extract_cookies(self, response: Any, request: Any) -> None:
        return None

    def set_cookie(self, cookie: http.cookiejar.Cookie) -> None:
        return None


class _Exchange(NamedTuple):
    status: int
    headers: httpx.Headers
    body: bytes
    truncated: bool
    elapsed: float


class _CancelSafeStream(httpx.AsyncByteStream):
    """A response body whose ``aclose`` completes even if the closing task is cancelled meanwhile.

    httpcore 1.0.9 gives a pool slot back only at the end of ``PoolByteStream.aclose``, after it marked the
    stream closed and passed an anyio lock checkpoint; its cancellation shield is anyio's, which a plain
    asyncio ``task.cancel()`` (a drain, ``asyncio.timeout``) goes through. A cancellation landing there
    left the request and its connection checked out for good: one slot lost per such cancel, until every
    request failed with ``PoolTimeout`` (PITFALLS H3). httpx itself closes the response when its body
    ends, inside the reading task, so the close is shielded here, where every close passes: it runs in a
    task of its own (kept in ``tasks`` until done); the caller still gets its ``CancelledError`` at once.
    """

    __slots__ = ("_inner", "_tasks")

    def __init__(self, inner: httpx.AsyncByteStream, tasks: set[asyncio.Task[None]]) -> None:
        self._inner = inner
        self._tasks = tasks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        closing = asyncio.ensure_future(self._inner.aclose())  # tracked task: must outlive a cancel
        self._tasks.add(closing)
        closing.add_done_callback(self._tasks.discard)
        await asyncio.shield(closing)


class _CancelSafeTransport(httpx.AsyncBaseTransport):
    """Wraps a transport so that every response body is a :class:`_CancelSafeStream`.

    Not needed (nor used) for a transport whose ``cancel_safe`` is true: the default one's responses close
    without awaiting anything (:mod:`bridge.kard.transport`).
    """

    __slots__ = ("_tasks", "inner")

    def __init__(self, inner: httpx.AsyncBaseTransport, tasks: set[asyncio.Task[None]]) -> None:
        self.inner = inner
        self._tasks = tasks

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = _CancelSafeStream(response.stream, self._tasks)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:
        """Everything else is the real transport's (its ``_pool`` for introspection, for instance)."""
        return getattr(self.inner, name)


class KardClient:
    """Sends batches to the Kard API. An async context manager; ``aclose()`` is idempotent.

    Args:
        config: the client settings.
        transport: an httpx transport to use instead of the network (``httpx.MockTransport`` in tests).
        clock: monotonic seconds, for token expiry and ``elapsed`` (injected in tests).
        wall_clock: epoch seconds, for ``Retry-After`` HTTP-dates and ``X-RateLimit-Reset``.
    """

    def __init__(
        self,
        config: KardClientConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        on_request: Callable[[str, int | None, float], None] | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._wall_clock = wall_clock
        self._on_request = on_request  # metrics hook: (endpoint, status or None, seconds)
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_keepalive_connections,
            keepalive_expiry=config.keepalive_expiry,
        )
        if transport is None:
            transport = make_transport(limits=limits, https=config.base_url.startswith("https://"))
        self._closing: set[asyncio.Task[None]] = set()  # response closes that outlive a cancelled request
        if not getattr(transport, "cancel_safe", False):
            transport = _CancelSafeTransport(transport, self._closing)
        self._transport = transport
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            headers={"User-Agent": config.user_agent, "Accept": "application/json"},
            timeout=httpx.Timeout(
                connect=config.connect_timeout,
                read=config.read_timeout,
                write=config.write_timeout,
                pool=config.pool_timeout,
            ),
            limits=limits,
            http1=True,
            http2=False,
            trust_env=False,
            follow_redirects=False,
            cookies=_NoCookies(),
            transport=transport,
        )
        self._auth = KardAuth(
            http=self._http,
            client_id=config.client_id,
            client_secret=config.client_secret,
            refresh_skew=config.token_refresh_skew,
            clock=clock,
            wall_clock=wall_clock,
        )
        self._admission = asyncio.Semaphore(config.max_connections)
        self._urls: dict[str, httpx.URL] = {}
        self._headers: dict[tuple[str, bool], httpx.Headers] = {}  # (method, with a body) → headers
        self._plain_url = self._plain_url_maker()
        self._extensions = {"timeout": self._http.timeout.as_dict()}
        self._state = "new"  # → "open" (entered) → "closed"
        self._in_flight = 0
        self._by_status: Counter[int] = Counter()
        self._transport_errors = 0
        self._deadline_expirations = 0
        self._pool_timeouts = 0

    def __repr__(self) -> str:
        return f"KardClient(base_url={self._config.base_url!r}, state={self._state})"

    async def __aenter__(self) -> Self:
        if self._state != "new":
            raise RuntimeError(f"KardClient cannot be entered when {self._state}")
        self._state = "open"
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool. Safe to call more than once."""
        if self._state == "closed":
            return
        self._state = "closed"
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await self._http.aclose()

    def statistics(self) -> KardClientStatistics:
        """Counters for the metrics layer (a snapshot; cheap)."""
        auth = self._auth.statistics()
        return KardClientStatistics(
            in_flight=self._in_flight,
            requests_by_status=dict(self._by_status),
            transport_errors=self._transport_errors,
            deadline_expirations=self._deadline_expirations,
            pool_timeouts=self._pool_timeouts,
            token_refreshes=auth.token_refreshes,
            token_failures=auth.token_failures,
            unauthorized_retries=auth.unauthorized_retries,
        )

    async def send_batch(self, route: Route, items: Sequence[MappedItem]) -> BatchResponse:
        """POST ``{"data": [...items]}`` to ``route.path`` and classify the answer per item.

        Args:
            route: where the batch goes; every item must belong to it (not re-checked here).
            items: at least one item; their ``encoded`` bytes are joined as they are.

        Returns:
            a :class:`BatchResponse` whose ``outcomes`` line up with ``items``.

        Raises:
            TransientDeliveryError: 408/429/5xx, transport error, timeout or deadline; retry the batch
                after ``retry_after`` (when the server gave one).
            AuthError: the credentials were refused (token endpoint 4xx, or 401 after one refresh).
            DeliveryError: a bug or misconfiguration on our side (not retryable, not a rejection).
            ValueError: ``items`` is empty.
            RuntimeError: the client is closed.
        """
        if not items:
            raise ValueError("send_batch needs at least one item")
        parts = [item.encoded for item in items]
        parts[0] = _BODY_HEAD + parts[0]
        parts[-1] += _BODY_TAIL
        body = b",".join(parts)  # one copy of the batch: head and tail go onto the first and last item
        started = self._clock()
        try:
            exchange = await self._exchange("POST", route.path, body)
        except DeliveryError as exc:
            if self._on_request is not None:
                self._on_request(route.endpoint.value, exc.status, self._clock() - started)
            raise
        if self._on_request is not None:
            self._on_request(route.endpoint.value, exchange.status, exchange.elapsed)
        result = classify_response(
            endpoint=route.endpoint,
            status=exchange.status,
            headers=exchange.headers,
            body=exchange.body,
            items=items,
            elapsed=exchange.elapsed,
            now=self._wall_clock(),
            truncated=exchange.truncated,
        )
        if exchange.truncated:
            _log.warning("kard_response_truncated", route=str(route), limit=self._config.max_response_bytes)
        if not result.confirmed:
            _log.warning(
                "kard_batch_unconfirmed",
                route=str(route),
                items=len(items),
                total_processed=result.summary.get("total_processed"),
            )
        return result

    async def ping(self) -> bool:
        """``GET v2/ping`` with a token: True on a 2xx, False on anything else (no bridge error escapes)."""
        if self._state == "closed":
            return False
        try:
            exchange = await self._exchange("GET", PING_PATH, None)
        except DeliveryError as exc:
            _log.warning("kard_ping_failed", error=type(exc).__name__, status=exc.status)
            return False
        if not 200 <= exchange.status <= 299:
            _log.warning("kard_ping_failed", status=exchange.status)
            return False
        return True

    async def _exchange(self, method: str, path: str, body: bytes | None) -> _Exchange:
        if self._state == "closed":
            raise RuntimeError("KardClient is closed")
        async with self._admission:  # before the deadline: waiting here is backpressure, not request time
            self._in_flight += 1
            started = self._clock()
            try:
                try:
                    async with asyncio.timeout(self._config.request_deadline):
                        response = await self._send(self._request(method, path, body))
                        try:
                            raw, truncated = await read_capped(response, self._config.max_response_bytes)
                        finally:
                            await response.aclose()
                except Exception as exc:
                    error = self._translate(exc)
                    if error is exc:
                        raise
                    raise error from exc
            finally:
                self._in_flight -= 1
        self._by_status[response.status_code] += 1
        return _Exchange(response.status_code, response.headers, raw, truncated, self._clock() - started)

    def _request(self, method: str, path: str, body: bytes | None) -> httpx.Request:
        """The request ``AsyncClient.build_request`` makes, from the path's URL and the shared headers.

        The headers depend on the method and on whether there is a body, not on the path (``Host`` is the base
        URL's): they are taken, but ``Content-Length``, from the first such ``build_request``. A path's URL is
        :meth:`_plain_url` or, for any other path, ``build_request``'s; kept in a cache, bounded because
        per-user paths are many.
        """
        url = self._urls.get(path)
        headers = self._headers.get((method, body is not None))
        if url is None or headers is None:
            if headers is None or self._plain_url is None or _PLAIN_PATH.fullmatch(path) is None:
                return self._first_request(method, path, body)
            url = self._remember_url(path, self._plain_url(path))
        if body is None:
            return httpx.Request(method, url, headers=headers, stream=_NO_BODY, extensions=self._extensions)
        stream = httpx.ByteStream(body)
        request = httpx.Request(method, url, headers=headers, stream=stream, extensions=self._extensions)
        request.headers["Content-Length"] = str(len(body))
        return request

    def _first_request(self, method: str, path: str, body: bytes | None) -> httpx.Request:
        request = self._http.build_request(method, path, content=body, headers=None if body is None else _JSON_BODY)
        self._remember_url(path, request.url)
        headers = request.headers.copy()
        if body is not None:
            del headers["Content-Length"]
        self._headers[(method, body is not None)] = headers
        return request

    def _remember_url(self, path: str, url: httpx.URL) -> httpx.URL:
        if len(self._urls) >= _URL_CACHE_LIMIT:
            self._urls.clear()
        self._urls[path] = url
        return url

    def _plain_url_maker(self) -> Callable[[str], httpx.URL] | None:
        """A maker of absolute URLs for plain paths (:data:`_PLAIN_PATH`), or None where it cannot be used.

        ``build_request`` parses a relative path, merges it into the base URL and parses the result again
        (about 0.15 ms; on mixed data most per-user paths are new). A plain path is already in the form
        that parsing gives (unreserved characters and upper-case percent escapes, no dot segments), so its
        URL is the base URL's with the path appended. Checked once against ``build_request`` here, for a
        base URL without query or fragment; if httpx's URL internals differ, every path goes the slow way.
        """
        base = self._http.base_url
        if base.query or base.fragment:
            return None
        try:
            reference = base._uri_reference
            prefix = base.raw_path.decode("ascii")

            def plain_url(path: str) -> httpx.URL:
                url = httpx.URL.__new__(httpx.URL)
                url._uri_reference = reference._replace(path=prefix + path)
                return url

            for probe in (PING_PATH, "v2/issuers/org-1/users/u%2F1.x~y_z%C3%A9/attributions"):
                made, built = plain_url(probe), self._http.build_request("POST", probe).url
                if (str(made), made.raw_path, made.netloc) != (str(built), built.raw_path, built.netloc):
                    return None
        except Exception:  # noqa: BLE001 - any surprise in httpx's internals just disables the shortcut
            return None
        return plain_url

    async def _send(self, request: httpx.Request) -> httpx.Response:
        """``AsyncClient.send(request, auth=KardAuth, stream=True)`` without redirects and cookies (see module doc).

        The auth flow is driven as httpx drives it: the 401 answer is read before the retry, and every
        response but the returned one is closed, also on errors and cancellation.
        """
        hooks = self._http.event_hooks
        flow = self._auth.async_auth_flow(request)
        try:
            request = await flow.__anext__()
            while True:
                response = await self._send_once(request, hooks)
                try:
                    try:
                        request = await flow.asend(response)
                    except StopAsyncIteration:
                        return response
                    await response.aread()
                except BaseException:
                    await response.aclose()
                    raise
        finally:
            await flow.aclose()

    async def _send_once(self, request: httpx.Request, hooks: Mapping[str, list[Callable[..., Any]]]) -> httpx.Response:
        """One request through the transport, with the client's event hooks (httpx's order and semantics).

        The bridge installs no hooks; instrumentation does (``tests/integration/test_http_pool_storm.py``).
        With response hooks the task yields once after them, as it did inside httpx's stack (whose response
        close passed anyio checkpoints): what a hook schedules for the request, a cancellation for instance,
        happens before the body is read. Without hooks, a body already received is read and the connection
        checked in without a pass through the event loop.
        """
        for hook in hooks["request"]:
            await hook(request)
        response = await self._transport.handle_async_request(request)
        response.request = request
        if hooks["response"]:
            try:
                for hook in hooks["response"]:
                    await hook(response)
                await asyncio.sleep(0)
            except BaseException:
                await response.aclose()
                raise
        return response

    def _translate(self, exc: Exception) -> Exception:
        """The one place where httpx (and deadline) exceptions become bridge errors; others are returned as they are."""
        if isinstance(exc, TimeoutError):  # only asyncio.timeout raises the builtin; httpx has its own classes
            self._deadline_expirations += 1
            return TransientDeliveryError(f"Kard request exceeded its {self._config.request_deadline:g} s deadline")
        if isinstance(exc, httpx.PoolTimeout):
            self._pool_timeouts += 1
            self._transport_errors += 1
            return TransientDeliveryError("no free connection in the Kard client pool (PoolTimeout)")
        if isinstance(exc, _TRANSIENT_HTTPX):
            self._transport_errors += 1
            return TransientDeliveryError(f"Kard request failed: {type(exc).__name__}")
        if isinstance(exc, httpx.HTTPError | httpx.InvalidURL | httpx.StreamError):
            self._transport_errors += 1
            return DeliveryError(f"Kard request could not be made: {type(exc).__name__}")
        if isinstance(exc, AttributeError | OSError):
            # A connection reset right after connect can reach httpcore's anyio stream with its socket already
            # gone (uvloop): ``get_extra_info`` then raises AttributeError/OSError instead of an httpx error.
            # Found by the chaos suite's API network cut; it is a transport failure like any other.
            self._transport_errors += 1
            return TransientDeliveryError(f"Kard connection failed: {type(exc).__name__}")
        return exc
