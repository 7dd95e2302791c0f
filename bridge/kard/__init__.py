"""The runtime Kard API client (httpx), kept apart so that only this package talks HTTP to Kard.

* :mod:`~bridge.kard.client`: ``KardClient`` (one pooled ``httpx.AsyncClient``, ``send_batch``, ``ping``)
  and the only translation of httpx exceptions into bridge errors.
* :mod:`~bridge.kard.auth`: ``KardAuth``, the OAuth client-credentials ``httpx.Auth`` flow.
* :mod:`~bridge.kard.responses`: pure classification of a response into per-item outcomes.
* :mod:`~bridge.kard.headers`: ``Retry-After`` / ``X-RateLimit-Reset`` parsing.
* :mod:`~bridge.kard.transport`: the client's default httpx transport, on :mod:`~bridge.kard.pool` (the
  connection pool, httpcore's HTTP/1.1 connection) and :mod:`~bridge.kard.network` (asyncio sockets).

The official SDK (``kard``) is a test-only oracle and is never imported here.
"""

from __future__ import annotations

from bridge.kard.auth import KardAuth, KardAuthStatistics
from bridge.kard.client import KardClient, KardClientConfig, KardClientStatistics
from bridge.kard.headers import parse_rate_limit_reset, parse_retry_after, retry_after_from_headers
from bridge.kard.responses import (
    ACCEPTED,
    BISECT,
    NOT_ATTEMPTED,
    UNCONFIRMED,
    BatchResponse,
    ItemOutcome,
    OutcomeKind,
    classify_response,
)

__all__ = [
    "ACCEPTED",
    "BISECT",
    "NOT_ATTEMPTED",
    "UNCONFIRMED",
    "BatchResponse",
    "ItemOutcome",
    "KardAuth",
    "KardAuthStatistics",
    "KardClient",
    "KardClientConfig",
    "KardClientStatistics",
    "OutcomeKind",
    "classify_response",
    "parse_rate_limit_reset",
    "parse_retry_after",
    "retry_after_from_headers",
]
