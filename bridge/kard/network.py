"""httpcore's network backend on plain asyncio sockets instead of anyio (used by :mod:`bridge.kard.pool`).

Why: profiles of the whole bridge put about a fifth of its CPU in anyio's socket layer under httpcore.
Two costs dominate there. Every pool operation (twice per request) asks each idle connection whether
its socket is readable, and anyio answers ``extra(raw_socket)`` by building a dict of lambdas and then
polling the file descriptor; and every send and receive goes through anyio's resource guards, cancel
checkpoints and a ``CancelScope`` per timeout. This module is httpcore's documented ``network_backend``
seam; the protocol logic (h11) and httpx's models are unchanged, the pool is :mod:`bridge.kard.pool`.

How the stream works (:class:`AsyncioStream`):

* an ``asyncio.Protocol`` buffers what the event loop reads, so a connection knows without a system
  call whether the server sent something (data, or a FIN) while it was idle: that is the
  ``is_readable`` answer httpcore uses to drop a connection the server closed;
* reads wait on one future with a ``call_later`` timer when the buffer is empty (no timer otherwise);
  writes go straight to the transport and wait only while the transport asks the writer to pause;
* errors become httpcore's exceptions exactly as the anyio backend maps them (``ReadTimeout``,
  ``ReadError``, ``WriteTimeout``, ``WriteError``, ``ConnectTimeout``, ``ConnectError``), so httpx and
  :meth:`bridge.kard.client.KardClient._translate` see the same classes as before;
* :meth:`AsyncioStream.close` closes without a coroutine: the pool closes connections synchronously.

TLS is asyncio's ``loop.start_tls`` on the same protocol. The SSL context is built once per client
(verification on, system/certifi roots as httpx does), and only for ``https`` base URLs.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any, cast

import httpcore

__all__ = ["AsyncioBackend", "AsyncioStream", "wait_or_timeout"]

_PAUSE_READING_AT = 256 * 1024  # buffered bytes at which the transport stops reading from the socket
_SEND_AT = 64 * 1024  # queued request bytes that are sent without waiting for the read


class _StreamProtocol(asyncio.Protocol):
    """Buffers received bytes and remembers EOF and connection loss; wakes the one waiting reader/writer."""

    __slots__ = ("buffer", "closed", "eof", "error", "lost", "reader", "reading_paused", "transport", "writer")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False  # the peer sent FIN
        self.lost = False  # the connection is gone
        self.closed = False  # we closed it
        self.error: BaseException | None = None  # why it was lost, when not cleanly
        self.reading_paused = False
        self.reader: asyncio.Future[bool] | None = None
        self.writer: asyncio.Future[bool] | None = None  # set while writing is paused

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) >= _PAUSE_READING_AT and not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def eof_received(self) -> None:
        self.eof = True
        self._wake_reader()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self._wake_reader()
        self._wake_writer()

    def pause_writing(self) -> None:
        if self.writer is None:
            self.writer = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        self._wake_writer()

    def _wake_reader(self) -> None:
        if self.reader is not None and not self.reader.done():
            self.reader.set_result(True)

    def _wake_writer(self) -> None:
        writer, self.writer = self.writer, None
        if writer is not None and not writer.done():
            writer.set_result(True)


def _expire(waiter: asyncio.Future[bool]) -> None:
    if not waiter.done():
        waiter.set_result(False)


async def wait_or_timeout(waiter: asyncio.Future[bool], timeout: float | None) -> bool:
    """Wait for ``waiter``; False when ``timeout`` seconds passed first."""
    if timeout is None:
        return await waiter
    timer = asyncio.get_running_loop().call_later(timeout, _expire, waiter)
    try:
        return await waiter
    finally:
        timer.cancel()


class AsyncioStream(httpcore.AsyncNetworkStream):
    """One connection: an asyncio transport and its buffering protocol."""

    __slots__ = ("_pending", "_pending_bytes", "_protocol", "_transport")

    def __init__(self, transport: asyncio.Transport, protocol: _StreamProtocol) -> None:
        self._transport = transport
        self._protocol = protocol
        self._pending: list[bytes] = []  # written, not yet handed to the transport (see write())
        self._pending_bytes = 0

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        """Up to ``max_bytes`` received bytes; ``b""`` once the peer closed and everything was read.

        Raises:
            httpcore.ReadTimeout: nothing arrived within ``timeout`` seconds.
            httpcore.ReadError: the connection was reset, or closed by us.
        """
        protocol = self._protocol
        if self._pending and not protocol.closed:
            self._flush(httpcore.ReadError)
        buffer = protocol.buffer
        if not buffer:
            if protocol.closed:
                raise httpcore.ReadError("the connection is closed")
            if not (protocol.eof or protocol.lost):
                waiter = protocol.reader = asyncio.get_running_loop().create_future()
                try:
                    arrived = await wait_or_timeout(waiter, timeout)
                finally:
                    protocol.reader = None
                if not arrived:
                    raise httpcore.ReadTimeout("timed out reading from the connection")
            if not buffer:
                if protocol.closed or protocol.error is not None:
                    raise httpcore.ReadError(_describe(protocol.error, "the connection was closed"))
                return b""
        if len(buffer) <= max_bytes:
            data = bytes(buffer)
            buffer.clear()
        else:
            data = bytes(buffer[:max_bytes])
            del buffer[:max_bytes]
        if protocol.reading_paused and len(buffer) < _PAUSE_READING_AT // 2 and not protocol.lost:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return data

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        """Queue ``buffer``; it is sent with the next :meth:`read` (or at once when large).

        httpcore writes a request as headers, then body, then reads the answer: sending both in one
        system call on that read saves a call and a packet per request. Large bodies are sent at once,
        and wait while the transport's write buffer is over its limit.

        Raises:
            httpcore.WriteTimeout: the transport did not drain within ``timeout`` seconds.
            httpcore.WriteError: the connection is gone.
        """
        if not buffer:
            return
        protocol = self._protocol
        if protocol.lost or protocol.closed or self._transport.is_closing():
            raise httpcore.WriteError(_describe(protocol.error, "the connection is closed"))
        self._pending.append(buffer)
        self._pending_bytes += len(buffer)
        if self._pending_bytes < _SEND_AT:
            return
        self._flush(httpcore.WriteError)
        writer = protocol.writer
        if writer is not None:
            if not await wait_or_timeout(writer, timeout):
                raise httpcore.WriteTimeout("timed out writing to the connection")
            if protocol.lost:
                raise httpcore.WriteError(_describe(protocol.error, "the connection was closed"))

    def _flush(self, error: type[httpcore.NetworkError]) -> None:
        """Hand the queued bytes to the transport: joined when small, piece by piece when large (no big copy)."""
        pending = self._pending
        pieces = pending if len(pending) == 1 or self._pending_bytes >= _SEND_AT else [b"".join(pending)]
        self._pending = []
        self._pending_bytes = 0
        try:
            for piece in pieces:
                self._transport.write(piece)
        except (RuntimeError, OSError) as exc:
            raise error(_describe(exc, "the connection is closed")) from exc

    async def aclose(self) -> None:
        """Drop the connection at once (unsent data is discarded, as anyio's ``aclose`` does)."""
        self.close()

    def close(self) -> None:
        """:meth:`aclose` without the coroutine: nothing to wait for, so no cancellation can interrupt it."""
        self._protocol.closed = True
        self._transport.abort()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore.AsyncNetworkStream:
        """Upgrade to TLS on the same protocol.

        Raises:
            httpcore.ConnectTimeout: the handshake took longer than ``timeout`` seconds.
            httpcore.ConnectError: the handshake failed (certificate, protocol, connection).
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except TimeoutError as exc:
            await self.aclose()
            raise httpcore.ConnectTimeout("timed out during the TLS handshake") from exc
        except (OSError, ssl.SSLError, ConnectionError) as exc:
            await self.aclose()
            raise httpcore.ConnectError(_describe(exc, "the TLS handshake failed")) from exc
        if transport is None:  # pragma: no cover - the loop closed the connection under us
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        self._protocol.transport = transport
        return AsyncioStream(transport, self._protocol)

    def get_extra_info(self, info: str) -> Any:
        """``is_readable`` (the peer sent data or closed while idle), ``ssl_object``, addresses, ``socket``."""
        if info == "is_readable":
            protocol = self._protocol
            return bool(protocol.buffer) or protocol.eof or protocol.lost or protocol.closed
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._transport.get_extra_info("socket")
        return None


def _describe(exc: BaseException | None, fallback: str) -> str:
    return f"{fallback} ({type(exc).__name__})" if exc is not None else fallback


def _apply(transport: asyncio.Transport, options: Iterable[httpcore.SOCKET_OPTION] | None) -> None:
    if options:
        sock = transport.get_extra_info("socket")
        for option in options:
            sock.setsockopt(*option)


class AsyncioBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend on the running asyncio loop (uvloop or the default one)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Open a TCP connection (``TCP_NODELAY`` is set by asyncio).

        Raises:
            httpcore.ConnectTimeout: not connected within ``timeout`` seconds.
            httpcore.ConnectError: resolution or connection failed.
        """
        loop = asyncio.get_running_loop()
        local = (local_address, 0) if local_address else None
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_connection(_StreamProtocol, host, port, local_addr=local)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"timed out connecting to {host}:{port}") from exc
        except OSError as exc:
            raise httpcore.ConnectError(_describe(exc, f"cannot connect to {host}:{port}")) from exc
        _apply(transport, socket_options)
        return AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None
    ) -> httpcore.AsyncNetworkStream:
        """Open a Unix socket connection.

        Raises:
            httpcore.ConnectTimeout: not connected within ``timeout`` seconds.
            httpcore.ConnectError: the connection failed.
        """
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                transport, protocol = await loop.create_unix_connection(_StreamProtocol, path)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout("timed out connecting to a Unix socket") from exc
        except OSError as exc:
            raise httpcore.ConnectError(_describe(exc, "cannot connect to a Unix socket")) from exc
        _apply(transport, socket_options)
        return AsyncioStream(transport, protocol)

    async def sleep(self, seconds: float) -> None:
        """Sleep on the event loop (httpcore's connect retries)."""
        await asyncio.sleep(seconds)
