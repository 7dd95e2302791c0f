"""The fault-injecting TCP proxy against local echo servers: forwarding, half-closes, reset, black hole, heal,
latency, and a stop() that leaves no task or socket behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from bridge.devenv.tcp_proxy import FaultProxy, ProxyGroup

_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Server:
    """A local TCP server running ``handler`` per connection; counts connections and bytes received."""

    def __init__(self, handler: _Handler) -> None:
        self._handler = handler
        self.connections = 0
        self.received = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._handler(reader, writer)
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Echo every chunk; answer EOF with EOF."""
        while data := await reader.read(65536):
            self.received += len(data)
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def count_then_reply(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read until the client half-closes, then answer with the byte count (the reverse direction still works)."""
        data = await reader.read()
        self.received += len(data)
        writer.write(f"got {len(data)}".encode())
        await writer.drain()

    async def __aenter__(self) -> Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def echo() -> AsyncIterator[Server]:
    server = Server(lambda r, w: server.echo(r, w))
    async with server:
        yield server


async def _connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def _round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: bytes) -> bytes:
    writer.write(payload)
    await writer.drain()
    async with asyncio.timeout(5):
        return await reader.readexactly(len(payload))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _fails(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, write: bool = True) -> bool:
    """True if the connection is dead: a write/read raises a connection error or reads EOF."""
    try:
        if write:
            writer.write(b"ping")
            await writer.drain()
        async with asyncio.timeout(5):
            return await reader.read(4) == b""
    except ConnectionError:
        return True


async def _settle(check: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def test_forwards_many_connections_both_ways(echo: Server) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        payloads = [os.urandom(100_000 + i) for i in range(40)]

        async def one(payload: bytes) -> bytes:
            reader, writer = await _connect(proxy)
            try:
                return await _round_trip(reader, writer, payload)
            finally:
                await _close(writer)

        assert await asyncio.gather(*(one(p) for p in payloads)) == payloads
        total = sum(map(len, payloads))
        assert await _settle(lambda: proxy.stats.active == 0)
        stats = proxy.stats
        assert (stats.accepted, stats.refused, stats.resets) == (40, 0, 0)
        assert stats.bytes_to_target == stats.bytes_to_client == echo.received == total
        assert proxy.mode == "open" and proxy.address == f"127.0.0.1:{proxy.port}"


async def test_half_close_passes_and_the_other_direction_keeps_flowing() -> None:
    server = Server(lambda r, w: server.count_then_reply(r, w))
    async with server, FaultProxy("127.0.0.1", server.port) as proxy:
        reader, writer = await _connect(proxy)
        writer.write(b"x" * 300_000)
        writer.write_eof()  # half-close: the server only answers once it sees our EOF
        async with asyncio.timeout(5):
            assert await reader.read() == b"got 300000"  # ...then its own EOF arrives too
        await _close(writer)
        assert await _settle(lambda: proxy.stats.active == 0)


async def test_cut_reset_resets_open_connections_and_new_ones_until_heal(echo: Server) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _round_trip(reader, writer, b"hello") == b"hello"

        proxy.cut("reset")
        assert proxy.mode == "reset"
        with pytest.raises(ConnectionResetError):
            async with asyncio.timeout(5):
                await reader.read(10)
        await _close(writer)
        assert await _settle(lambda: proxy.stats.active == 0)

        connections_before = echo.connections
        reader2, writer2 = await _connect(proxy)  # the kernel completes the handshake; the proxy resets it
        assert await _fails(reader2, writer2)
        await _close(writer2)
        assert echo.connections == connections_before  # nothing reached the target
        stats = proxy.stats
        assert stats.resets == 1 and stats.refused == 1 and stats.accepted == 2

        proxy.heal()
        reader3, writer3 = await _connect(proxy)
        assert await _round_trip(reader3, writer3, b"again") == b"again"
        await _close(writer3)


async def test_blackhole_swallows_traffic_both_ways_and_heal_resets_what_it_held(echo: Server) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        reader, writer = await _connect(proxy)
        assert await _round_trip(reader, writer, b"before") == b"before"

        proxy.cut("blackhole")
        received = echo.received
        writer.write(b"lost in the void")
        await writer.drain()
        with pytest.raises(TimeoutError):  # the socket stays open; only a timeout notices
            async with asyncio.timeout(0.5):
                await reader.read(100)

        reader2, writer2 = await _connect(proxy)  # new connections are accepted and go nowhere
        writer2.write(b"anyone?")
        await writer2.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await reader2.read(100)
        assert echo.received == received
        assert proxy.stats.bytes_dropped == len(b"lost in the void") + len(b"anyone?")
        assert proxy.stats.active == 2

        proxy.heal()  # what was black-holed is reset, so clients reconnect instead of waiting forever
        for r, w in ((reader, writer), (reader2, writer2)):
            with pytest.raises(ConnectionResetError):
                async with asyncio.timeout(5):
                    await r.read(100)
            await _close(w)
        reader3, writer3 = await _connect(proxy)
        assert await _round_trip(reader3, writer3, b"after") == b"after"
        await _close(writer3)
        assert await _settle(lambda: proxy.stats.active == 0)
        assert proxy.stats.resets == 2


async def test_blackhole_survives_clients_giving_up(echo: Server) -> None:
    """A client that closes during a black hole frees its connection; the proxy keeps serving afterwards."""
    async with FaultProxy("127.0.0.1", echo.port) as proxy:
        proxy.cut("blackhole")
        for _ in range(20):
            _, writer = await _connect(proxy)
            writer.write(b"x")
            await _close(writer)
        assert await _settle(lambda: proxy.stats.active == 0)
        proxy.heal()
        reader, writer = await _connect(proxy)
        assert await _round_trip(reader, writer, b"ok") == b"ok"
        await _close(writer)


async def test_latency_delays_each_chunk(echo: Server) -> None:
    async with FaultProxy("127.0.0.1", echo.port, latency=0.2) as proxy:
        reader, writer = await _connect(proxy)
        began = time.monotonic()
        assert await _round_trip(reader, writer, b"slow") == b"slow"
        assert time.monotonic() - began >= 0.4  # one chunk each way
        proxy.latency = 0
        began = time.monotonic()
        assert await _round_trip(reader, writer, b"fast") == b"fast"
        assert time.monotonic() - began < 0.2
        await _close(writer)
        with pytest.raises(ValueError):
            proxy.latency = -1


async def test_unreachable_target_resets_the_client() -> None:
    server = Server(lambda r, w: server.echo(r, w))
    async with server:
        port = server.port
    async with FaultProxy("127.0.0.1", port) as proxy:  # nothing listens on port any more
        reader, writer = await _connect(proxy)
        assert await _fails(reader, writer)
        await _close(writer)
        assert proxy.stats.upstream_failures == 1


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
async def test_stop_closes_every_socket_and_task(echo: Server) -> None:
    """Open, half-closed and black-holed connections: after stop() no proxy task or socket is left."""
    tasks_before = asyncio.all_tasks()
    fds_before = _open_fds()
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    clients = [await _connect(proxy) for _ in range(10)]
    for reader, writer in clients[:5]:
        assert await _round_trip(reader, writer, b"data") == b"data"
    clients[5][1].write_eof()
    proxy.cut("blackhole")
    clients.append(await _connect(proxy))
    assert await _settle(lambda: proxy.stats.active == 11)

    await proxy.stop()
    await proxy.stop()  # idempotent
    assert proxy.stats.active == 0
    for i, (reader, writer) in enumerate(clients):  # every client sees its connection end
        assert await _fails(reader, writer, write=i != 5)
        await _close(writer)
    assert await _settle(lambda: asyncio.all_tasks() == tasks_before), asyncio.all_tasks() - tasks_before
    assert await _settle(lambda: _open_fds() == fds_before), _open_fds() - fds_before
    with pytest.raises(ConnectionRefusedError):
        await _connect(proxy)


async def test_proxy_group_cuts_and_heals_together(echo: Server) -> None:
    async with FaultProxy("127.0.0.1", echo.port) as probe:  # only to find two free ports
        free = probe.port
    group = ProxyGroup.for_routes([(free, echo.port), (0, echo.port)])
    async with group:
        assert len(group) == 2 and group[0].port == free
        conns = [await _connect(p) for p in group]
        group.cut("reset")
        for reader, writer in conns:
            assert await _fails(reader, writer)
            await _close(writer)
        group.heal()
        group.set_latency(0.01)
        for proxy in group:
            reader, writer = await _connect(proxy)
            assert await _round_trip(reader, writer, b"x") == b"x"
            await _close(writer)
        assert [s.resets for s in group.stats] == [1, 1]
    with pytest.raises(OSError):
        await _connect(group[0])


async def test_cli_forwards_and_obeys_commands(echo: Server) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.devenv.tcp_proxy", "--listen", "0", "--target", f"127.0.0.1:{echo.port}",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdin is not None and proc.stdout is not None
    try:
        async with asyncio.timeout(30):
            banner = (await proc.stdout.readline()).decode()
        assert banner.startswith("proxy 127.0.0.1:"), banner
        port = int(banner.split()[1].rpartition(":")[2])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await _round_trip(reader, writer, b"via cli") == b"via cli"
        proc.stdin.write(b"reset\n")
        await proc.stdin.drain()
        async with asyncio.timeout(10):
            assert "mode=reset" in (await proc.stdout.readline()).decode()
        assert await _fails(reader, writer)
        await _close(writer)
        proc.stdin.write(b"quit\n")
        await proc.stdin.drain()
        async with asyncio.timeout(20):
            assert await proc.wait() == 0
            assert "stopped:" in (await proc.stdout.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
