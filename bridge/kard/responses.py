"""Turn one Kard API response (status, headers, body bytes) into an outcome for every item of the batch.

Status first, bodies parsed leniently (CONTRACT.md §4.3): a gateway ``{"message": ...}``, an HTML page or
a truncated body only gives less detail, never a crash. All pure, except :func:`read_capped` (capped read).

* **2xx** (not 207): all ``accepted``. For ``v2/internal/attributions`` a missing or different
  ``meta.totalProcessed`` makes all ``unconfirmed`` (``confirmed=False``). A 2xx listing ``errors`` is a 207.
* **207**: attributed errors: 4xx (not 408/429) → ``rejected``; 408/429/5xx/no status → ``retry``.
  Items nobody named → ``accepted``.
* **Other 4xx** (whole request refused): named items as above, the others ``not_attempted`` (never
  accepted: re-send). Nothing named: 400/409/413/422 with ``n > 1`` → all ``bisect``; else all ``rejected``.
* **401** raises ``AuthError`` (the auth flow already refreshed once). **408/429/5xx/3xx** raise
  ``TransientDeliveryError`` with ``retry_after`` from ``Retry-After`` / ``X-RateLimit-Reset``.

Attribution: ``errors[].id`` against the item's own ids (``item_id``, wire ``id``), then its
``attributes.transactionId`` (CONTRACT.md §6.1 leaves open which one the API reports), then
``source.pointer`` ``/data/<i>/...``; in a one-item batch every error is that item's. An id shared by
several items is narrowed by the pointer, or else makes them all *suspects*.

Decisions:

* **Unattributable errors.** In a 207, an error we cannot place means an unknown item failed; calling the
  unnamed items accepted could drop it silently (I5). They become suspects: ``retry`` if every such error
  is transient, else ``bisect``. Halving converges (a one-item batch is never ambiguous); the price is
  that already-accepted items may be sent again: duplicates are possible, loss is not.
* **409 Conflict** is neither retried (the same body meets the same conflict; the SDK retries 409 only
  as a Fern default) nor counted as delivered (the trigger is undocumented: a duplicate event id would be
  a success, "user exists with other attributes" would not). It is handled like a 400: named items are
  ``rejected`` with status 409 (a DLQ replay can tell them apart), unnamed → ``bisect``.
* **totalProcessed mismatch.** Bulk attributions carry no id: re-sending makes duplicates the server
  cannot detect, and we cannot tell which items were dropped. So ``unconfirmed`` is terminal (never
  re-sent) but reported apart from ``accepted``; the client logs ``kard_batch_unconfirmed``.
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections import Counter
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import httpx
import orjson

from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.headers import retry_after_from_headers
from bridge.routes import Endpoint, MappedItem

__all__ = [
    "ACCEPTED", "BISECT", "NOT_ATTEMPTED", "UNCONFIRMED", "BatchResponse", "ItemOutcome", "OutcomeKind",
    "classify_response", "read_capped",
]  # fmt: skip

_TITLE_MAX = 200
_DETAIL_MAX = 512
_ID_MAX = 256
_POINTER = re.compile(r"/data/([0-9]{1,9})(?:/|$)")
_BISECTABLE = frozenset({400, 409, 413, 422})
_Outs = tuple["ItemOutcome", ...]


class OutcomeKind(enum.StrEnum):
    """What happened to one item, and what the dispatcher should do with it."""

    ACCEPTED = "accepted"  # the API took it (for queued endpoints: accepted for processing). Terminal.
    REJECTED = "rejected"  # permanent 4xx for this item: dead-letter it. Terminal.
    RETRY = "retry"  # transient failure for this item (408/429/5xx in a 207): re-send after back-off.
    NOT_ATTEMPTED = "not_attempted"  # the request was refused because of *other* items: re-send as is.
    BISECT = "bisect"  # refused or suspect without a culprit: re-send in smaller batches (halves).
    UNCONFIRMED = "unconfirmed"  # 2xx, but the API's count disagrees; terminal, report, never re-send.


@dataclass(frozen=True, slots=True)
class ItemOutcome:
    """The outcome of one item; the error fields come from the API's ``errors[]`` entry, when there is one.

    ``detail`` is the server's text, truncated; it may quote request values, so route it like payload
    data (DLQ headers, not logs).
    """

    kind: OutcomeKind
    status: int | None = None
    title: str | None = None
    detail: str | None = None
    pointer: str | None = None


#: Shared instances for the common, field-less outcomes (no per-item allocation on the hot path).
ACCEPTED = ItemOutcome(OutcomeKind.ACCEPTED)
NOT_ATTEMPTED = ItemOutcome(OutcomeKind.NOT_ATTEMPTED)
BISECT = ItemOutcome(OutcomeKind.BISECT)
UNCONFIRMED = ItemOutcome(OutcomeKind.UNCONFIRMED)
_RETRY = ItemOutcome(OutcomeKind.RETRY)


@dataclass(frozen=True, slots=True)
class BatchResponse:
    """One batch request's result.

    Attributes:
        status: the final HTTP status.
        elapsed: seconds from sending the request to reading the whole (capped) body.
        summary: a few facts about the response body, never payload values: ``body`` (``json``,
            ``not_json`` or ``empty``), and when present ``job_id``, ``job_status``, ``echoed`` (length of
            an echoed ``data`` list), ``total_processed``, ``errors`` (count), ``truncated``.
        outcomes: one :class:`ItemOutcome` per item, in the order of the items sent.
        retry_after: the server's back-off hint in seconds when some items are to be retried.
        confirmed: False when the API's own count disagreed with the batch (see ``unconfirmed``).
    """

    status: int
    elapsed: float
    summary: Mapping[str, Any]
    outcomes: tuple[ItemOutcome, ...]
    retry_after: float | None = None
    confirmed: bool = True

    @property
    def all_accepted(self) -> bool:
        """True when every item was accepted."""
        return all(o.kind is OutcomeKind.ACCEPTED for o in self.outcomes)

    def counts(self) -> Counter[OutcomeKind]:
        """How many items ended in each kind."""
        return Counter(o.kind for o in self.outcomes)


@dataclass(frozen=True, slots=True)
class _ApiError:
    """One ``errors[]`` entry, leniently decoded and truncated."""

    status: int | None
    title: str | None
    detail: str | None
    pointer: str | None
    id: str | None


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """Read at most ``limit`` decoded bytes of a streamed response; returns ``(body, truncated)``.

    The rest of the body is not read: the caller closes the response, which drops the connection
    instead of draining an oversized (or decompression-bomb) body.

    A body that can read itself capped (``read_capped``: the default transport's, ``bridge.kard.transport``)
    and is not content-encoded (so its bytes are the decoded bytes) is read that way, in one loop instead
    of httpx's chain of stream iterators; anything else through ``Response.aiter_bytes``.
    """
    reader = getattr(response.stream, "read_capped", None)
    if reader is not None and not (response.is_stream_consumed or response.is_closed) and (
        "content-encoding" not in response.headers
    ):
        response.is_stream_consumed = True
        result: tuple[bytes, bool] = await reader(limit)
        response.is_closed = True  # the body closed itself (as httpx closes a response at the end of its body)
        return result
    chunks: list[bytes] = []
    size = 0
    stream = cast("AsyncGenerator[bytes, None]", response.aiter_bytes())  # it is one; typed as an iterator
    async with contextlib.aclosing(stream):
        async for chunk in stream:
            room = limit - size
            if len(chunk) > room:
                chunks.append(chunk[:room])
                return b"".join(chunks), True
            chunks.append(chunk)
            size += len(chunk)
    return b"".join(chunks), False


def _text(value: Any, limit: int) -> str | None:
    if isinstance(value, str):
        return value[:limit]
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _status(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        number = int(value.strip())
    else:
        return None
    return number if 100 <= number <= 599 else None


def _parse_object(body: bytes) -> dict[str, Any] | None:
    if not body:
        return None
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return doc if isinstance(doc, dict) else None


def _parse_errors(doc: dict[str, Any] | None) -> list[_ApiError]:
    raw = doc.get("errors") if doc is not None else None
    if not isinstance(raw, list):
        return []
    errors = []
    for entry in raw:
        if not isinstance(entry, dict):
            continue
        source = entry.get("source")
        pointer = source.get("pointer") if isinstance(source, dict) else None
        errors.append(
            _ApiError(
                status=_status(entry.get("status")),
                title=_text(entry.get("title"), _TITLE_MAX),
                detail=_text(entry.get("detail"), _DETAIL_MAX),
                pointer=_text(pointer, _TITLE_MAX),
                id=_text(entry.get("id"), _ID_MAX),
            )
        )
    return errors


def _summarize(doc: dict[str, Any] | None, body: bytes, truncated: bool) -> dict[str, Any]:
    summary: dict[str, Any] = {"body": "json" if doc is not None else ("not_json" if body else "empty")}
    if truncated:
        summary["truncated"] = True
    if doc is None:
        return summary
    data = doc.get("data")
    if isinstance(data, dict):
        if (job_id := _text(data.get("id"), 128)) is not None:
            summary["job_id"] = job_id
        attributes = data.get("attributes")
        if isinstance(attributes, dict) and (job_status := _text(attributes.get("status"), 32)) is not None:
            summary["job_status"] = job_status
    elif isinstance(data, list):
        summary["echoed"] = len(data)
    meta = doc.get("meta")
    if isinstance(meta, dict):
        processed = meta.get("totalProcessed")
        if isinstance(processed, int) and not isinstance(processed, bool):
            summary["total_processed"] = processed
    errors = doc.get("errors")
    if isinstance(errors, list):
        summary["errors"] = len(errors)
    return summary


def _is_transient(status: int | None) -> bool:
    return status is not None and (status in (408, 429) or 500 <= status <= 599)


def _outcome(error: _ApiError, default_status: int | None) -> ItemOutcome:
    status = error.status if error.status is not None else default_status
    permanent = status is not None and 400 <= status <= 499 and not _is_transient(status)
    kind = OutcomeKind.REJECTED if permanent else OutcomeKind.RETRY
    return ItemOutcome(kind, status, error.title, error.detail, error.pointer)


class _IdIndex:
    """Item positions by their own ids and by ``attributes.transactionId``; built only when needed."""

    __slots__ = ("by_id", "by_transaction")

    def __init__(self, items: Sequence[MappedItem]) -> None:
        self.by_id: dict[str, list[int]] = {}
        self.by_transaction: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            self.by_id.setdefault(item.item_id, []).append(index)
            wire_id = item.item.get("id")
            if isinstance(wire_id, str) and wire_id != item.item_id:
                self.by_id.setdefault(wire_id, []).append(index)
            attributes = item.item.get("attributes")
            if isinstance(attributes, dict):
                transaction_id = attributes.get("transactionId")
                if isinstance(transaction_id, str):
                    self.by_transaction.setdefault(transaction_id, []).append(index)


def _pointer_index(pointer: str | None, n: int) -> int | None:
    if pointer is None or (match := _POINTER.match(pointer)) is None:
        return None
    index = int(match.group(1))
    return index if index < n else None


def _locate(error: _ApiError, n: int, index: _IdIndex) -> list[int]:
    """The positions an error may refer to: one (found), several (ambiguous) or none."""
    at = _pointer_index(error.pointer, n)
    if error.id is not None:
        hits = index.by_id.get(error.id) or index.by_transaction.get(error.id)
        if hits:
            if len(hits) > 1 and at is not None and at in hits:
                return [at]
            return hits
    if at is not None:
        return [at]
    return [0] if n == 1 else []


def _attribute(
    errors: list[_ApiError], items: Sequence[MappedItem], default_status: int | None
) -> tuple[dict[int, ItemOutcome], dict[int, bool]]:
    """Named items → their outcome; suspect items → whether every error suspecting them is transient."""
    n = len(items)
    index = _IdIndex(items)
    named: dict[int, ItemOutcome] = {}
    suspects: dict[int, bool] = {}
    unplaced_transient: bool | None = None  # None: no error left unplaced
    for error in errors:
        outcome = _outcome(error, default_status)
        targets = _locate(error, n, index)
        transient = _is_transient(outcome.status)
        if len(targets) == 1:
            previous = named.get(targets[0])  # one item, several errors: a permanent one wins
            if previous is None or (outcome.kind is OutcomeKind.REJECTED is not previous.kind):
                named[targets[0]] = outcome
        elif targets:
            for i in targets:
                suspects[i] = suspects.get(i, True) and transient
        else:
            unplaced_transient = transient if unplaced_transient is None else unplaced_transient and transient
    if unplaced_transient is not None:
        for i in range(n):
            suspects[i] = suspects.get(i, True) and unplaced_transient
    for i in named:
        suspects.pop(i, None)
    return named, suspects


def _combine(n: int, named: dict[int, ItemOutcome], suspects: dict[int, bool], rest: ItemOutcome) -> _Outs:
    return tuple(
        named[i] if i in named else ((_RETRY if suspects[i] else BISECT) if i in suspects else rest) for i in range(n)
    )


def classify_response(
    *,
    endpoint: Endpoint,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    items: Sequence[MappedItem],
    elapsed: float,
    now: float,
    truncated: bool = False,
) -> BatchResponse:
    """Classify one batch response; see the module docstring for the full table.

    Args:
        endpoint: the route's endpoint (``BULK_ATTRIBUTIONS`` gets the ``totalProcessed`` check).
        status: the HTTP status code.
        headers: response headers (for ``Retry-After`` / ``X-RateLimit-Reset``).
        body: the (possibly truncated) response body.
        items: the items sent, in order.
        elapsed: seconds the request took, copied into the result.
        now: wall-clock epoch seconds, to turn absolute header times into waits.
        truncated: the body was cut at the size cap.

    Raises:
        TransientDeliveryError: 408, 429, 5xx or an unexpected 1xx/3xx; ``retry_after`` from the headers.
        AuthError: 401 (the auth flow normally raises first, after its one refresh and retry).
    """
    n = len(items)
    doc = _parse_object(body)
    summary = _summarize(doc, body, truncated)
    if 200 <= status <= 299:
        errors = _parse_errors(doc)
        if status == 207 or errors:
            return _multi_status(status, elapsed, summary, errors, items, headers, now)
        if endpoint is Endpoint.BULK_ATTRIBUTIONS and summary.get("total_processed") != n:
            return BatchResponse(status, elapsed, summary, (UNCONFIRMED,) * n, confirmed=False)
        return BatchResponse(status, elapsed, summary, (ACCEPTED,) * n)

    errors = _parse_errors(doc)
    if errors:
        title, detail = errors[0].title, errors[0].detail
    else:  # maybe a gateway body: {"message": "..."}
        title, detail = None, _text(doc.get("message"), _DETAIL_MAX) if doc is not None else None
    if status == 401:
        raise AuthError("Kard API refused the access token (HTTP 401)", status=401, detail=title)
    if not 400 <= status <= 499 or _is_transient(status):
        hint = retry_after_from_headers(headers, now=now)
        raise TransientDeliveryError(
            f"Kard API answered HTTP {status}", status=status, detail=title or detail, retry_after=hint
        )

    named, suspects = _attribute(errors, items, status)
    if named or 0 < len(suspects) < n:  # the API pointed at some items: the others were not processed
        return BatchResponse(status, elapsed, summary, _combine(n, named, suspects, NOT_ATTEMPTED))
    if n > 1 and status in _BISECTABLE:  # refused because of an item it does not name: find it by halves
        return BatchResponse(status, elapsed, summary, (BISECT,) * n)
    rejected = ItemOutcome(OutcomeKind.REJECTED, status, title, detail, errors[0].pointer if errors else None)
    return BatchResponse(status, elapsed, summary, (rejected,) * n)


def _multi_status(
    status: int, elapsed: float, summary: dict[str, Any], errors: list[_ApiError],
    items: Sequence[MappedItem], headers: Mapping[str, str], now: float,
) -> BatchResponse:  # fmt: skip
    n = len(items)
    if errors:
        named, suspects = _attribute(errors, items, None)
        outcomes = _combine(n, named, suspects, ACCEPTED)
    else:  # a 207 that lists no error we can read: something failed, we cannot say what
        outcomes = (_RETRY,) if n == 1 else (BISECT,) * n
    retry = any(o.kind is OutcomeKind.RETRY for o in outcomes)
    hint = retry_after_from_headers(headers, now=now) if retry else None
    return BatchResponse(status, elapsed, summary, outcomes, retry_after=hint)
