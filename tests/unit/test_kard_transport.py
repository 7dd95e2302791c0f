"""Tests for ``bridge.kard.network`` (the asyncio stream, its errors, TLS) and ``bridge.kard.transport``."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpcore
import httpx
import pytest

from bridge.kard import network as kard_network
from bridge.kard.pool import Pool
from bridge.kard.transport import AsyncioBackend, AsyncioStream, make_transport

# -- a stream over a socket pair (no listening socket, no connect) -------------------------------------------


@contextlib.asynccontextmanager
async def stream_pair() -> AsyncIterator[tuple[AsyncioStream, socket.socket]]:
    """A client :class:`AsyncioStream` on one end of a socket pair, and the raw (non-blocking) other end."""
    client_sock, server_sock = socket.socketpair()
    server_sock.setblocking(False)
    transport, protocol = await asyncio.get_running_loop().create_connection(
        kard_network._StreamProtocol, sock=client_sock
    )
    stream = AsyncioStream(transport, protocol)
    try:
        yield stream, server_sock
    finally:
        await stream.aclose()
        server_sock.close()


async def recv_some(sock: socket.socket, n: int = 65536) -> bytes:
    """One ``recv`` on the raw end, waiting until something (or EOF) is there."""
    return await asyncio.get_running_loop().sock_recv(sock, n)


async def test_a_request_is_sent_in_one_piece_when_the_answer_is_read() -> None:
    """Headers and body written separately leave together, with the read that waits for the answer."""
    async with stream_pair() as (stream, server):
        await stream.write(b"POST / HTTP/1.1\r\n\r\n")
        await stream.write(b"{}")
        reading = asyncio.ensure_future(stream.read(1024, timeout=5))
        assert await recv_some(server) == b"POST / HTTP/1.1\r\n\r\n{}"
        server.send(b"HTTP/1.1 200 OK\r\n\r\n")
        assert await reading == b"HTTP/1.1 200 OK\r\n\r\n"


async def test_reads_return_at_most_max_bytes_and_keep_the_rest() -> None:
    """A read returns up to ``max_bytes``; the next read returns what was left."""
    async with stream_pair() as (stream, server):
        server.send(b"abcdef")
        assert await stream.read(4, timeout=5) == b"abcd"
        assert await stream.read(4, timeout=5) == b"ef"


async def test_a_large_answer_arrives_intact() -> None:
    """Megabytes in, in many reads: every byte in order (reading pauses and resumes on the way)."""
    payload = bytes(random.Random(1).randbytes(3 * 1024 * 1024))
    async with stream_pair() as (stream, server):
        sending = asyncio.ensure_future(asyncio.get_running_loop().sock_sendall(server, payload))
        received = bytearray()
        while len(received) < len(payload):
            received += await stream.read(65536, timeout=5)
        await sending
        assert bytes(received) == payload


async def test_a_large_request_is_sent_at_once_and_intact() -> None:
    """A body above the queueing threshold goes out without waiting for a read, all of it."""
    payload = b"x" * (1024 * 1024)
    async with stream_pair() as (stream, server):
        writing = asyncio.ensure_future(stream.write(payload, timeout=5))
        received = bytearray()
        while len(received) < len(payload):
            received += await recv_some(server)
        await writing
        assert bytes(received) == payload


async def test_a_large_request_after_its_headers_arrives_intact_and_in_order() -> None:
    """Headers then a body above the threshold: handed to the transport piece by piece, received in order."""
    payload = bytes(random.Random(2).randbytes(512 * 1024))
    async with stream_pair() as (stream, server):
        await stream.write(b"POST / HTTP/1.1\r\n\r\n")
        writing = asyncio.ensure_future(stream.write(payload, timeout=5))
        received = bytearray()
        while len(received) < len(payload) + 19:
            received += await recv_some(server)
        await writing
        assert bytes(received) == b"POST / HTTP/1.1\r\n\r\n" + payload


async def test_read_times_out_when_nothing_arrives() -> None:
    """No answer within the read timeout is ``httpcore.ReadTimeout``."""
    async with stream_pair() as (stream, _server):
        with pytest.raises(httpcore.ReadTimeout):
            await stream.read(1024, timeout=0.05)


async def test_write_times_out_when_the_peer_does_not_read() -> None:
    """A large body the peer never reads is ``httpcore.WriteTimeout`` after the write timeout."""
    async with stream_pair() as (stream, _server):
        with pytest.raises(httpcore.WriteTimeout):
            await stream.write(b"x" * (16 * 1024 * 1024), timeout=0.1)


async def test_end_of_stream_reads_empty_and_makes_the_connection_readable() -> None:
    """A peer that closes makes reads return ``b""`` and ``is_readable`` true (the pool drops such connections)."""
    async with stream_pair() as (stream, server):
        assert stream.get_extra_info("is_readable") is False
        server.close()
        assert await stream.read(1024, timeout=5) == b""
        assert stream.get_extra_info("is_readable") is True


async def test_unread_data_on_an_idle_connection_makes_it_readable() -> None:
    """Bytes the peer sent while the connection was idle make ``is_readable`` true."""
    async with stream_pair() as (stream, server):
        server.send(b"unexpected")
        for _ in range(100):
            if stream.get_extra_info("is_readable"):
                break
            await asyncio.sleep(0.01)
        assert stream.get_extra_info("is_readable") is True


async def test_a_reset_connection_is_a_read_error() -> None:
    """A connection reset by the peer is ``httpcore.ReadError`` on read and ``WriteError`` on write."""
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as listener:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=5)
        accepted, _ = listener.accept()
        accepted.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        accepted.close()  # linger 0: RST
        with pytest.raises(httpcore.ReadError):
            await stream.read(1024, timeout=5)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x")
        await stream.aclose()


async def test_a_closed_stream_refuses_reads_and_writes() -> None:
    """After ``aclose``, reads are ``ReadError`` and writes ``WriteError``."""
    async with stream_pair() as (stream, _server):
        await stream.aclose()
        with pytest.raises(httpcore.ReadError):
            await stream.read(1024, timeout=1)
        with pytest.raises(httpcore.WriteError):
            await stream.write(b"x", timeout=1)


async def test_extra_info_names_the_addresses_and_socket() -> None:
    """``client_addr``, ``server_addr`` and ``socket`` come from the transport; unknown keys are None."""
    async with stream_pair() as (stream, _server):
        assert stream.get_extra_info("socket") is not None
        assert stream.get_extra_info("ssl_object") is None
        assert stream.get_extra_info("no-such-key") is None


# -- the backend --------------------------------------------------------------------------------------------


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_a_refused_connection_is_a_connect_error() -> None:
    """Nothing listening is ``httpcore.ConnectError``."""
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_tcp("127.0.0.1", _closed_port(), timeout=5)


async def test_a_slow_connect_is_a_connect_timeout() -> None:
    """A connect that does not finish within its timeout is ``httpcore.ConnectTimeout``."""
    listener = socket.create_server(("127.0.0.1", 0))
    with contextlib.closing(listener), pytest.raises(httpcore.ConnectTimeout):
        await AsyncioBackend().connect_tcp("127.0.0.1", listener.getsockname()[1], timeout=0)


async def test_socket_options_are_applied() -> None:
    """``socket_options`` are set on the connected socket."""
    with contextlib.closing(socket.create_server(("127.0.0.1", 0))) as listener:
        options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", listener.getsockname()[1], socket_options=options)
        try:
            assert stream.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        finally:
            await stream.aclose()


async def test_unix_sockets_connect_and_refuse_like_tcp(tmp_path: Path) -> None:
    """A Unix socket path connects; a missing one is ``httpcore.ConnectError``."""
    path = str(tmp_path / "api.sock")
    server = await asyncio.start_unix_server(lambda r, w: w.close(), path)
    async with server:
        stream = await AsyncioBackend().connect_unix_socket(path, timeout=5)
        await stream.aclose()
    with pytest.raises(httpcore.ConnectError):
        await AsyncioBackend().connect_unix_socket(str(tmp_path / "missing.sock"), timeout=5)


# -- TLS --------------------------------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    """Server side: echoes what it receives."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_tls_upgrade_verifies_the_server_and_carries_data(tmp_path: Path) -> None:
    """``start_tls`` verifies the certificate and host name, exposes ``ssl_object``, and data flows both ways."""
    from bridge.devenv.kafka_security import make_test_pki

    pki = make_test_pki(tmp_path / "tls")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.directory / "server.pem", pki.directory / "server.key")
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_file))
    loop = asyncio.get_running_loop()
    for hostname, ok in (("localhost", True), ("not-this-host.example", False)):
        client_sock, server_sock = socket.socketpair()
        # The server side completes its handshake only once the client starts one: run it alongside.
        accepting = asyncio.ensure_future(loop.connect_accepted_socket(_Echo, server_sock, ssl=server_ctx))
        transport, protocol = await loop.create_connection(kard_network._StreamProtocol, sock=client_sock)
        plain = AsyncioStream(transport, protocol)
        try:
            if not ok:
                with pytest.raises(httpcore.ConnectError):
                    await plain.start_tls(client_ctx, server_hostname=hostname, timeout=5)
                continue
            secure = await plain.start_tls(client_ctx, server_hostname=hostname, timeout=5)
            assert secure.get_extra_info("ssl_object") is not None
            await secure.write(b"ping")
            assert await secure.read(1024, timeout=5) == b"ping"
            await secure.aclose()
        finally:
            await plain.aclose()
            with contextlib.suppress(Exception):
                server_transport, _ = await asyncio.wait_for(accepting, 5)
                server_transport.abort()
            accepting.cancel()
            server_sock.close()


# -- through httpx: keep-alive and a server that closes idle connections -------------------------------------


async def test_requests_reuse_a_connection_and_survive_a_server_closing_it() -> None:
    """Keep-alive reuses one connection; when the server closes it while idle, the next request opens another."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        for _ in range(2):  # two requests per connection, then close it (while the client thinks it idle)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4, keepalive_expiry=30)
    async with server, httpx.AsyncClient(transport=make_transport(limits=limits, https=False)) as client:
        for _ in range(6):
            response = await client.post(f"http://127.0.0.1:{port}/v2/x", content=b"[1]")
            assert (response.status_code, response.content) == (202, b"{}")
            await asyncio.sleep(0.05)  # the server's close reaches the client while the connection is idle
    assert connections == 3


# -- the pool (its behaviour: tests/unit/test_kard_pool.py) ----------------------------------------------------


def test_the_override_is_used_only_with_the_httpcore_it_was_checked_against(monkeypatch: pytest.MonkeyPatch) -> None:
    """A different httpcore release gets httpcore's own pool (and a transport the client shields)."""
    limits = httpx.Limits(max_connections=2, max_keepalive_connections=2)
    assert type(make_transport(limits=limits, https=False)._pool) is Pool
    assert getattr(make_transport(limits=limits, https=False), "cancel_safe", False) is True
    monkeypatch.setattr(httpcore, "__version__", "9.9.9")
    assert type(make_transport(limits=limits, https=False)._pool) is httpcore.AsyncConnectionPool
    assert getattr(make_transport(limits=limits, https=False), "cancel_safe", False) is False


def test_pool_settings_come_from_the_limits_and_https_gets_a_verifying_context() -> None:
    """Pool size, keep-alive settings and TLS verification are taken from the arguments."""
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=3, keepalive_expiry=12.5)
    pool = make_transport(limits=limits, https=True)._pool
    assert (pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry) == (7, 3, 12.5)
    assert pool._ssl_context is not None and pool._ssl_context.verify_mode is ssl.CERT_REQUIRED
    assert make_transport(limits=limits, https=False)._pool._ssl_context is None
