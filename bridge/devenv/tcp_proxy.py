"""A fault-injecting TCP proxy for the chaos tests: cut the network between the bridge and Kafka or the API.

Why: a killed broker or a crashed sandbox is not the same fault as a broken network. ``FaultProxy`` sits
between a client and its target and, on command, either resets every connection (``cut("reset")``: RST on
both sides, new connections are reset as soon as they are accepted) or turns into a black hole
(``cut("blackhole")``: sockets stay open, bytes are read and dropped in both directions, nothing is ever
answered: only the client's own timeouts notice; new connections are accepted and go nowhere). ``heal()``
forwards again; connections that were black-holed are reset then, so their clients reconnect instead of
waiting on a stream that lost bytes. ``latency`` delays every forwarded chunk.

Each connection is one task (plus one per direction) in the proxy's own TaskGroup; ``stop()`` resets every
connection and waits for all of them, so nothing outlives it. Half-closes are forwarded (EOF on one side is
passed on with ``shutdown(SHUT_WR)`` while the other direction keeps flowing); a reset on one side resets the
other. Control methods are plain functions for the proxy's own event loop (not thread-safe).
``ProxyGroup`` drives several proxies at once (one per Kafka node, see ``KafkaCluster.proxied_routes``).

Manual use: ``python -m bridge.devenv.tcp_proxy --listen 19092 --target 127.0.0.1:9092`` then type
``reset``, ``blackhole``, ``heal``, ``latency 0.2``, ``stats`` or ``quit`` on stdin.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from types import TracebackType
from typing import Final, Literal

__all__ = ["CutMode", "FaultProxy", "ProxyGroup", "ProxyStats", "main"]

CutMode = Literal["reset", "blackhole"]
_MODES: Final[tuple[str, ...]] = ("reset", "blackhole")
_CHUNK: Final = 64 * 1024
_DESCRIPTION: Final = "A fault-injecting TCP proxy: forward, reset, black-hole, heal, add latency."
_log = logging.getLogger("bridge.devenv.tcp_proxy")


@dataclasses.dataclass(slots=True)
class ProxyStats:
    """Counters of one proxy since it was created (``FaultProxy.stats`` returns a copy).

    ``accepted`` counts every TCP connection accepted, including the ``refused`` ones (reset at once during a
    ``reset`` cut); ``resets`` counts connections reset by ``cut("reset")`` or closed by ``heal()``;
    ``upstream_failures`` connections whose target could not be reached (the client then gets a reset).
    """

    accepted: int = 0
    active: int = 0
    refused: int = 0
    resets: int = 0
    upstream_failures: int = 0
    bytes_to_target: int = 0
    bytes_to_client: int = 0
    bytes_dropped: int = 0


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close abruptly: with ``SO_LINGER`` 0 the kernel answers with RST instead of FIN. Idempotent."""
    if writer is None:
        return
    sock = writer.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    """One client connection and (unless black-holed from the start) its upstream connection."""

    __slots__ = ("blackholed", "client", "dead", "task", "upstream")

    def __init__(self, client: asyncio.StreamWriter, *, blackholed: bool) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.blackholed = blackholed
        self.dead = False
        self.task: asyncio.Task[None] | None = None

    def reset(self) -> bool:
        """RST both sides and cancel the connection's task; False if it was already reset."""
        if self.dead:
            return False
        self.dead = True
        _reset(self.client)
        _reset(self.upstream)
        if self.task is not None and self.task is not asyncio.current_task():
            self.task.cancel()  # its ``finally`` closes nothing twice: both sides are aborted already
        return True


class FaultProxy:
    """A TCP proxy ``listen_host:listen_port`` → ``target_host:target_port`` with injectable network faults.

    ``listen_port=0`` picks a free port (read ``port`` after ``start()``). Use as ``async with FaultProxy(...)
    as proxy:`` or call ``start()``/``stop()``. ``connect_timeout`` bounds the connection to the target;
    ``close_timeout`` how long a finished connection may take to flush before it is reset.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        latency: float = 0.0,
        connect_timeout: float = 10.0,
        close_timeout: float = 5.0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self.latency = latency
        self.connect_timeout = connect_timeout
        self.close_timeout = close_timeout
        self._mode: Literal["open", "reset", "blackhole"] = "open"
        self._server: asyncio.Server | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._closing = False
        self._port = listen_port
        self._conns: set[_Connection] = set()
        self._stats = ProxyStats()

    def __repr__(self) -> str:
        return f"FaultProxy({self.address} -> {self.target_host}:{self.target_port}, mode={self._mode})"

    # -- control -------------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (the one asked for, or the one picked once started)."""
        return self._port

    @property
    def address(self) -> str:
        """``listen_host:port``: what clients connect to."""
        return f"{self.listen_host}:{self._port}"

    @property
    def mode(self) -> Literal["open", "reset", "blackhole"]:
        """``open`` while forwarding, else the current cut."""
        return self._mode

    @property
    def latency(self) -> float:
        """Seconds added before every forwarded chunk (settable at any time; 0 disables)."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError(f"latency must be >= 0, got {seconds}")
        self._latency = float(seconds)

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return dataclasses.replace(self._stats, active=len(self._conns))

    def cut(self, mode: CutMode = "reset") -> None:
        """Inject a network fault until ``heal()``.

        ``reset``: every open connection gets RST on both sides; new connections are reset as soon as they are
        accepted (the client's connect may succeed, its first read or write fails). ``blackhole``: open
        connections stay open but nothing more is forwarded in either direction (EOFs neither); new connections
        are accepted and never reach the target.
        """
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        self._mode = mode
        for conn in list(self._conns):
            if mode == "reset":
                self._stats.resets += conn.reset()
            else:
                conn.blackholed = True
        _log.info("proxy %s cut: %s", self.address, mode)

    def heal(self) -> None:
        """Forward new connections again; black-holed connections are reset so their clients reconnect."""
        self._mode = "open"
        for conn in list(self._conns):
            if conn.blackholed:
                self._stats.resets += conn.reset()
        _log.info("proxy %s healed", self.address)

    # -- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> FaultProxy:
        """Listen (``SO_REUSEADDR``); raises ``OSError`` when the port is taken."""
        if self._tg is not None:
            raise RuntimeError("proxy already started")
        self._closing = False
        tg = asyncio.TaskGroup()
        await tg.__aenter__()
        self._tg = tg
        try:
            self._server = await asyncio.start_server(
                self._accepted, self.listen_host, self._listen_port, reuse_address=True, backlog=512
            )
        except BaseException:
            self._tg = None
            await tg.__aexit__(None, None, None)
            raise
        self._port = int(self._server.sockets[0].getsockname()[1])
        _log.info("proxy %s -> %s:%d started", self.address, self.target_host, self.target_port)
        return self

    async def stop(self) -> None:
        """Stop listening, reset every connection and wait for their tasks (idempotent)."""
        self._closing = True
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()
        for conn in list(self._conns):
            conn.reset()
        tg, self._tg = self._tg, None
        if tg is not None:
            await tg.__aexit__(None, None, None)
        self._conns.clear()
        await asyncio.sleep(0)  # aborted transports close their sockets in a callback

    async def __aenter__(self) -> FaultProxy:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    # -- forwarding ----------------------------------------------------------------------------------

    def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """``start_server`` callback (synchronous: the connection's task goes into our TaskGroup)."""
        self._stats.accepted += 1
        if self._tg is None or self._closing or self._mode == "reset":
            self._stats.refused += 1
            _reset(writer)
            return
        conn = _Connection(writer, blackholed=self._mode == "blackhole")
        self._conns.add(conn)
        conn.task = self._tg.create_task(self._serve(conn, reader))
        conn.task.add_done_callback(lambda _: self._conns.discard(conn))  # even if cancelled before it ran

    async def _serve(self, conn: _Connection, reader: asyncio.StreamReader) -> None:
        try:
            if conn.blackholed:  # accepted during a black hole: never reaches the target
                await self._pump(conn, reader, None, to_target=True)
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    up_reader, conn.upstream = await asyncio.open_connection(self.target_host, self.target_port)
            except OSError as exc:  # refused, unreachable, or timed out (TimeoutError is an OSError)
                self._stats.upstream_failures += 1
                _log.debug("proxy %s: target unreachable: %r", self.address, exc)
                conn.reset()
                return
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._pump(conn, reader, conn.upstream, to_target=True))
                tasks.create_task(self._pump(conn, up_reader, conn.client, to_target=False))
        except Exception:  # noqa: BLE001 - a bug must not cancel the proxy's TaskGroup (nor the task that started it)
            _log.exception("proxy %s: connection failed", self.address)
            conn.reset()
        finally:
            await self._finish(conn)

    async def _pump(
        self, conn: _Connection, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None, *, to_target: bool
    ) -> None:
        """Copy ``src`` to ``dst`` chunk by chunk; drop while black-holed; pass EOF on as a half-close."""
        stats = self._stats
        try:
            while data := await src.read(_CHUNK):
                if self._latency > 0 and not conn.blackholed:
                    await asyncio.sleep(self._latency)
                if conn.blackholed or conn.dead or dst is None:
                    stats.bytes_dropped += len(data)
                    continue
                dst.write(data)
                if to_target:
                    stats.bytes_to_target += len(data)
                else:
                    stats.bytes_to_client += len(data)
                await dst.drain()
            if not (conn.blackholed or conn.dead or dst is None) and dst.can_write_eof():
                dst.write_eof()
        except OSError:  # a reset (or broken pipe) on either side resets the other side too
            conn.reset()

    async def _finish(self, conn: _Connection) -> None:
        """Close both sides: gracefully after a normal end (bounded by ``close_timeout``), else by RST."""
        writers = [w for w in (conn.client, conn.upstream) if w is not None]
        try:
            if not conn.dead:
                for writer in writers:
                    writer.close()
                async with asyncio.timeout(self.close_timeout):
                    for writer in writers:
                        with contextlib.suppress(OSError):
                            await writer.wait_closed()
        except TimeoutError:
            conn.reset()
        finally:
            for writer in writers:
                writer.transport.abort()  # a no-op once closed; never leaves a socket behind


class ProxyGroup:
    """Several ``FaultProxy`` objects started, cut, healed and stopped together; indexable like a list."""

    def __init__(self, proxies: Iterable[FaultProxy]) -> None:
        self.proxies: tuple[FaultProxy, ...] = tuple(proxies)

    @classmethod
    def for_routes(
        cls,
        routes: Iterable[tuple[int, int]],
        *,
        host: str = "127.0.0.1",
        latency: float = 0.0,
        connect_timeout: float = 10.0,
    ) -> ProxyGroup:
        """One proxy per ``(listen_port, target_port)`` route, both on ``host``; e.g. ``cluster.proxied_routes``."""
        return cls(
            FaultProxy(host, target, host, listen, latency=latency, connect_timeout=connect_timeout)
            for listen, target in routes
        )

    def __len__(self) -> int:
        return len(self.proxies)

    def __iter__(self) -> Iterator[FaultProxy]:
        return iter(self.proxies)

    def __getitem__(self, index: int) -> FaultProxy:
        return self.proxies[index]

    async def start(self) -> ProxyGroup:
        """Start every proxy; if one fails, the ones started are stopped and the error is raised."""
        try:
            for proxy in self.proxies:
                await proxy.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self) -> None:
        """Stop every proxy (idempotent)."""
        for proxy in self.proxies:
            await proxy.stop()

    def cut(self, mode: CutMode = "reset") -> None:
        """``cut(mode)`` on every proxy."""
        for proxy in self.proxies:
            proxy.cut(mode)

    def heal(self) -> None:
        """``heal()`` on every proxy."""
        for proxy in self.proxies:
            proxy.heal()

    def set_latency(self, seconds: float) -> None:
        """Set ``latency`` on every proxy."""
        for proxy in self.proxies:
            proxy.latency = seconds

    @property
    def stats(self) -> list[ProxyStats]:
        """Each proxy's counters, in order."""
        return [proxy.stats for proxy in self.proxies]

    async def __aenter__(self) -> ProxyGroup:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


# -- command line ------------------------------------------------------------------------------------


def _target(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _command(proxy: FaultProxy, line: str, stop: asyncio.Event) -> None:
    words = line.split()
    try:
        match words:
            case []:
                return
            case ["reset" | "blackhole" as mode]:
                proxy.cut(mode)
            case ["heal"]:
                proxy.heal()
            case ["latency", seconds]:
                proxy.latency = float(seconds)
            case ["stats"]:
                pass
            case ["quit" | "exit"]:
                stop.set()
                return
            case _:
                print("commands: reset | blackhole | heal | latency SECONDS | stats | quit", flush=True)
                return
    except ValueError as exc:
        print(f"error: {exc}", flush=True)
        return
    print(f"mode={proxy.mode} latency={proxy.latency} {proxy.stats}", flush=True)


def _read_stdin(loop: asyncio.AbstractEventLoop, handle: Callable[[str], None]) -> None:
    """Runs in a daemon thread: hands every stdin line to the loop (a blocked read never delays the exit)."""
    for line in sys.stdin:
        with contextlib.suppress(RuntimeError):  # the loop is closed: we are exiting
            loop.call_soon_threadsafe(handle, line)


async def _run_cli(args: argparse.Namespace) -> int:
    host, port = args.target
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with FaultProxy(host, port, args.listen_host, args.listen, latency=args.latency) as proxy:
        print(f"proxy {proxy.address} -> {host}:{port}; stdin commands: reset, blackhole, heal, "
              "latency SECONDS, stats, quit", flush=True)  # fmt: skip
        reader = threading.Thread(target=_read_stdin, args=(loop, lambda line: _command(proxy, line, stop)))
        reader.daemon = True
        reader.start()
        await stop.wait()
    print(f"stopped: {proxy.stats}", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.devenv.tcp_proxy --listen PORT --target HOST:PORT [--listen-host H] [--latency S]``."""
    parser = argparse.ArgumentParser(prog="python -m bridge.devenv.tcp_proxy", description=_DESCRIPTION)
    parser.add_argument("--listen", type=int, required=True, metavar="PORT", help="port to listen on (0: any)")
    parser.add_argument("--target", type=_target, required=True, metavar="HOST:PORT", help="where to forward")
    parser.add_argument("--listen-host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added per forwarded chunk")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return asyncio.run(_run_cli(args))


if __name__ == "__main__":
    sys.exit(main())
