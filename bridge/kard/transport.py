"""The client's default httpx transport: httpx requests to :mod:`bridge.kard.pool` on :mod:`bridge.kard.network`.

Layers, bottom up: :mod:`bridge.kard.network` is httpcore's network backend on plain asyncio sockets
(anyio's socket layer was a fifth of the bridge's CPU); :mod:`bridge.kard.pool` is the connection pool and
httpcore's HTTP/1.1 connection (h11) without the pool's and the connection's per-request overhead; here,
:class:`_LeanTransport` hands an ``httpx.Request`` to the pool as it is (no ``httpcore.Request`` built) and
returns an ``httpx.Response`` whose body closes synchronously, mapping httpcore's exceptions to httpx's
exactly as ``httpx.AsyncHTTPTransport`` does. With another httpcore release than the one the pool was
checked against, :func:`make_transport` falls back to httpcore's own pool on the same asyncio backend.

TLS (``https`` base URLs): the SSL context is built once per client (verification on, system/certifi roots
as httpx does); the handshake is asyncio's ``loop.start_tls``.
"""

from __future__ import annotations

from typing import Any

import httpcore
import httpx

from bridge.kard.network import AsyncioBackend, AsyncioStream

try:
    from bridge.kard.pool import Pool, httpx_error, origin_of
except ImportError:  # pragma: no cover - an httpcore without the internals the pool uses: httpcore's own pool
    Pool = None  # type: ignore[assignment,misc]

__all__ = ["AsyncioBackend", "AsyncioStream", "make_transport"]

#: The httpcore releases whose internals :class:`Pool` and :class:`PooledConnection` were checked against.
_POOL_TESTED_WITH = frozenset({"1.0.9"})


class _Transport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` on a given httpcore pool (httpcore's own, on :class:`AsyncioBackend`)."""

    def __init__(self, pool: httpcore.AsyncConnectionPool) -> None:
        # Not calling the parent's __init__ on purpose: it would build a second pool and an SSL
        # context (a certificate bundle load) only to throw them away. ``_pool`` is all it keeps.
        self._pool = pool


class _LeanTransport(_Transport):
    """The transport on :class:`Pool`: an httpx request goes to the pool as it is, no httpcore request built.

    ``cancel_safe``: its responses close without awaiting anything, so the client need not shield them.
    """

    cancel_safe = True
    _pool: Pool

    def __init__(self, pool: Pool) -> None:
        super().__init__(pool)
        self._origins: dict[tuple[bytes, bytes, int | None], httpcore.Origin] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send ``request``; httpcore's exceptions become httpx's, exactly as ``httpx.AsyncHTTPTransport`` maps them."""
        url = request.url
        stream = request.stream
        assert isinstance(stream, httpx.AsyncByteStream)
        try:
            key = (url.raw_scheme, url.raw_host, url.port)
            origin = self._origins.get(key)
            if origin is None:
                origin = origin_of(*key)
                if len(self._origins) >= 64:
                    self._origins.clear()
                self._origins[key] = origin
            status, headers, extensions, body = await self._pool.send(
                origin, request.method.encode("ascii"), url.raw_path, request.headers.raw, stream,
                request.extensions, request,
            )  # fmt: skip
        except Exception as exc:
            error = httpx_error(exc, request)
            if error is exc:
                raise
            raise error from exc
        return httpx.Response(status, headers=headers, stream=body, extensions=extensions)


def make_transport(*, limits: httpx.Limits, https: bool) -> httpx.AsyncHTTPTransport:
    """An HTTP/1.1 httpx transport with ``limits``, on asyncio sockets, verifying TLS for ``https``.

    With the httpcore release :class:`Pool` was checked against, the lean transport on it; with any other,
    httpcore's own pool (on the same asyncio backend).
    """
    options: dict[str, Any] = {
        "ssl_context": httpx.create_ssl_context(trust_env=False) if https else None,
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
        "http1": True,
        "http2": False,
        "retries": 0,
        "network_backend": AsyncioBackend(),
    }
    if Pool is not None and httpcore.__version__ in _POOL_TESTED_WITH:
        return _LeanTransport(Pool(**options))
    return _Transport(httpcore.AsyncConnectionPool(**options))
