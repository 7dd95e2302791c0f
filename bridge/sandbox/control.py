"""Python clients for the sandbox control API (``/_sandbox/``), for tests, benchmarks and the demo.

:class:`SandboxControl` is synchronous (httpx.Client); :class:`AsyncSandboxControl` has the same methods as
coroutines. Both raise ``httpx.HTTPStatusError`` when the sandbox refuses a call (e.g. an invalid fault
config: the response body lists the pydantic errors). Shapes are documented in :mod:`.control_api`.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import TracebackType
from typing import Any, Self

import httpx
import orjson

from bridge.sandbox.fault_config import FaultConfig

__all__ = ["AsyncSandboxControl", "SandboxControl"]

_PAGE = 10_000


def _faults_json(config: FaultConfig | dict[str, Any] | None, rules: tuple[dict[str, Any], ...]) -> Any:
    if isinstance(config, FaultConfig):
        return config.model_dump(mode="json", exclude_none=True)
    if rules:
        base = dict(config or {})
        return {"seed": base.get("seed"), "rules": [*base.get("rules", []), *rules]}
    return config or {}


def _query(endpoint: str | None, offset: int = 0, limit: int | None = None, **extra: str) -> dict[str, Any]:
    params: dict[str, Any] = {"offset": offset, **extra}
    if endpoint is not None:
        params["endpoint"] = endpoint
    if limit is not None:
        params["limit"] = limit
    return params


class SandboxControl:
    """Synchronous control-API client: ``SandboxControl("http://127.0.0.1:8080")``."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(base_url=self.base_url + "/_sandbox/", timeout=timeout, trust_env=False)

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        content = orjson.dumps(json) if json is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        response = self._client.request(method, path, content=content, params=params, headers=headers)
        response.raise_for_status()
        return orjson.loads(response.content) if response.content else None

    def health(self) -> bool:
        """True when the sandbox answers its health check."""
        try:
            return bool(self._call("GET", "health")["status"] == "ok")
        except httpx.HTTPError:
            return False

    def set_faults(self, config: FaultConfig | dict[str, Any] | None = None, *rules: dict[str, Any]) -> dict[str, Any]:
        """Replace the fault configuration: a config (or single-rule) dict, and/or rules as extra arguments."""
        result: dict[str, Any] = self._call("POST", "faults", json=_faults_json(config, rules))
        return result

    def faults(self) -> dict[str, Any]:
        """The current fault configuration, per-rule state and injected counts."""
        result: dict[str, Any] = self._call("GET", "faults")
        return result

    def clear_faults(self) -> None:
        """Remove every fault."""
        self._call("DELETE", "faults")

    def reset(self, *, revoke_tokens: bool = False, keep_faults: bool = False) -> None:
        """Forget received items, counters, users, uploads and (unless ``keep_faults``) faults."""
        self._call("POST", "reset", json={"revoke_tokens": revoke_tokens, "keep_faults": keep_faults})

    def received(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Every accepted item (optionally of one endpoint), in arrival order, fetched page by page."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._call("GET", "received", params=_query(endpoint, len(items), _PAGE))
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items

    def iter_received(self, endpoint: str | None = None) -> Iterator[dict[str, Any]]:
        """Accepted items streamed as JSON lines (for large benchmark runs)."""
        params = _query(endpoint, format="jsonl")
        with self._client.stream("GET", "received", params=params) as response:
            response.raise_for_status()
            for line in response.iter_lines():
                if line:
                    yield orjson.loads(line)

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The request log (newest 200k requests), oldest first."""
        items: list[dict[str, Any]] = []
        while True:
            page = self._call("GET", "requests", params=_query(endpoint, len(items), _PAGE))
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items

    def stats(self) -> dict[str, Any]:
        """Every counter: requests by endpoint and status, items, duplicates, in-flight, tokens, faults."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def duplicates(self, endpoint: str | None = None) -> dict[str, dict[str, int]]:
        """``{endpoint: {key: count}}`` for keys accepted more than once."""
        result: dict[str, dict[str, int]] = self._call("GET", "duplicates", params=_query(endpoint))
        return result

    def expire_tokens(self) -> int:
        """Expire every issued token now; returns how many there were."""
        return int(self._call("POST", "tokens/expire")["expired"])

    def config(self, **changes: Any) -> dict[str, Any]:
        """Read the run-time config, or change ``token_ttl`` / ``strict`` when given."""
        result: dict[str, Any] = self._call("POST", "config", json=changes) if changes else self._call("GET", "config")
        return result

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncSandboxControl:
    """The asynchronous twin of :class:`SandboxControl` (same methods, awaited)."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.AsyncClient(base_url=self.base_url + "/_sandbox/", timeout=timeout, trust_env=False)

    async def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        content = orjson.dumps(json) if json is not None else None
        headers = {"Content-Type": "application/json"} if content is not None else None
        response = await self._client.request(method, path, content=content, params=params, headers=headers)
        response.raise_for_status()
        return orjson.loads(response.content) if response.content else None

    async def set_faults(
        self, config: FaultConfig | dict[str, Any] | None = None, *rules: dict[str, Any]
    ) -> dict[str, Any]:
        """See :meth:`SandboxControl.set_faults`."""
        result: dict[str, Any] = await self._call("POST", "faults", json=_faults_json(config, rules))
        return result

    async def clear_faults(self) -> None:
        """See :meth:`SandboxControl.clear_faults`."""
        await self._call("DELETE", "faults")

    async def reset(self, *, revoke_tokens: bool = False, keep_faults: bool = False) -> None:
        """See :meth:`SandboxControl.reset`."""
        await self._call("POST", "reset", json={"revoke_tokens": revoke_tokens, "keep_faults": keep_faults})

    async def received(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """See :meth:`SandboxControl.received`."""
        items: list[dict[str, Any]] = []
        while True:
            page = await self._call("GET", "received", params=_query(endpoint, len(items), _PAGE))
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items

    async def stats(self) -> dict[str, Any]:
        """See :meth:`SandboxControl.stats`."""
        result: dict[str, Any] = await self._call("GET", "stats")
        return result

    async def duplicates(self, endpoint: str | None = None) -> dict[str, dict[str, int]]:
        """See :meth:`SandboxControl.duplicates`."""
        result: dict[str, dict[str, int]] = await self._call("GET", "duplicates", params=_query(endpoint))
        return result

    async def expire_tokens(self) -> int:
        """See :meth:`SandboxControl.expire_tokens`."""
        return int((await self._call("POST", "tokens/expire"))["expired"])

    async def aclose(self) -> None:
        """Close the HTTP client."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()
