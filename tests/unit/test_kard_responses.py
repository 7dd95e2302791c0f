"""Tests for ``bridge.kard.responses``: status + headers + body bytes → one outcome per item (pure)."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from bridge.errors import AuthError, TransientDeliveryError
from bridge.kard.responses import (
    ACCEPTED,
    BISECT,
    NOT_ATTEMPTED,
    UNCONFIRMED,
    BatchResponse,
    OutcomeKind,
    classify_response,
)
from bridge.routes import Endpoint, MappedItem, Route

NOW = 1_735_787_045.0
TXN = Route(Endpoint.TRANSACTIONS, organization_id="org1")
FRAUD = Route(Endpoint.FRAUD, organization_id="org1")
BULK = Route(Endpoint.BULK_ATTRIBUTIONS)


def txn(event_id: str, transaction_id: str) -> MappedItem:
    """A transaction item: its own id is the event id; ``attributes.transactionId`` is the issuer's id."""
    item = {"type": "transaction", "id": event_id, "attributes": {"userId": "u1", "transactionId": transaction_id}}
    return MappedItem(TXN, item, event_id, "u1", orjson.dumps(item))


def fraud(transaction_id: str) -> MappedItem:
    """A fraud marker: its id is the transactionId."""
    item = {"type": "fraudulentTransaction", "id": transaction_id, "attributes": {"userId": "u1"}}
    return MappedItem(FRAUD, item, transaction_id, "u1", orjson.dumps(item))


def attribution(n: int) -> MappedItem:
    """A bulk attribution (no wire id; the item_id is a digest)."""
    item = {"type": "offerAttribution", "attributes": {"issuerId": "org1", "userId": f"u{n}", "entityId": "o1"}}
    return MappedItem(BULK, item, f"digest-{n}", f"u{n}", orjson.dumps(item))


def err(
    status: Any = "400", *, id: str | None = None, pointer: str | None = None, detail: str = "bad"
) -> dict[str, Any]:
    """One ``errors[]`` entry in the contract's shape."""
    entry: dict[str, Any] = {"status": status, "title": "Invalid Request", "detail": detail}
    if id is not None:
        entry["id"] = id
    if pointer is not None:
        entry["source"] = {"pointer": pointer}
    return entry


def classify(
    status: int,
    body: Any,
    items: list[MappedItem],
    *,
    route: Route = TXN,
    headers: dict[str, str] | None = None,
    truncated: bool = False,
) -> BatchResponse:
    """Classify with JSON-encoded ``body`` (bytes are passed through as they are)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return classify_response(
        endpoint=route.endpoint,
        status=status,
        headers=httpx.Headers(headers or {}),
        body=raw,
        items=items,
        elapsed=0.25,
        now=NOW,
        truncated=truncated,
    )


def kinds(result: BatchResponse) -> list[OutcomeKind]:
    """The outcome kinds, in item order."""
    return [o.kind for o in result.outcomes]


THREE = [txn("e1", "t1"), txn("e2", "t2"), txn("e3", "t3")]
JOB = {"data": {"type": "job", "id": "job-1", "attributes": {"status": "queued", "message": "ok"}}}


def test_2xx_accepts_every_item_and_summarises_the_job() -> None:
    """A 2xx queues the whole batch; the summary carries the job id and status, not payload values."""
    result = classify(201, JOB, THREE)
    assert result.outcomes == (ACCEPTED, ACCEPTED, ACCEPTED)
    assert result.all_accepted and result.confirmed
    assert result.summary == {"body": "json", "job_id": "job-1", "job_status": "queued"}
    assert result.status == 201 and result.elapsed == 0.25


@pytest.mark.parametrize("body", [b"", b"<html>ok</html>", b"\xff\xfe", b"[" * 5000, b'"just a string"'])
def test_2xx_with_empty_or_non_json_body_is_still_accepted(body: bytes) -> None:
    """Status decides: a 2xx with an empty, HTML, invalid-UTF-8, too-deep or non-object body is a success."""
    result = classify(200, body, THREE)
    assert result.all_accepted
    assert result.summary["body"] in {"empty", "not_json"}


def test_2xx_echo_list_is_counted() -> None:
    """An echoed ``data`` list (fraud, users) is summarised by its length only."""
    body = {"data": [{"id": "t1", "type": "fraudulentTransaction", "attributes": {"userId": "u1"}}]}
    assert classify(200, body, [fraud("t1")], route=FRAUD).summary["echoed"] == 1


def test_bulk_attributions_total_processed_matching_is_accepted() -> None:
    """``meta.totalProcessed`` equal to the batch size confirms every item."""
    items = [attribution(i) for i in range(3)]
    result = classify(200, {"meta": {"totalProcessed": 3}}, items, route=BULK)
    assert result.all_accepted and result.confirmed
    assert result.summary["total_processed"] == 3


@pytest.mark.parametrize("body", [{"meta": {"totalProcessed": 2}}, {"meta": {}}, b"", {"message": "ok"}])
def test_bulk_attributions_total_processed_mismatch_is_unconfirmed(body: Any) -> None:
    """A different or missing count marks every item ``unconfirmed`` (terminal, reported, not re-sent)."""
    items = [attribution(i) for i in range(3)]
    result = classify(200, body, items, route=BULK)
    assert result.outcomes == (UNCONFIRMED,) * 3
    assert not result.confirmed


def test_207_maps_errors_by_event_id() -> None:
    """A 207 error whose id is an item's own id rejects that item only; the others were accepted."""
    body = {"errors": [err(id="e2", detail="cardBIN must be 6 digits")], "data": JOB["data"]}
    result = classify(207, body, THREE)
    assert kinds(result) == [OutcomeKind.ACCEPTED, OutcomeKind.REJECTED, OutcomeKind.ACCEPTED]
    rejected = result.outcomes[1]
    assert (rejected.status, rejected.title, rejected.detail) == (400, "Invalid Request", "cardBIN must be 6 digits")
    assert result.summary["errors"] == 1 and result.summary["job_id"] == "job-1"


def test_207_maps_errors_by_transaction_id() -> None:
    """An error whose id is an ``attributes.transactionId`` finds the transaction event carrying it."""
    result = classify(207, {"errors": [err(id="t3")], "data": JOB["data"]}, THREE)
    assert kinds(result) == [OutcomeKind.ACCEPTED, OutcomeKind.ACCEPTED, OutcomeKind.REJECTED]


def test_207_maps_fraud_errors_by_transaction_id_as_item_id() -> None:
    """For fraud markers the item id is the transactionId, so the error id matches it directly."""
    items = [fraud("t1"), fraud("t2")]
    result = classify(207, {"errors": [err(id="t1")], "data": []}, items, route=FRAUD)
    assert kinds(result) == [OutcomeKind.REJECTED, OutcomeKind.ACCEPTED]


def test_207_falls_back_to_the_source_pointer() -> None:
    """Without a usable id, ``source.pointer`` ``/data/<i>/...`` names the item by position."""
    body = {"errors": [err(id="unknown", pointer="/data/1/attributes/cardBIN"), err(pointer="/data/2")]}
    result = classify(207, body, THREE)
    assert kinds(result) == [OutcomeKind.ACCEPTED, OutcomeKind.REJECTED, OutcomeKind.REJECTED]
    assert result.outcomes[1].pointer == "/data/1/attributes/cardBIN"


def test_207_transient_item_errors_are_retried_with_the_server_hint() -> None:
    """A 5xx/429/408 for one item makes that item ``retry``; the batch carries the Retry-After hint."""
    body = {"errors": [err(503, id="e1"), err("429", id="e2"), err("408", id="e3")]}
    result = classify(207, body, THREE, headers={"Retry-After": "4"})
    assert kinds(result) == [OutcomeKind.RETRY] * 3
    assert result.outcomes[0].status == 503
    assert result.retry_after == 4.0


def test_207_permanent_error_wins_over_transient_for_one_item() -> None:
    """An item named by a 503 and a 400 is rejected: a retry would meet the 400 again."""
    body = {"errors": [err("503", id="e1"), err("400", id="e1", detail="amount")]}
    result = classify(207, body, THREE)
    assert result.outcomes[0].kind is OutcomeKind.REJECTED and result.outcomes[0].detail == "amount"


def test_207_error_without_usable_status_is_retried() -> None:
    """A named error with a missing or garbage status is not proof of a permanent failure: retry."""
    body = {"errors": [{"id": "e1", "title": "?"}, err("oops", id="e2")]}
    assert kinds(classify(207, body, THREE))[:2] == [OutcomeKind.RETRY, OutcomeKind.RETRY]


def test_207_unattributable_permanent_error_bisects_the_unnamed_items() -> None:
    """An error naming no item of ours makes every unnamed item a suspect to re-send in halves."""
    body = {"errors": [err(id="e1"), err(id="nobody-we-know")]}
    result = classify(207, body, THREE)
    assert result.outcomes[0].kind is OutcomeKind.REJECTED
    assert result.outcomes[1:] == (BISECT, BISECT)


def test_207_unattributable_transient_error_retries_the_unnamed_items() -> None:
    """If every unplaceable error is transient, the unnamed items are simply retried."""
    result = classify(207, {"errors": [err("500", id="ghost")]}, THREE)
    assert kinds(result) == [OutcomeKind.RETRY] * 3


def test_207_shared_transaction_id_is_narrowed_by_pointer() -> None:
    """Two events of one transaction: the pointer picks the right one."""
    items = [txn("e1", "t1"), txn("e2", "t1"), txn("e3", "t3")]
    result = classify(207, {"errors": [err(id="t1", pointer="/data/1/attributes/status")]}, items)
    assert kinds(result) == [OutcomeKind.ACCEPTED, OutcomeKind.REJECTED, OutcomeKind.ACCEPTED]


def test_207_shared_transaction_id_without_pointer_bisects_only_the_candidates() -> None:
    """Without a pointer, only the items sharing that transactionId become suspects."""
    items = [txn("e1", "t1"), txn("e2", "t1"), txn("e3", "t3")]
    result = classify(207, {"errors": [err(id="t1")]}, items)
    assert result.outcomes == (BISECT, BISECT, ACCEPTED)


@pytest.mark.parametrize("body", [{"data": JOB["data"]}, {"errors": []}, b"<html>multi</html>", {"errors": "x"}])
def test_207_without_readable_errors_bisects(body: Any) -> None:
    """A 207 that lists no readable error still says something failed: bisect a batch, retry a single item."""
    assert classify(207, body, THREE).outcomes == (BISECT,) * 3
    assert kinds(classify(207, body, THREE[:1])) == [OutcomeKind.RETRY]


def test_207_with_truncated_body_bisects() -> None:
    """A body cut at the size cap cannot be parsed, so the batch is treated as unattributable."""
    raw = orjson.dumps({"errors": [err(id="e1")]})[:20]
    result = classify(207, raw, THREE, truncated=True)
    assert result.outcomes == (BISECT,) * 3 and result.summary["truncated"] is True


def test_2xx_listing_errors_is_treated_as_multi_status() -> None:
    """A 200 that nevertheless carries ``errors`` must not count the named item as delivered."""
    assert kinds(classify(200, {"errors": [err(id="e2")]}, THREE))[1] is OutcomeKind.REJECTED


def test_single_item_batch_owns_every_error() -> None:
    """In a one-item batch an error with no id and no pointer is that item's."""
    result = classify(207, {"errors": [err("422")]}, THREE[:1])
    assert result.outcomes[0].kind is OutcomeKind.REJECTED and result.outcomes[0].status == 422


def test_whole_400_naming_items_rejects_them_and_resends_the_rest() -> None:
    """A refused request that names items: those are rejected, the others were never accepted."""
    result = classify(400, {"errors": [err(id="e2"), err(pointer="/data/0/attributes/amount")]}, THREE)
    assert result.outcomes[2] is NOT_ATTEMPTED
    assert kinds(result)[:2] == [OutcomeKind.REJECTED, OutcomeKind.REJECTED]


def test_whole_400_naming_items_and_an_unplaceable_error_bisects_the_rest() -> None:
    """If the refusal also has an error we cannot place, the unnamed items are bisected, not re-sent as is."""
    result = classify(400, {"errors": [err(id="e1"), err(id="ghost")]}, THREE)
    assert result.outcomes[0].kind is OutcomeKind.REJECTED
    assert result.outcomes[1:] == (BISECT, BISECT)


@pytest.mark.parametrize("status", [400, 409, 413, 422])
@pytest.mark.parametrize("body", [{"errors": [err(detail="bad batch")]}, {"message": "Bad Request"}, b"nope"])
def test_whole_request_refusal_naming_no_item_bisects(status: int, body: Any) -> None:
    """A 400/409/413/422 that names no item, for more than one item, asks the dispatcher to split the batch."""
    assert classify(status, body, THREE).outcomes == (BISECT,) * 3


def test_whole_400_for_a_single_item_rejects_it() -> None:
    """A single refused item cannot be bisected: it is rejected with the API's reason."""
    result = classify(400, {"errors": [err(detail="cardBIN must be 6 digits")]}, THREE[:1])
    outcome = result.outcomes[0]
    assert (outcome.kind, outcome.status, outcome.detail) == (OutcomeKind.REJECTED, 400, "cardBIN must be 6 digits")


def test_409_for_a_single_item_is_rejected_not_retried() -> None:
    """A conflict is permanent for that body and is not counted as delivered: rejected with status 409."""
    result = classify(409, {"errors": [err("409", detail="conflict")]}, THREE[:1])
    assert (result.outcomes[0].kind, result.outcomes[0].status) == (OutcomeKind.REJECTED, 409)


@pytest.mark.parametrize("status", [403, 404, 405, 415])
def test_other_4xx_naming_no_item_rejects_the_whole_batch(status: int) -> None:
    """403/404 and other 4xx without named items reject every item; a gateway message becomes the detail."""
    result = classify(status, {"message": "Unauthorized"}, THREE)
    assert kinds(result) == [OutcomeKind.REJECTED] * 3
    assert {(o.status, o.detail) for o in result.outcomes} == {(status, "Unauthorized")}


def test_404_naming_an_item_rejects_it_and_resends_the_rest() -> None:
    """A 404 that names one unknown transaction rejects that item only."""
    result = classify(404, {"errors": [err("404", id="t2")]}, THREE)
    assert result.outcomes == (NOT_ATTEMPTED, result.outcomes[1], NOT_ATTEMPTED)
    assert result.outcomes[1].kind is OutcomeKind.REJECTED


def test_401_raises_auth_error() -> None:
    """A 401 reaching classification is an auth failure, never a per-item rejection."""
    with pytest.raises(AuthError) as info:
        classify(401, {"message": "Unauthorized"}, THREE)
    assert info.value.status == 401 and not info.value.retryable


@pytest.mark.parametrize(
    ("status", "headers", "expected"),
    [
        (429, {"Retry-After": "7"}, 7.0),
        (429, {"Retry-After": "Thu, 02 Jan 2025 03:04:35 GMT"}, 30.0),
        (503, {"X-RateLimit-Reset": str(int(NOW) + 11)}, 11.0),
        (500, {}, None),
        (408, {}, None),
        (502, {"Retry-After": "garbage"}, None),
    ],
)
def test_transient_statuses_raise_with_the_server_hint(
    status: int, headers: dict[str, str], expected: float | None
) -> None:
    """408, 429 and 5xx raise TransientDeliveryError carrying ``retry_after`` from the headers."""
    with pytest.raises(TransientDeliveryError) as info:
        classify(status, b"<html>busy</html>", THREE, headers=headers)
    assert info.value.status == status and info.value.retryable
    assert info.value.retry_after == (pytest.approx(expected) if expected is not None else None)


def test_unexpected_redirect_is_transient_not_a_rejection() -> None:
    """A 3xx (redirects are not followed) is a misconfiguration or gateway issue, never a record's fault."""
    with pytest.raises(TransientDeliveryError):
        classify(302, b"", THREE)


def test_error_text_is_truncated() -> None:
    """Server-supplied detail is cut to a bounded length before it travels further."""
    result = classify(400, {"errors": [err(detail="x" * 10_000)]}, THREE[:1])
    detail = result.outcomes[0].detail
    assert detail is not None and len(detail) == 512


def test_counts_by_kind() -> None:
    """``counts()`` tallies the outcome kinds for metrics and logs."""
    result = classify(207, {"errors": [err(id="e1"), err("503", id="e2")]}, THREE)
    assert result.counts() == {OutcomeKind.REJECTED: 1, OutcomeKind.RETRY: 1, OutcomeKind.ACCEPTED: 1}
