"""The client's connection pool: httpcore's pool interface and HTTP/1.1 connection (h11), without their overhead.

Why: with one small request per user (mixed data), the client's CPU per request is what limits the bridge.
httpcore 1.0.9's pool queues every request, re-runs its assignment pass over all connections twice per
request and signals through anyio events, locks and cancel scopes; its HTTP/1.1 connection takes an anyio
lock twice per request (each a pass through the event loop) and traces every phase. Together with httpx's
own layers that was most of the client's CPU (``bench/bench_client.py`` measures it). Here:

* :class:`Pool` keeps idle connections in a list and hands them out and back with a few list operations;
  requests that find no free connection wait on futures, FIFO, up to the pool timeout;
* :class:`PooledConnection` is httpcore's ``AsyncHTTP11Connection`` driven without its lock (a connection
  checked out of the pool has one user) and with h11's validation of a header list reused for the same
  list: the protocol (h11's state machine, events and parsing) and the exceptions are httpcore's;
* :class:`ResponseBody` reads the body straight off the connection, in one loop for a capped read.

Cancellation safety (PITFALLS H3): everything that gives a connection back is synchronous (no await, so no
cancellation can land halfway): a finished body checks its connection in, a failed or cancelled exchange or
body closes it, a waiter cancelled after it was woken passes its turn on. ``Pool`` is used only with the
httpcore release it was checked against (:func:`bridge.kard.transport.make_transport`).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from typing import Any, cast

import h11
import httpcore
import httpx
from httpcore._async.http11 import AsyncHTTP11UpgradeStream, HTTPConnectionState

from bridge.kard.network import AsyncioBackend, AsyncioStream, wait_or_timeout

__all__ = ["Pool", "PooledConnection", "ResponseBody", "httpx_error", "origin_of"]

_DEFAULT_PORTS = {b"http": 80, b"https": 443, b"ws": 80, b"wss": 443}
_VALIDATED_LIMIT = 1024  # request header lists whose h11 validation is kept (per pool)
#: httpcore exception → the httpx exception httpx's own transport raises for it (``map_httpcore_exceptions``).
_HTTPX_ERRORS: dict[type[Exception], type[httpx.TransportError]] = {
    httpcore.TimeoutException: httpx.TimeoutException,
    httpcore.ConnectTimeout: httpx.ConnectTimeout,
    httpcore.ReadTimeout: httpx.ReadTimeout,
    httpcore.WriteTimeout: httpx.WriteTimeout,
    httpcore.PoolTimeout: httpx.PoolTimeout,
    httpcore.NetworkError: httpx.NetworkError,
    httpcore.ConnectError: httpx.ConnectError,
    httpcore.ReadError: httpx.ReadError,
    httpcore.WriteError: httpx.WriteError,
    httpcore.ProxyError: httpx.ProxyError,
    httpcore.UnsupportedProtocol: httpx.UnsupportedProtocol,
    httpcore.ProtocolError: httpx.ProtocolError,
    httpcore.LocalProtocolError: httpx.LocalProtocolError,
    httpcore.RemoteProtocolError: httpx.RemoteProtocolError,
}


def httpx_error(exc: Exception, request: httpx.Request | None) -> Exception:
    """The httpx exception for an httpcore one (the most specific class, same message), else ``exc`` itself."""
    for cls in type(exc).__mro__:
        mapped = _HTTPX_ERRORS.get(cls)
        if mapped is not None:
            error = mapped(str(exc))
            if request is not None:
                error.request = request
            return error
    return exc


def origin_of(scheme: bytes, host: bytes, port: int | None) -> httpcore.Origin:
    """The pool key of a URL, with httpcore's checks and default ports."""
    if not scheme:
        raise httpcore.UnsupportedProtocol("Request URL is missing an 'http://' or 'https://' protocol.")
    default = _DEFAULT_PORTS.get(scheme)
    if default is None:
        raise httpcore.UnsupportedProtocol(f"Request URL has an unsupported protocol '{scheme.decode()}://'.")
    return httpcore.Origin(scheme, host, port or default)


class PooledConnection(httpcore.AsyncHTTP11Connection):
    """httpcore's HTTP/1.1 connection (h11), driven by :class:`Pool` without its locks and tracing.

    httpcore's ``handle_async_request`` takes an anyio lock twice per request, each time passing through the
    event loop, and wraps every phase in a tracing context. A connection checked out of :class:`Pool` has
    exactly one user, so :meth:`exchange` and :meth:`finish` change the same state without the lock: the h11
    state machine, the events sent, the parsing and the exceptions are httpcore's. Closing is synchronous
    (:meth:`AsyncioStream.close`), so no cancellation can leave a connection half-closed.
    """

    def __init__(
        self,
        origin: httpcore.Origin,
        stream: AsyncioStream,
        keepalive_expiry: float | None,
        validated: dict[tuple[tuple[bytes, bytes], ...], Any],
    ) -> None:
        super().__init__(origin, stream, keepalive_expiry)
        self._stream = stream
        self._validated = validated  # the pool's: request header lists → h11's validated headers

    async def exchange(
        self,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes],
        timeouts: Mapping[str, float | None],
    ) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any]]:
        """Send one request and read the response head: status, raw headers, httpcore's response extensions.

        On any error the caller checks the connection back in (:meth:`Pool._release` closes it then).

        Raises:
            httpcore.LocalProtocolError: the request cannot be sent (h11 refused it).
            httpcore.ReadTimeout, httpcore.ReadError, httpcore.RemoteProtocolError: no valid response head.
        """
        if self._state is not HTTPConnectionState.NEW and self._state is not HTTPConnectionState.IDLE:
            raise httpcore.ConnectionNotAvailable()
        self._request_count += 1
        self._state = HTTPConnectionState.ACTIVE
        self._expire_at = None
        write_timeout = timeouts.get("write")
        try:
            try:
                # h11 validates every header with regular expressions; the same list validates the same way,
                # and a client sends the same few lists (they differ in Content-Length): reuse h11's result.
                key = tuple(headers)
                validated = self._validated.get(key)
                if validated is None:
                    request = h11.Request(method=method, target=target, headers=headers)
                    if len(self._validated) >= _VALIDATED_LIMIT:
                        self._validated.clear()
                    self._validated[key] = request.headers
                else:
                    request = h11.Request(method=method, target=target, headers=validated)
            except h11.LocalProtocolError as exc:
                raise httpcore.LocalProtocolError(exc) from exc
            await self._send_event(request, timeout=write_timeout)
            async for chunk in body:
                await self._send_event(h11.Data(data=chunk), timeout=write_timeout)
            await self._send_event(h11.EndOfMessage(), timeout=write_timeout)
        except httpcore.WriteError:
            pass  # as httpcore does: the server may have answered early (and closed); read what it said
        read_timeout = timeouts.get("read")
        while True:
            event = await self.next_event(read_timeout)
            if isinstance(event, h11.Response):
                break
            if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
                break
        status: int = event.status_code
        network_stream: httpcore.AsyncNetworkStream = self._stream
        if status == 101 or (method == b"CONNECT" and 200 <= status < 300):
            network_stream = AsyncHTTP11UpgradeStream(network_stream, self._h11_state.trailing_data[0])
        extensions = {
            "http_version": b"HTTP/" + event.http_version,
            "reason_phrase": event.reason,
            "network_stream": network_stream,
        }
        return status, event.headers.raw_items(), extensions

    async def next_event(self, timeout: float | None) -> Any:
        """httpcore's ``_receive_event``: the next h11 event, reading from the network while h11 needs data."""
        h11_state = self._h11_state
        while True:
            try:
                event = h11_state.next_event()
            except h11.RemoteProtocolError as exc:
                raise httpcore.RemoteProtocolError(exc) from exc
            if event is not h11.NEED_DATA:
                return event
            data = await self._stream.read(self.READ_NUM_BYTES, timeout=timeout)
            if data == b"" and h11_state.their_state == h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError("Server disconnected without sending a response.")
            h11_state.receive_data(data)

    def finish(self) -> None:
        """httpcore's ``_response_closed``, synchronous: idle again if the exchange completed, else closed."""
        h11_state = self._h11_state
        if (
            self._state is HTTPConnectionState.ACTIVE
            and h11_state.our_state is h11.DONE
            and h11_state.their_state is h11.DONE
        ):
            self._state = HTTPConnectionState.IDLE
            h11_state.start_next_cycle()
            if self._keepalive_expiry is not None:
                self._expire_at = time.monotonic() + self._keepalive_expiry
        else:
            self.close()

    def close(self) -> None:
        """Close at once (idempotent)."""
        self._state = HTTPConnectionState.CLOSED
        self._stream.close()

    async def aclose(self) -> None:
        self.close()


class ResponseBody(httpx.AsyncByteStream):
    """A response body read straight off its :class:`PooledConnection`; closing it checks the connection back in.

    Iterating yields the body chunks (httpcore's, or with ``request`` given httpx's, exceptions);
    :meth:`read_capped` reads the whole body in one loop. Either closes the body at its end, on an error or
    on a cancellation, without awaiting anything (see :meth:`Pool._release`).
    """

    __slots__ = ("_closed", "_connection", "_pool", "_request", "_timeout")

    def __init__(
        self, pool: Pool, connection: PooledConnection, timeout: float | None, request: httpx.Request | None
    ) -> None:
        self._pool = pool
        self._connection = connection
        self._timeout = timeout
        self._request = request  # set: raise httpx's exceptions (with this request), not httpcore's
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        try:
            while not self._closed:
                event = await connection.next_event(self._timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    break
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and self._request is not None:
                error = httpx_error(exc, self._request)
                if error is not exc:
                    raise error from exc
            raise
        self.close()

    async def read_capped(self, limit: int) -> tuple[bytes, bool]:
        """The body, or its first ``limit`` bytes and ``True`` (the rest is not read: the connection is dropped)."""
        connection = self._connection
        chunks: list[bytes] = []
        size = 0
        try:
            while not self._closed:
                event = await connection.next_event(self._timeout)
                if isinstance(event, h11.Data):
                    chunk = bytes(event.data)
                    room = limit - size
                    if len(chunk) > room:
                        chunks.append(chunk[:room])
                        self.close()
                        return b"".join(chunks), True
                    chunks.append(chunk)
                    size += len(chunk)
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    break
        except BaseException as exc:
            self.close()
            if isinstance(exc, Exception) and self._request is not None:
                error = httpx_error(exc, self._request)
                if error is not exc:
                    raise error from exc
            raise
        self.close()
        return b"".join(chunks), False

    def close(self) -> None:
        """Check the connection back in (idempotent, synchronous)."""
        if not self._closed:
            self._closed = True
            self._pool._release(self._connection)

    async def aclose(self) -> None:
        self.close()


class Pool(httpcore.AsyncConnectionPool):
    """httpcore's pool interface (limits, ``connections``, ``aclose``) with bookkeeping made for this client.

    httpcore 1.0.9's pool queues every request, re-runs its assignment pass over all connections twice per
    request, and signals and closes through anyio events, locks and cancel scopes: with the HTTP/1.1
    connection's own locks, a large part of the client's CPU per request. Here:

    * idle connections wait in a list (most recently used last, so that surplus connections expire);
      checking one out or in is a few list operations, and expired or server-closed ones are dropped when
      met (the longest idle is checked at every checkout);
    * at most ``max_connections`` connections exist (connecting ones included); a request that finds none
      free waits on a future, FIFO, up to the ``pool`` timeout (``httpcore.PoolTimeout``);
    * everything that gives a connection back (:meth:`_release`, :meth:`_discard`) is synchronous, so a
      cancellation cannot land halfway and leak a slot (PITFALLS H3): responses are :class:`ResponseBody`,
      a failed or cancelled exchange is checked in by :meth:`send`, a cancelled wait passes its turn on.

    The same decisions as httpcore: reuse an idle connection of the origin, else open one while under the
    limit, else replace an idle connection of another origin, else wait; close a connection that is not
    reusable after its response, and idle ones beyond ``max_keepalive_connections``. HTTP/1.1 only, direct
    connections only (no proxy, no Unix socket, no connect retries), on :class:`AsyncioBackend`.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self._proxy is not None or self._uds is not None or self._http2 or not self._http1 or self._retries:
            raise ValueError("this pool makes direct HTTP/1.1 connections only (no proxy, uds, http2 or retries)")
        if not isinstance(self._network_backend, AsyncioBackend):
            raise ValueError("this pool runs on AsyncioBackend")
        self._backend = self._network_backend
        self._idle: list[PooledConnection] = []  # checked in; most recently used last
        self._waiters: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._connecting = 0
        self._validated: dict[tuple[tuple[bytes, bytes], ...], Any] = {}  # see PooledConnection.exchange

    def __repr__(self) -> str:
        idle = sum(1 for c in self._connections if c.is_idle())
        return (
            f"<{type(self).__name__} [Connections: {len(self._connections) - idle} active, {idle} idle, "
            f"{self._connecting} connecting | {len(self._waiters)} waiting]>"
        )

    async def handle_async_request(self, request: httpcore.Request) -> httpcore.Response:
        """httpcore's pool API, on :meth:`send`."""
        url = request.url
        assert isinstance(request.stream, AsyncIterable)
        status, headers, extensions, body = await self.send(
            origin_of(url.scheme, url.host, url.port), request.method, url.target, request.headers, request.stream,
            request.extensions, None,
        )  # fmt: skip
        return httpcore.Response(status=status, headers=headers, content=body, extensions=extensions)

    async def send(
        self,
        origin: httpcore.Origin,
        method: bytes,
        target: bytes,
        headers: list[tuple[bytes, bytes]],
        body: AsyncIterable[bytes],
        extensions: Mapping[str, Any],
        request: httpx.Request | None,
    ) -> tuple[int, list[tuple[bytes, bytes]], dict[str, Any], ResponseBody]:
        """Send a request on a pooled connection; returns status, headers, extensions and the unread body.

        The body holds the connection until it is read to its end or closed. ``request``: the httpx request
        this is, when the body is to raise httpx's exceptions.
        """
        timeouts = extensions.get("timeout", {})
        connection = await self._acquire(origin, timeouts, extensions)
        try:
            status, response_headers, response_extensions = await connection.exchange(
                method, target, headers, body, timeouts
            )
        except BaseException:
            self._release(connection)
            raise
        return status, response_headers, response_extensions, ResponseBody(
            self, connection, timeouts.get("read"), request
        )

    async def _acquire(
        self, origin: httpcore.Origin, timeouts: Mapping[str, float | None], extensions: Mapping[str, Any]
    ) -> PooledConnection:
        idle = self._idle
        first = False  # a waiter that was woken and found nothing waits again at the head of the queue
        while True:
            while idle and idle[0].has_expired():  # the longest idle: past its keep-alive, or closed by the server
                self._discard(idle.pop(0))
            for index in range(len(idle) - 1, -1, -1):
                connection = idle[index]
                if connection.can_handle_request(origin):
                    del idle[index]
                    if not connection.has_expired():
                        return connection
                    self._discard(connection)
                    break
            else:
                if len(self._connections) + self._connecting < self._max_connections:
                    return await self._connect(origin, timeouts.get("connect"), extensions)
                if idle:  # full, and what is idle serves other origins: replace the longest idle
                    self._discard(idle.pop(0))
                    continue
                await self._wait(timeouts.get("pool"), first)
                first = True

    async def _wait(self, timeout: float | None, first: bool) -> None:
        """Until a connection is checked in or a slot frees (the caller then looks again), ``timeout`` at most."""
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if first:
            self._waiters.appendleft(waiter)
        else:
            self._waiters.append(waiter)
        try:
            woken = await wait_or_timeout(waiter, timeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._wake()  # woken, but leaving: the turn goes to the next waiter
            else:
                self._forget(waiter)
            raise
        if not woken:
            self._forget(waiter)
            raise httpcore.PoolTimeout("timed out waiting for a connection from the pool")

    def _forget(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _wake(self) -> None:
        """Let the longest waiting request look again (a connection was checked in, or a slot freed)."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

    async def _connect(
        self, origin: httpcore.Origin, timeout: float | None, extensions: Mapping[str, Any]
    ) -> PooledConnection:
        """Open a connection (TCP, then TLS for https) in a slot reserved while it connects."""
        self._connecting += 1
        try:
            host = origin.host.decode("ascii")
            stream = cast(
                "AsyncioStream",
                await self._backend.connect_tcp(
                    host, origin.port, timeout=timeout, local_address=self._local_address,
                    socket_options=self._socket_options,
                ),
            )  # fmt: skip
            if origin.scheme in (b"https", b"wss"):
                context = httpcore.default_ssl_context() if self._ssl_context is None else self._ssl_context
                context.set_alpn_protocols(["http/1.1"])
                try:
                    server_hostname = extensions.get("sni_hostname") or host
                    stream = cast("AsyncioStream", await stream.start_tls(context, server_hostname, timeout))
                except BaseException:
                    stream.close()
                    raise
        except BaseException:
            self._connecting -= 1
            self._wake()  # the reserved slot is free again
            raise
        self._connecting -= 1
        connection = PooledConnection(origin, stream, self._keepalive_expiry, self._validated)
        self._connections.append(connection)
        return connection

    def _release(self, connection: PooledConnection) -> None:
        """Check a connection in after its response, or after a failed or cancelled exchange (synchronous)."""
        connection.finish()
        if connection.is_idle() and len(self._connections) <= self._max_keepalive_connections:
            self._idle.append(connection)
            self._wake()
        else:
            self._discard(connection)

    def _discard(self, connection: PooledConnection) -> None:
        """Close a connection and free its slot (synchronous)."""
        connection.close()
        with contextlib.suppress(ValueError):
            self._connections.remove(connection)
        self._wake()

    async def aclose(self) -> None:
        """Close every connection, idle or in use (as httpcore's pool does)."""
        connections = self._connections
        self._connections, self._idle = [], []
        for connection in connections:
            cast("PooledConnection", connection).close()
