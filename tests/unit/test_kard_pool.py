"""Tests for ``bridge.kard.pool`` (through the default transport): limits, waiting, keep-alive, cancellation, errors."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpcore
import httpx
import pytest

from bridge.kard.network import AsyncioBackend
from bridge.kard.pool import Pool
from bridge.kard.transport import make_transport

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


class Server:
    """A local HTTP/1.1 server: reads requests (Content-Length bodies), answers ``respond(head, body)``.

    ``respond`` returns the raw bytes to send, or None to close the connection without answering; an awaitable
    ``gate`` (when set) is awaited before each answer; ``close_after`` closes the connection after an answer.
    It counts connections: opened, open now, most open at once.
    """

    def __init__(self) -> None:
        self.respond: Callable[[bytes, bytes], bytes | None] = lambda head, body: OK
        self.gate: Callable[[bytes], Any] | None = None
        self.connections = 0
        self.open = 0
        self.max_open = 0
        self.requests: list[tuple[bytes, bytes]] = []
        self.close_after = False  # close each connection after its first answer
        self.url = ""

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open += 1
        self.max_open = max(self.max_open, self.open)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                if self.gate is not None:
                    await self.gate(head)
                answer = self.respond(head, body)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
                if self.close_after:
                    return
        except ConnectionError:
            return
        finally:
            self.open -= 1
            writer.close()


@contextlib.asynccontextmanager
async def serving() -> AsyncIterator[Server]:
    server = Server()
    listener = await asyncio.start_server(server.serve, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    async with listener:
        yield server


def client(max_connections: int = 4, keepalive: int | None = None, expiry: float = 30.0) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=keepalive or max_connections, keepalive_expiry=expiry
    )
    return httpx.AsyncClient(transport=make_transport(limits=limits, https=False), timeout=5)


def pool_of(http: httpx.AsyncClient) -> Any:
    pool = http._transport._pool  # type: ignore[attr-defined]
    assert type(pool) is Pool
    return pool


def assert_healthy(pool: Any, limit: int) -> None:
    """Nothing checked out, nobody waiting, within the limit: every connection idle (or closed)."""
    assert len(pool.connections) <= limit
    assert all(c.is_idle() or c.is_closed() for c in pool.connections), pool.connections
    assert not pool._waiters and pool._connecting == 0 and not pool._requests


async def test_concurrent_requests_stay_within_max_connections_and_all_complete() -> None:
    """12 concurrent requests on 3 connections: at most 3 open at once, all answered, connections reused."""
    async with serving() as server, client(max_connections=3) as http:
        server.gate = lambda head: asyncio.sleep(0.02)
        responses = await asyncio.gather(*(http.post(f"{server.url}/x", content=b"[1]") for _ in range(12)))
        assert [r.status_code for r in responses] == [200] * 12
        assert server.max_open <= 3 and server.connections == 3
        assert_healthy(pool_of(http), 3)


async def test_a_request_waits_for_a_connection_up_to_the_pool_timeout() -> None:
    """With the only connection busy, a request with a short pool timeout fails with httpx.PoolTimeout."""
    async with serving() as server, client(max_connections=1) as http:
        release = asyncio.Event()

        async def gate(head: bytes) -> None:
            await release.wait()

        server.gate = gate
        first = asyncio.ensure_future(http.post(f"{server.url}/x", content=b"1"))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout):
            await http.post(f"{server.url}/x", content=b"2", timeout=httpx.Timeout(5, pool=0.05))
        release.set()
        assert (await first).status_code == 200
        assert (await http.post(f"{server.url}/x", content=b"3")).status_code == 200
        assert_healthy(pool_of(http), 1)


async def test_a_cancelled_waiter_passes_its_turn_on() -> None:
    """A, B, C on one connection; B is cancelled while it waits; C still gets the connection after A."""
    async with serving() as server, client(max_connections=1) as http:
        release = asyncio.Event()

        async def gate(head: bytes) -> None:
            await release.wait()

        server.gate = gate
        a = asyncio.ensure_future(http.post(f"{server.url}/a", content=b"a"))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(http.post(f"{server.url}/b", content=b"b"))
        c = asyncio.ensure_future(http.post(f"{server.url}/c", content=b"c"))
        await asyncio.sleep(0.05)
        assert len(pool_of(http)._waiters) == 2
        b.cancel()
        release.set()
        assert (await a).status_code == 200 and (await c).status_code == 200
        assert b.cancelled()
        assert [head.split(b" ")[1] for head, _ in server.requests] == [b"/a", b"/c"]
        assert_healthy(pool_of(http), 1)


async def test_a_waiter_woken_and_cancelled_before_it_runs_wakes_the_next() -> None:
    """The wake-up of a waiter cancelled in the same loop turn is not lost: the next waiter gets the connection."""
    async with serving() as server, client(max_connections=1) as http:
        pool = pool_of(http)
        release = asyncio.Event()

        async def gate(head: bytes) -> None:
            await release.wait()

        server.gate = gate
        a = asyncio.ensure_future(http.post(f"{server.url}/a", content=b"a"))
        await asyncio.sleep(0.05)
        b = asyncio.ensure_future(http.post(f"{server.url}/b", content=b"b"))
        c = asyncio.ensure_future(http.post(f"{server.url}/c", content=b"c"))
        await asyncio.sleep(0.05)
        check_in = pool._release

        def check_in_then_cancel_b(connection: Any) -> None:
            check_in(connection)  # wakes B ...
            b.cancel()  # ... which is cancelled before it runs: nothing else will wake C
            pool._release = check_in

        pool._release = check_in_then_cancel_b
        release.set()
        async with asyncio.timeout(2):
            assert (await a).status_code == 200 and (await c).status_code == 200
        assert b.cancelled()
        assert_healthy(pool, 1)


async def test_a_request_cancelled_on_the_wire_drops_its_connection() -> None:
    """Cancelled while waiting for its answer: the connection is closed and its slot free for the next request."""
    async with serving() as server, client(max_connections=1) as http:
        hang = True

        async def gate(head: bytes) -> None:
            if hang:
                await asyncio.sleep(3600)

        server.gate = gate
        sending = asyncio.ensure_future(http.post(f"{server.url}/x", content=b"1"))
        await asyncio.sleep(0.05)
        sending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sending
        pool = pool_of(http)
        assert pool.connections == [] and not pool._idle
        hang = False
        assert (await http.post(f"{server.url}/x", content=b"2")).status_code == 200
        assert server.connections == 2
        assert_healthy(pool, 1)


async def test_only_a_response_read_to_its_end_keeps_its_connection() -> None:
    """A response closed before its end drops its connection; one read to the end is reused."""
    async with serving() as server, client(max_connections=2) as http:
        server.respond = lambda head, body: b"HTTP/1.1 200 OK\r\nContent-Length: 10000\r\n\r\n" + b"x" * 10000
        async with http.stream("POST", f"{server.url}/x", content=b"1") as response:
            assert response.status_code == 200  # body not read
        assert server.connections == 1 and pool_of(http).connections == []
        for _ in range(3):
            assert len((await http.post(f"{server.url}/x", content=b"2")).content) == 10000
        assert server.connections == 2
        assert_healthy(pool_of(http), 2)


async def test_idle_connections_beyond_max_keepalive_are_closed() -> None:
    """4 connections for a burst, at most 1 kept idle afterwards."""
    async with serving() as server, client(max_connections=4, keepalive=1) as http:
        server.gate = lambda head: asyncio.sleep(0.02)
        await asyncio.gather(*(http.post(f"{server.url}/x", content=b"1") for _ in range(4)))
        assert server.max_open == 4
        assert len(pool_of(http).connections) == 1
        assert_healthy(pool_of(http), 1)


async def test_an_expired_idle_connection_is_not_reused() -> None:
    """Past ``keepalive_expiry`` an idle connection is closed and the next request opens another."""
    async with serving() as server, client(max_connections=2, expiry=0.05) as http:
        await http.post(f"{server.url}/x", content=b"1")
        await http.post(f"{server.url}/x", content=b"2")
        assert server.connections == 1
        await asyncio.sleep(0.1)
        await http.post(f"{server.url}/x", content=b"3")
        assert server.connections == 2
        assert len(pool_of(http).connections) == 1


async def test_a_connection_the_server_closed_while_idle_is_not_reused() -> None:
    """The server closes after each answer (keeping no Connection: close promise): every request gets a new one."""
    async with serving() as server, client(max_connections=2) as http:
        server.close_after = True
        for _ in range(3):
            assert (await http.post(f"{server.url}/x", content=b"1")).status_code == 200
            await asyncio.sleep(0.05)  # the server's close reaches the idle connection
        assert server.connections == 3


def _closed_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_failed_connect_frees_its_slot_and_other_origins_replace_idle_connections() -> None:
    """A refused connect is httpx.ConnectError and frees its slot; a full pool of idle connections to another
    origin gives one up for the new origin."""
    async with serving() as a, serving() as b, client(max_connections=1) as http:
        with pytest.raises(httpx.ConnectError) as info:
            await http.post(f"http://127.0.0.1:{_closed_port()}/x", content=b"1")
        assert info.value.request.url.path == "/x"
        assert (await http.post(f"{a.url}/x", content=b"1")).status_code == 200
        assert (await http.post(f"{b.url}/x", content=b"2")).status_code == 200
        assert (a.connections, b.connections) == (1, 1)
        (connection,) = pool_of(http).connections
        assert connection._origin.port == int(b.url.rsplit(":", 1)[1])
        await asyncio.sleep(0.05)
        assert a.open == 0  # the idle connection to A was closed


async def test_errors_are_httpx_errors_carrying_the_request() -> None:
    """No answer is httpx.RemoteProtocolError, a slow one httpx.ReadTimeout, a bad scheme httpx.UnsupportedProtocol."""
    async with serving() as server, client() as http:
        server.respond = lambda head, body: None
        with pytest.raises(httpx.RemoteProtocolError) as closed:
            await http.post(f"{server.url}/x", content=b"1")
        assert isinstance(closed.value.__cause__, httpcore.RemoteProtocolError)
        assert closed.value.request.url.path == "/x"

        async def slow(head: bytes) -> None:
            await asyncio.sleep(1)

        server.respond = lambda head, body: OK
        server.gate = slow
        with pytest.raises(httpx.ReadTimeout):
            await http.post(f"{server.url}/x", content=b"1", timeout=httpx.Timeout(5, read=0.05))
        with pytest.raises(httpx.UnsupportedProtocol):
            await http.post("ftp://127.0.0.1/x", content=b"1")
        await asyncio.sleep(1)  # the slow answer arrives on a dropped connection: nothing breaks
        assert_healthy(pool_of(http), 4)


async def test_a_body_cut_short_is_an_httpx_error_and_drops_the_connection() -> None:
    """A body the server cuts short raises httpx.RemoteProtocolError while reading; the connection goes."""
    async with serving() as server, client() as http:
        server.respond = lambda head, body: b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"
        server.close_after = True
        with pytest.raises(httpx.RemoteProtocolError):
            await http.post(f"{server.url}/x", content=b"1")
        assert pool_of(http).connections == []
        server.respond, server.close_after = (lambda head, body: OK), False
        assert (await http.post(f"{server.url}/x", content=b"2")).status_code == 200


async def test_the_pool_serves_httpcore_requests_too() -> None:
    """The pool is an httpcore pool: ``request()`` at the httpcore level works and shares the connections."""
    async with serving() as server, client() as http:
        pool = pool_of(http)
        response = await pool.request("POST", f"{server.url}/x", content=b"[1]")
        assert (response.status, response.content) == (200, b"{}")
        assert (await http.post(f"{server.url}/x", content=b"2")).status_code == 200
        assert server.connections == 1
        assert "1 idle" in repr(pool)
        with pytest.raises(httpcore.UnsupportedProtocol):
            await pool.request("GET", "ftp://127.0.0.1/x")


async def test_aclose_closes_every_connection() -> None:
    """Closing the client closes idle connections (the server sees them go)."""
    async with serving() as server:
        http = client()
        await asyncio.gather(*(http.post(f"{server.url}/x", content=b"1") for _ in range(2)))
        await http.aclose()
        await asyncio.sleep(0.05)
        assert server.open == 0 and pool_of(http).connections == []


def test_the_pool_refuses_what_it_does_not_do() -> None:
    """Proxies, Unix sockets, HTTP/2, connect retries and foreign network backends are refused, not ignored."""
    backend = AsyncioBackend()
    for options in ({"http2": True}, {"retries": 1}, {"uds": "/tmp/x.sock"}):
        with pytest.raises(ValueError, match=r"direct HTTP/1\.1"):
            Pool(network_backend=backend, **options)
    with pytest.raises(ValueError, match="AsyncioBackend"):
        Pool()
