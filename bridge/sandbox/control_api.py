"""The sandbox's control API under ``/_sandbox/``: faults, reset, inspection. No auth; never faulted.

=========================  ==================================================================================
``GET  /_sandbox/health``   ``{"status": "ok"}``
``GET  /_sandbox/faults``   the fault config (seed filled in) + ``state`` per rule + ``injected`` counts
``POST /_sandbox/faults``   replace the config (JSON of :mod:`.fault_config`); 400 with the pydantic errors
``DELETE /_sandbox/faults`` no faults
``POST /_sandbox/reset``    forget received items, counters, users, uploads and faults; body (optional)
                            ``{"revoke_tokens": false, "keep_faults": false}``
``GET  /_sandbox/received`` accepted items; query ``endpoint``, ``offset``, ``limit`` (default 10000),
                            ``format=json`` (``{"total", "offset", "items": [...]}``) or ``jsonl`` (streamed)
``GET  /_sandbox/requests`` the request log (newest 200k); query ``endpoint``, ``offset``, ``limit``
``GET  /_sandbox/stats``    counters (see :meth:`Store.stats`): ``requests`` ``{endpoint: {status: n}}``
                            (``"dropped"``: no answer was sent), ``items``, ``duplicates``, ``max_in_flight``,
                            ``token_requests``...; plus ``faults_injected`` ``{label: n}`` and ``config``
``GET  /_sandbox/duplicates`` ``{endpoint: {key: count}}`` for keys accepted more than once; query ``endpoint``
``POST /_sandbox/tokens/expire`` expire every issued token now → ``{"expired": n}``
``GET|POST /_sandbox/config`` ``{"token_ttl", "strict", "record", "client_id"}``; POST may set
                            ``token_ttl`` and ``strict``
=========================  ==================================================================================

A received item is ``{"seq", "time", "endpoint", "params", "index", "key", "item"}`` (``item`` only with
``--record full``): ``seq`` is the request's sequence number, ``time`` its arrival (epoch seconds),
``params`` the path parameters (``organizationId``, ``userId``, ``uploadId``), ``index`` the item's position in
``data``.
"""

from __future__ import annotations

from typing import Any

import orjson
import pydantic
from aiohttp import web

from bridge.sandbox.fault_config import ENDPOINT_NAMES, parse_fault_config
from bridge.sandbox.faults import FaultEngine
from bridge.sandbox.state import SandboxState
from bridge.sandbox.wire import STATE_KEY, error_response, json_response

__all__ = ["add_control_routes"]

_DEFAULT_PAGE = 10_000
_JSONL_CHUNK = 2_000


def _state(request: web.Request) -> SandboxState:
    return request.app[STATE_KEY]


async def _body(request: web.Request) -> Any:
    raw = await request.read()
    if not raw.strip():
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text="body is not JSON") from exc


def _query_int(request: web.Request, name: str, default: int | None) -> int | None:
    value = request.query.get(name)
    if value is None or value == "":
        return default
    if not value.isdigit():
        raise web.HTTPBadRequest(text=f"{name} must be a non-negative integer")
    return int(value)


def _endpoint(request: web.Request) -> str | None:
    name = request.query.get("endpoint") or None
    if name is not None and name not in ENDPOINT_NAMES:
        raise web.HTTPBadRequest(text=f"unknown endpoint {name!r}")
    return name


async def _health(request: web.Request) -> web.StreamResponse:
    return json_response({"status": "ok"})


async def _get_faults(request: web.Request) -> web.StreamResponse:
    return json_response(_state(request).faults.describe())


async def _set_faults(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    try:
        config = parse_fault_config(await _body(request))
    except pydantic.ValidationError as exc:
        return json_response({"errors": orjson.loads(exc.json(include_url=False))}, 400)
    state.faults = FaultEngine(config)
    return json_response(state.faults.describe())


async def _clear_faults(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    state.faults = FaultEngine()
    return json_response(state.faults.describe())


async def _reset(request: web.Request) -> web.StreamResponse:
    body = await _body(request) or {}
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text="body must be an object")
    _state(request).reset(
        revoke_tokens=bool(body.get("revoke_tokens", False)), keep_faults=bool(body.get("keep_faults", False))
    )
    return json_response({"status": "reset"})


async def _received(request: web.Request) -> web.StreamResponse:
    store = _state(request).store
    endpoint = _endpoint(request)
    offset = _query_int(request, "offset", 0) or 0
    if request.query.get("format") == "jsonl":
        limit = _query_int(request, "limit", None)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await response.prepare(request)
        chunk: list[bytes] = []
        for entry in store.iter_received(endpoint, offset, limit):
            chunk.append(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))
            if len(chunk) >= _JSONL_CHUNK:
                await response.write(b"".join(chunk))
                chunk.clear()
        if chunk:
            await response.write(b"".join(chunk))
        await response.write_eof()
        return response
    limit = _query_int(request, "limit", _DEFAULT_PAGE)
    items = list(store.iter_received(endpoint, offset, limit))
    return json_response({"total": store.received_count(endpoint), "offset": offset, "items": items})


async def _requests(request: web.Request) -> web.StreamResponse:
    log = _state(request).store.request_log
    endpoint = _endpoint(request)
    entries = [r for r in log if endpoint is None or r.meta.endpoint == endpoint]
    offset = _query_int(request, "offset", 0) or 0
    limit = _query_int(request, "limit", _DEFAULT_PAGE) or 0
    page = entries[offset : offset + limit]
    return json_response({"total": len(entries), "offset": offset, "items": [r.as_json() for r in page]})


async def _stats(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    stats = state.store.stats()
    stats["faults_injected"] = dict(state.faults.injected)
    stats["config"] = _config_json(state)
    return json_response(stats)


async def _duplicates(request: web.Request) -> web.StreamResponse:
    return json_response(_state(request).store.duplicates(_endpoint(request)))


async def _expire_tokens(request: web.Request) -> web.StreamResponse:
    return json_response({"expired": _state(request).expire_tokens()})


def _config_json(state: SandboxState) -> dict[str, Any]:
    s = state.settings
    return {"token_ttl": s.token_ttl, "strict": s.strict, "record": s.record, "client_id": s.client_id}


async def _get_config(request: web.Request) -> web.StreamResponse:
    return json_response(_config_json(_state(request)))


async def _set_config(request: web.Request) -> web.StreamResponse:
    state = _state(request)
    body = await _body(request) or {}
    if not isinstance(body, dict) or set(body) - {"token_ttl", "strict"}:
        return error_response(400, "only token_ttl and strict can be changed at run time")
    ttl = body.get("token_ttl", state.settings.token_ttl)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or ttl <= 0:
        return error_response(400, "token_ttl must be a positive number of seconds", pointer="/token_ttl")
    state.settings.token_ttl = float(ttl)
    state.settings.strict = bool(body.get("strict", state.settings.strict))
    return json_response(_config_json(state))


def add_control_routes(app: web.Application) -> None:
    """Register every ``/_sandbox/`` route on ``app``."""
    r = app.router
    r.add_get("/_sandbox/health", _health, allow_head=False)
    r.add_get("/_sandbox/faults", _get_faults, allow_head=False)
    r.add_post("/_sandbox/faults", _set_faults)
    r.add_delete("/_sandbox/faults", _clear_faults)
    r.add_post("/_sandbox/reset", _reset)
    r.add_get("/_sandbox/received", _received, allow_head=False)
    r.add_get("/_sandbox/requests", _requests, allow_head=False)
    r.add_get("/_sandbox/stats", _stats, allow_head=False)
    r.add_get("/_sandbox/duplicates", _duplicates, allow_head=False)
    r.add_post("/_sandbox/tokens/expire", _expire_tokens)
    r.add_get("/_sandbox/config", _get_config, allow_head=False)
    r.add_post("/_sandbox/config", _set_config)
