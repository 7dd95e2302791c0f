"""The Kard API sandbox as an aiohttp application: a real HTTP server that answers like the Kard rewards API
(CONTRACT.md), with fault injection and an inspection API for tests, the demo and benchmarks.

Served endpoints (sandbox name → route): ``token`` POST /v2/auth/token · ``ping`` GET /v2/ping ·
``transactions`` POST /v2/issuers/{org}/transactions (≤500, 207) · ``fraud`` POST /v2/issuers/{org}/fraud
(≤500, 207) · ``audits`` POST /v2/issuers/{org}/users/{user}/audits (207) · ``user_attributions`` POST
/v2/issuers/{org}/users/{user}/attributions (≤100) · ``bulk_attributions`` POST /v2/internal/attributions (≤100)
· ``eligibility`` POST /internal/eligibility-broker/ingest · ``users_create`` POST /v2/issuers/{org}/users
(≤100, 207) · ``users_update`` PUT and ``users_delete`` DELETE /v2/issuers/{org}/users/{user} ·
``uploads_create`` POST .../users/{user}/uploads · ``uploads_part`` PUT .../uploads/{upload}/parts (≤500, 207)
· ``uploads_complete`` PUT .../uploads/{upload}. Control API under ``/_sandbox/`` (:mod:`.control_api`).

Choices where the contract is silent (tests rely on them):

* **Auth:** every endpoint but ``token`` needs ``Authorization: Bearer <token>`` from the token endpoint
  (ping and the internal endpoints too). Missing, unknown or expired → 401 ``ErrorResponse`` with a
  ``WWW-Authenticate`` header. The token endpoint ignores extra body fields; wrong credentials → 401.
* **Success statuses:** 202 for queued jobs (transactions, user attributions) and eligibility (body ``{}``);
  201 for fraud, audits, users create, upload start; 200 for the rest. The SDK accepts any 2xx.
* **Whole-request 400** (``ErrorResponse``, pointer into the document): not JSON, wrong envelope, empty
  ``data``, more items than the limit, or (strict mode) an unknown top-level member. 415 for a non-JSON
  ``Content-Type``, 413 over 32 MiB.
* **Per-item problems** get one ``ErrorObject`` each (an item can have several), with ``source.pointer``
  (``/data/i/...``) and ``id`` (the item's ``id``, else its ``transactionId``; none for id-less items).
  On 207 endpoints: 207 ``{"errors", "data": <the accepted part, in the success shape>}`` if any item is
  accepted, else the errors alone with status 400 (or the items' common status, e.g. 409). Elsewhere the
  whole request fails with 400 and lists every bad item; nothing is recorded.
* **Unknown fields** are rejected (``--unknown-fields ignore`` to accept them); ``null`` means "left out".
* **Server state:** users must exist for update/delete (404) and must not exist for create (per-item 409);
  ``data.id`` must equal the path id; upload parts need an open upload of that organization and user (400),
  completing twice → 409. Audits and eligibility do not check users.
* **Fault responses** carry ``X-Sandbox-Fault``; every Kard response carries ``X-Sandbox-Seq``.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from bridge.sandbox.control_api import add_control_routes
from bridge.sandbox.endpoints import items_handler, ping, token, users_delete
from bridge.sandbox.faults import FaultDecision, FaultEngine
from bridge.sandbox.state import SandboxSettings, SandboxState
from bridge.sandbox.validation import RequestRejected
from bridge.sandbox.wire import DECISION_KEY, RECORD_KEY, STATE_KEY, error_response

__all__ = ["create_app"]

_PARAM_NAMES = {"org": "organizationId", "user": "userId", "upload": "uploadId"}
_UNAUTHORIZED = {
    "missing": "missing bearer token",
    "invalid": "invalid bearer token",
    "expired": "the bearer token has expired",
}
_CONTROL_PREFIX = "/_sandbox/"


def _drop(request: web.Request) -> None:
    """Close the connection without answering (the client sees a disconnect / reset)."""
    transport = request.transport
    if transport is not None:
        transport.abort()


async def _wait_or_client_gone(request: web.Request, delay: float | None) -> bool:
    """Sleep ``delay`` seconds (None: forever); False as soon as the client closes the connection."""
    loop = asyncio.get_running_loop()
    deadline = None if delay is None else loop.time() + delay
    while True:
        transport = request.transport
        if transport is None or transport.is_closing():
            return False
        remaining = 0.05 if deadline is None else deadline - loop.time()
        if remaining <= 0:
            return True
        await asyncio.sleep(min(0.05, remaining))


async def _serve(
    request: web.Request, handler: Any, state: SandboxState, engine: FaultEngine, decision: FaultDecision, name: str
) -> web.StreamResponse | None:
    """Apply the request's faults around ``handler``; None means the connection was dropped or abandoned."""
    if decision.immediate_drop:
        _drop(request)
        return None
    if decision.immediate_status is not None:
        return error_response(decision.immediate_status, decision.detail, headers=decision.headers)
    async with engine.queue_slots(decision):
        if decision.hang and not await _wait_or_client_gone(request, decision.hang_delay):
            return None
        if decision.latency > 0:
            await asyncio.sleep(decision.latency)
        if decision.drop == "before":
            _drop(request)
            return None
        if decision.status is not None:
            return error_response(decision.status, decision.detail, headers=decision.headers, style=decision.error_body)
        if name != "token":
            auth = state.check_token(request.headers.get("Authorization"))
            if auth != "valid":
                return error_response(
                    401,
                    _UNAUTHORIZED[auth],
                    title="Unauthorized",
                    headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
                )
        try:
            response: web.StreamResponse = await handler(request)
        except RequestRejected as exc:
            response = error_response(exc.status, exc.detail, title=exc.title, pointer=exc.pointer)
        if decision.drop == "after":
            _drop(request)
            return None
        return response


@web.middleware
async def _kard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Request log, in-flight counting, faults and auth for every Kard route; JSON:API 404/405 elsewhere."""
    match_info = request.match_info
    if match_info.http_exception is not None:
        exc = match_info.http_exception
        return error_response(exc.status, f"no such endpoint: {request.method} {request.path}")
    if request.path.startswith(_CONTROL_PREFIX):
        response: web.StreamResponse = await handler(request)
        return response
    name = match_info.route.name or "unknown"
    state = request.app[STATE_KEY]
    store = state.store
    params = {_PARAM_NAMES.get(k, k): v for k, v in match_info.items()}
    headers = None
    if store.record == "full":
        headers = {str(k): ("Bearer ***" if k.lower() == "authorization" else v) for k, v in request.headers.items()}
    rec = store.begin(name, request.method, request.path, params, headers)
    engine = state.faults
    decision = engine.decide(name)
    rec.faults = decision.labels
    request[RECORD_KEY] = rec
    request[DECISION_KEY] = decision
    status = 0
    try:
        result = await _serve(request, handler, state, engine, decision, name)
        if result is None:
            return web.Response(status=499)  # never written: the connection is already closed
        result.headers["X-Sandbox-Seq"] = str(rec.meta.seq)
        if decision.labels:
            result.headers["X-Sandbox-Fault"] = ",".join(decision.labels)
        status = result.status
        return result
    finally:
        engine.release(decision)
        store.finish(rec, status)


def create_app(settings: SandboxSettings | None = None, state: SandboxState | None = None) -> web.Application:
    """Build the sandbox application (Kard routes + ``/_sandbox/`` control routes)."""
    state = state or SandboxState(settings or SandboxSettings())
    app = web.Application(middlewares=[_kard_middleware], client_max_size=state.settings.max_body_bytes)
    app[STATE_KEY] = state
    r = app.router
    r.add_post("/v2/auth/token", token, name="token")
    r.add_get("/v2/ping", ping, name="ping", allow_head=False)
    org, user = "/v2/issuers/{org}", "/v2/issuers/{org}/users/{user}"
    r.add_post(f"{org}/transactions", items_handler("transactions"), name="transactions")
    r.add_post(f"{org}/fraud", items_handler("fraud"), name="fraud")
    r.add_post(f"{user}/audits", items_handler("audits"), name="audits")
    r.add_post(f"{user}/attributions", items_handler("user_attributions"), name="user_attributions")
    r.add_post("/v2/internal/attributions", items_handler("bulk_attributions"), name="bulk_attributions")
    r.add_post("/internal/eligibility-broker/ingest", items_handler("eligibility"), name="eligibility")
    r.add_post(f"{org}/users", items_handler("users_create"), name="users_create")
    r.add_put(user, items_handler("users_update"), name="users_update")
    r.add_delete(user, users_delete, name="users_delete")
    r.add_post(f"{user}/uploads", items_handler("uploads_create"), name="uploads_create")
    r.add_put(f"{user}/uploads/{{upload}}/parts", items_handler("uploads_part"), name="uploads_part")
    r.add_put(f"{user}/uploads/{{upload}}", items_handler("uploads_complete"), name="uploads_complete")
    add_control_routes(app)
    return app
