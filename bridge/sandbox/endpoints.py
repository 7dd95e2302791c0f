"""The Kard endpoint handlers of the sandbox: read the body, validate it, apply per-item faults, record the
accepted items and answer with the success, 207 or error body that CONTRACT.md §6 shows.

Auth, request logging and request-level faults are done before these run, by the middleware in
:mod:`bridge.sandbox.app`; a handler raises :class:`RequestRejected` for a whole-request error.
"""

from __future__ import annotations

import asyncio
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from bridge.sandbox.schemas import ENDPOINTS, item_error_id
from bridge.sandbox.state import SandboxState
from bridge.sandbox.validation import Problem, RequestRejected, validate_body
from bridge.sandbox.wire import STATE_KEY, json_response, problems_response, request_decision, request_record

__all__ = ["items_handler", "ping", "read_json", "token", "users_delete"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON.

    Raises:
        RequestRejected: 415 for a non-JSON ``Content-Type``, 413 over the size limit, 400 empty or malformed.
    """
    if "Content-Type" in request.headers:
        mime = request.content_type
        if mime != "application/json" and not mime.endswith("+json"):
            raise RequestRejected("Content-Type must be application/json", status=415)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise RequestRejected("the request body is too large", status=413) from exc
    if not raw:
        raise RequestRejected("the request body is empty", pointer="")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise RequestRejected("the request body is not valid JSON", pointer="") from exc


async def token(request: web.Request) -> web.StreamResponse:
    """``POST v2/auth/token``: snake_case JSON credentials in, ``TokenResponse`` out (401 if wrong)."""
    state = request.app[STATE_KEY]
    body = await read_json(request)
    if type(body) is not dict:
        raise RequestRejected("the request body must be a JSON object", pointer="")
    for name in ("client_id", "client_secret"):
        value = body.get(name)
        if type(value) is not str or not value:
            raise RequestRejected(f"{name} is required", pointer=f"/{name}")
    settings = state.settings
    id_ok = secrets.compare_digest(body["client_id"].encode(), settings.client_id.encode())
    if not (secrets.compare_digest(body["client_secret"].encode(), settings.client_secret.encode()) and id_ok):
        raise RequestRejected("invalid client credentials", status=401, title="Unauthorized")
    access_token, expires_in = state.issue_token()
    return json_response({"access_token": access_token, "expires_in": expires_in, "token_type": "Bearer"})


async def ping(request: web.Request) -> web.StreamResponse:
    """``GET v2/ping``: the timestamp is in access-log format, as Kard sends it."""
    stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime())
    return json_response({"message": "Ping successful", "status": "OK", "timestamp": stamp})


async def users_delete(request: web.Request) -> web.StreamResponse:
    """``DELETE v2/issuers/{org}/users/{user}``: 404 unless the user was enrolled."""
    state = request.app[STATE_KEY]
    rec = request_record(request)
    org, user = rec.meta.params["organizationId"], rec.meta.params["userId"]
    enrolled = state.users.get(org)
    if not enrolled or user not in enrolled:
        raise RequestRejected("the user does not exist", status=404, title="Does Not Exist")
    enrolled.discard(user)
    item = {"type": "user", "id": user, "attributes": {}}
    state.store.count(rec, 1, 0)
    state.store.add(rec, [(0, user, item)])
    return json_response({"data": item})


def _job(message: str) -> dict[str, Any]:
    return {"type": "job", "id": str(uuid.uuid4()), "attributes": {"status": "queued", "message": message}}


def _success(
    state: SandboxState, endpoint: str, params: dict[str, str], accepted: list[tuple[int, str, Any]]
) -> tuple[int, Any]:
    """The success status and body for the ``accepted`` (index, key, item); applies their effect on the state."""
    items = [item for _, _, item in accepted]
    if endpoint == "transactions":
        return 202, {"data": _job("Incoming Transactions event successfully queued for processing")}
    if endpoint == "user_attributions":
        return 202, {"data": _job("Attribution events are queued for processing")}
    if endpoint == "bulk_attributions":
        return 200, {"meta": {"totalProcessed": len(items)}}
    if endpoint == "eligibility":
        return 202, {}
    if endpoint in ("fraud", "users_create"):
        if endpoint == "users_create":
            state.users.setdefault(params["organizationId"], set()).update(i["id"] for i in items)
        return 201, {"data": items}
    if endpoint == "audits":
        created = [
            {
                "type": "audit",
                "id": str(uuid.uuid4()),
                "attributes": {"transactionId": i["attributes"]["transactionId"]},
            }
            for i in items
        ]
        return 201, {"data": created}
    if endpoint == "users_update":
        return 200, {"data": items[0]}
    if endpoint == "uploads_part":
        upload = state.uploads[params["uploadId"]]
        upload.parts += 1
        return 200, {"data": [{"type": "historicalTransaction", "id": i["id"], "attributes": {}} for i in items]}
    if endpoint == "uploads_complete":
        state.uploads[params["uploadId"]].completed = True
        return 200, {"data": {"type": "historicalTransactionComplete", "id": params["uploadId"], "attributes": {}}}
    # uploads_create: the handler made the new upload id the item's key
    return 201, {"data": {"type": "historicalTransactionStart", "id": accepted[0][1], "attributes": {}}}


def _state_checks(
    state: SandboxState, endpoint: str, params: dict[str, str], items: list[Any], problems: dict[int, list[Problem]]
) -> None:
    """Checks against what the server knows: users exist or not, upload sessions open, ids match the path."""
    org = params.get("organizationId", "")
    if endpoint == "users_create":
        enrolled = state.users.get(org, set())
        seen: set[str] = set()
        for i, item in enumerate(items):
            uid = item.get("id") if type(item) is dict else None
            if type(uid) is str and (uid in enrolled or uid in seen):
                problems.setdefault(i, []).append(
                    Problem(f"/data/{i}/id", "the user already exists", status="409", title="Conflict")
                )
            elif type(uid) is str:
                seen.add(uid)
    elif endpoint == "users_update":
        if params["userId"] not in state.users.get(org, set()):
            raise RequestRejected("the user does not exist", status=404, title="Does Not Exist")
        if type(items[0]) is dict and items[0].get("id") not in (None, params["userId"]):
            problems.setdefault(0, []).append(Problem("/data/id", "data.id must equal the userId in the path"))
    elif endpoint in ("uploads_part", "uploads_complete"):
        upload = state.find_upload(params["uploadId"], org, params["userId"])
        if upload is None:
            raise RequestRejected("unknown upload id for this organization and user")
        if upload.completed:
            if endpoint == "uploads_complete":
                raise RequestRejected("the upload is already completed", status=409, title="Conflict")
            raise RequestRejected("the upload is already completed")
        first = items[0]
        if endpoint == "uploads_complete" and type(first) is dict and first.get("id") not in (None, params["uploadId"]):
            problems.setdefault(0, []).append(Problem("/data/id", "data.id must equal the uploadId in the path"))


def _prefix_rejections(request: web.Request, items: list[Any], batch: bool, problems: dict[int, list[Problem]]) -> None:
    for spec in request_decision(request).reject_items:
        for i, item in enumerate(items):
            if type(item) is not dict:
                continue
            base = f"/data/{i}" if batch else "/data"
            attrs = item.get("attributes")
            for name in spec.fields:
                value = item.get("id") if name == "id" else attrs.get(name) if type(attrs) is dict else None
                if type(value) is str and value.startswith(spec.prefix):
                    if not spec.attribute:  # all or nothing: one error for the request, naming no item
                        request.app[STATE_KEY].store.count(request_record(request), len(items), len(items))
                        raise RequestRejected(spec.detail, status=int(spec.status), title=spec.title)
                    pointer = f"{base}/id" if name == "id" else f"{base}/attributes/{name}"
                    problems.setdefault(i, []).append(Problem(pointer, spec.detail, spec.status, spec.title))
                    break


def items_handler(endpoint: str) -> Handler:
    """The handler of an endpoint that takes ``{"data": ...}`` (every Kard endpoint but token, ping, delete)."""
    spec = ENDPOINTS[endpoint]

    async def handle(request: web.Request) -> web.StreamResponse:
        state = request.app[STATE_KEY]
        store, rec, decision = state.store, request_record(request), request_decision(request)
        params = rec.meta.params
        body = await read_json(request)
        items, problems = validate_body(
            body, spec.variants, batch=spec.batch, max_items=spec.max_items, strict=state.settings.strict
        )
        _state_checks(state, endpoint, params, items, problems)
        if decision.reject_items:
            _prefix_rejections(request, items, spec.batch, problems)
        if endpoint == "uploads_create":
            keys = [state.start_upload(params["organizationId"], params["userId"])] if not problems else [""]
        elif store.record != "none" or decision.reject_duplicates:
            keys = [store.item_key(endpoint, params, item) for item in items]
        else:
            keys = [""] * len(items)
        if decision.reject_duplicates:
            _duplicate_rejections(state, endpoint, keys, spec.batch, problems)
        if decision.per_item_latency:
            await asyncio.sleep(decision.per_item_latency * len(items))
        accepted = [(i, keys[i], item) for i, item in enumerate(items) if i not in problems]
        if problems:
            ids = {i: item_error_id(endpoint, items[i]) for i in problems}
            if not spec.multi_status or not accepted:
                store.count(rec, len(items), len(items))
                return problems_response(problems, ids)
        store.count(rec, len(items), len(problems))
        store.add(rec, accepted)
        status, response = _success(state, endpoint, params, accepted)
        if problems:
            return problems_response(problems, ids, data=response["data"], multi_status=True)
        return json_response(response, status)

    return handle


def _duplicate_rejections(
    state: SandboxState, endpoint: str, keys: list[str], batch: bool, problems: dict[int, list[Problem]]
) -> None:
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if state.store.seen(endpoint, key) or key in seen:
            pointer = f"/data/{i}" if batch else "/data"
            problems.setdefault(i, []).append(
                Problem(pointer, "duplicate item (reject_duplicates fault)", status="409", title="Conflict")
            )
        seen.add(key)
