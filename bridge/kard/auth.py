"""Kard OAuth client credentials as an ``httpx.Auth``: one cached token, refreshed early and once on 401.

Why our own flow rather than the SDK's (CONTRACT.md §2.2): the SDK reads a wall clock, ignores 401s (it
keeps sending a revoked token until its computed expiry) and uses a separate HTTP client for token calls.
Here, following PITFALLS §6.2:

* The token comes from ``POST v2/auth/token`` with a JSON body ``{"client_id", "client_secret"}``
  (snake_case, no ``Authorization`` header), sent through the *same* ``httpx.AsyncClient`` as the API
  calls, with ``auth=None`` so the request does not recurse into this flow.
* It is cached and replaced ``refresh_skew`` seconds before ``expires_in`` runs out, measured on a
  monotonic clock from the moment the token request *started*. For short-lived tokens the skew is
  limited to half the lifetime, so that a 60 s token is not "expired on arrival" (the SDK's quirk).
* Single flight: an ``asyncio.Lock`` with a double check, so N callers at expiry cause one token request.
* A 401 from the API replaces the token once (unless another caller already did) and retries the request
  once; a second 401 raises ``AuthError``. The first 401's body is read before the refresh so that its
  connection goes back to the pool: with every pool slot holding a 401, the token request would
  otherwise wait for a slot that never frees.
* Token endpoint failures: 408/429/5xx and malformed 2xx → ``TransientDeliveryError``; any other status
  (bad credentials) → ``AuthError``. Transport errors propagate as httpx exceptions and are translated by
  the client's one translation context manager (``bridge/kard/client.py``), which wraps the whole send.

The secret and the tokens never appear in a log line, a ``repr`` or an exception message.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import httpx
import orjson
import structlog
from pydantic import SecretStr

from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.headers import retry_after_from_headers
from bridge.kard.responses import read_capped

__all__ = ["TOKEN_PATH", "KardAuth", "KardAuthStatistics"]

TOKEN_PATH = "v2/auth/token"  # noqa: S105 (a URL path, not a password)
_TOKEN_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}
_MAX_TOKEN_BODY = 64 * 1024

_log = structlog.get_logger()


class KardAuthStatistics(NamedTuple):
    """Counters for metrics.

    Attributes:
        token_refreshes: tokens obtained (the first one included).
        token_failures: token requests that produced no token (status, malformed body, transport, cancel).
        unauthorized_retries: API requests answered 401 and retried with a new token.
    """

    token_refreshes: int
    token_failures: int
    unauthorized_retries: int


@dataclass(frozen=True, slots=True)
class _Token:
    value: str = field(repr=False)
    refresh_at: float  # monotonic seconds


def _parse_token(body: bytes) -> tuple[str, float] | None:
    """``(access_token, expires_in)`` from a token response, or None if it is not usable."""
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(doc, dict):
        return None
    value, expires_in = doc.get("access_token"), doc.get("expires_in")
    header_safe = isinstance(value, str) and value.isascii() and value.isprintable() and " " not in value
    if not (header_safe and value):
        return None
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or not 0 < expires_in < 1e9:
        return None
    return value, float(expires_in)


class KardAuth(httpx.Auth):
    """Bearer-token auth for ``httpx.AsyncClient`` requests to the Kard API (async only).

    Args:
        http: the client used for token requests (the same one that sends the API calls).
        client_id: the OAuth client id.
        client_secret: the OAuth client secret; only unwrapped to build the token request body.
        refresh_skew: seconds before expiry at which a cached token is replaced (at most half its lifetime).
        token_path: the token endpoint, relative to the client's base URL.
        clock: monotonic seconds (injected in tests).
        wall_clock: epoch seconds, for ``Retry-After`` dates on token endpoint failures.
    """

    def __init__(
        self,
        *,
        http: httpx.AsyncClient,
        client_id: str,
        client_secret: SecretStr,
        refresh_skew: float = 60.0,
        token_path: str = TOKEN_PATH,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._client_id = client_id
        self._client_secret = client_secret
        self._refresh_skew = refresh_skew
        self._token_path = token_path
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = asyncio.Lock()
        self._token: _Token | None = None
        self._refreshes = 0
        self._failures = 0
        self._unauthorized_retries = 0

    def __repr__(self) -> str:
        state = "cached" if self._token is not None else "none"
        return f"KardAuth(client_id={self._client_id!r}, token={state})"

    def statistics(self) -> KardAuthStatistics:
        """Token counters for the metrics layer."""
        return KardAuthStatistics(self._refreshes, self._failures, self._unauthorized_retries)

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        """Not supported: the bridge is asyncio only, and the token cache is guarded by an asyncio lock."""
        raise TypeError("KardAuth works with httpx.AsyncClient only")

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """Send with a valid token; on 401, replace the token once and retry once.

        Raises:
            AuthError: the retried request was refused (401) again, or the token endpoint refused us.
            TransientDeliveryError: the token endpoint failed in a way worth retrying.
        """
        token = await self._valid_token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code != 401:
            return
        await response.aread()  # frees the connection before the token request needs one (see module doc)
        self._unauthorized_retries += 1
        _log.warning("kard_token_rejected", action="refresh_and_retry_once")
        token = await self._replace(token)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code == 401:
            _log.error("kard_credentials_refused", status=401)
            raise AuthError("Kard API refused a freshly issued access token (HTTP 401 twice)", status=401)

    async def _valid_token(self) -> _Token:
        token = self._token
        if token is not None and self._clock() < token.refresh_at:
            return token
        async with self._lock:
            token = self._token  # double check: another caller may have refreshed while we waited
            if token is not None and self._clock() < token.refresh_at:
                return token
            token = await self._fetch()
            self._token = token
            return token

    async def _replace(self, stale: _Token) -> _Token:
        async with self._lock:
            current = self._token
            if current is not None and current is not stale:  # replaced while we waited: use that one
                return current
            self._token = None
            token = await self._fetch()
            self._token = token
            return token

    async def _fetch(self) -> _Token:
        started = self._clock()
        body = orjson.dumps({"client_id": self._client_id, "client_secret": self._client_secret.get_secret_value()})
        fetched = False
        try:
            async with self._http.stream(
                "POST", self._token_path, content=body, headers=_TOKEN_HEADERS, auth=None
            ) as response:
                raw, _ = await read_capped(response, _MAX_TOKEN_BODY)
            token = self._token_from(response.status_code, response.headers, raw, started)
            fetched = True
            return token
        finally:
            if not fetched:
                self._failures += 1

    def _token_from(self, status: int, headers: httpx.Headers, raw: bytes, started: float) -> _Token:
        if 200 <= status <= 299:
            parsed = _parse_token(raw)
            if parsed is None:
                _log.warning("kard_token_fetch_failed", status=status, reason="malformed_token_response")
                raise TransientDeliveryError("Kard token endpoint returned no usable token", status=status)
            value, expires_in = parsed
            lifetime = max(expires_in - self._refresh_skew, expires_in / 2)
            self._refreshes += 1
            _log.info("kard_token_refreshed", expires_in=expires_in, refresh_in=round(lifetime, 3))
            return _Token(value, started + lifetime)
        _log.warning("kard_token_fetch_failed", status=status)
        if status in (408, 429) or status >= 500:
            raise TransientDeliveryError(
                f"Kard token endpoint answered HTTP {status}",
                status=status,
                retry_after=retry_after_from_headers(headers, now=self._wall_clock()),
            )
        raise AuthError(f"Kard token endpoint refused the client credentials (HTTP {status})", status=status)
