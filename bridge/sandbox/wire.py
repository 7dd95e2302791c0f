"""Response builders for the Kard sandbox: JSON bodies (orjson), JSON:API ``ErrorResponse``s, and the
other error body styles a real gateway produces (``{"message": ...}``, plain text, empty).

Also the typed aiohttp app/request keys shared by the server modules.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from bridge.sandbox.faults import FaultDecision
from bridge.sandbox.state import SandboxState
from bridge.sandbox.store import RequestRecord
from bridge.sandbox.validation import Problem

__all__ = [
    "DECISION_KEY",
    "RECORD_KEY",
    "STATE_KEY",
    "error_object",
    "error_response",
    "json_response",
    "problems_response",
    "request_decision",
    "request_record",
]

STATE_KEY = web.AppKey("sandbox_state", SandboxState)
#: Request-scoped values set by the middleware for the endpoint handlers.
DECISION_KEY = "sandbox.decision"
RECORD_KEY = "sandbox.record"


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(body=orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def _title(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def error_object(
    status: int | str, detail: str, *, title: str | None = None, pointer: str | None = None, item_id: str | None = None
) -> dict[str, Any]:
    """One JSON:API ``ErrorObject`` (``status`` is a string on the wire)."""
    obj: dict[str, Any] = {"status": str(status), "title": title or _title(int(status)), "detail": detail}
    if pointer is not None:
        obj["source"] = {"pointer": pointer}
    if item_id is not None:
        obj["id"] = item_id
    return obj


def error_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    pointer: str | None = None,
    headers: dict[str, str] | None = None,
    style: str = "jsonapi",
) -> web.Response:
    """An error answer: an ``ErrorResponse`` by default, or a gateway-style body for fault injection.

    ``style``: ``jsonapi`` (``{"errors":[...]}``), ``gateway`` (``{"message": ...}``; for 403 the text is
    ``Unauthorized`` as in Kard's ``NetworkBlockedError``), ``text`` (text/plain), ``empty`` (no body).
    """
    if style == "gateway":
        message = "Unauthorized" if status == 403 else _title(status)
        return json_response({"message": message}, status, headers)
    if style == "text":
        return web.Response(text=_title(status), status=status, headers=headers, content_type="text/plain")
    if style == "empty":
        return web.Response(status=status, headers=headers)
    body = {"errors": [error_object(status, detail, title=title, pointer=pointer)]}
    return json_response(body, status, headers)


def problems_response(
    problems: dict[int, list[Problem]], ids: dict[int, str | None], *, data: Any = None, multi_status: bool = False
) -> web.Response:
    """Per-item errors: a 207 carrying ``data`` when ``multi_status``, else a whole-request error.

    The whole-request status is the items' common status when they all agree (e.g. 409), else 400.
    """
    errors = [
        error_object(p.status, p.detail, title=p.title, pointer=p.pointer, item_id=ids.get(index))
        for index in sorted(problems)
        for p in problems[index]
    ]
    if multi_status:
        return json_response({"errors": errors, "data": data}, 207)
    statuses = {e["status"] for e in errors}
    status = int(statuses.pop()) if len(statuses) == 1 else 400
    return json_response({"errors": errors}, status)


def request_decision(request: web.Request) -> FaultDecision:
    """The fault decision the middleware made for this request."""
    decision: FaultDecision = request[DECISION_KEY]
    return decision


def request_record(request: web.Request) -> RequestRecord:
    """The request-log entry the middleware opened for this request."""
    record: RequestRecord = request[RECORD_KEY]
    return record
