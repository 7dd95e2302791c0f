"""The Kard sandbox over real HTTP (raw httpx): validation, auth, every fault type, and inspection."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from bridge.sandbox.process import SandboxProcess
from tests.fixtures.sandbox import SandboxFactory

ORG = "org-1"


def txn(event_id: str, **attrs: Any) -> dict[str, Any]:
    """A valid APPROVED ``transaction`` item; ``attrs`` override attributes (None removes one)."""
    attributes: dict[str, Any] = {
        "userId": "u1",
        "amount": 1000,
        "status": "APPROVED",
        "currency": "USD",
        "description": "ADVANCEAUTO",
        "cardBIN": "123456",
        "cardLastFour": "4321",
        "direction": "DEBIT",
        "paymentType": "CARD",
        "transactionId": f"txn-{event_id}",
        "authorizationDate": "2025-01-02T03:04:05Z",
        "merchant": {"name": "ADVANCEAUTO", "addrState": "PA"},
    }
    for key, value in attrs.items():
        if value is None:
            attributes.pop(key, None)
        else:
            attributes[key] = value
    return {"type": "transaction", "id": event_id, "attributes": attributes}


def matched(event_id: str, **attrs: Any) -> dict[str, Any]:
    """A valid ``matchedTransaction`` item (paymentType CARD); ``attrs`` override attributes."""
    attributes: dict[str, Any] = {
        "userId": "u1",
        "amount": 500,
        "description": "STORE",
        "direction": "DEBIT",
        "paymentType": "CARD",
        "authorizationDate": "2025-01-02T03:04:05+02:00",
        "transactionId": f"txn-{event_id}",
    }
    attributes.update(attrs)
    return {"type": "matchedTransaction", "id": event_id, "attributes": {k: v for k, v in attributes.items() if v}}


def offer_attribution(entity: str = "offer-1", **attrs: Any) -> dict[str, Any]:
    """A valid user ``offerAttribution`` item."""
    base = {"entityId": entity, "eventCode": "VIEW", "medium": "SEARCH", "eventDate": "2025-01-01T00:00:00Z"}
    return {"type": "offerAttribution", "attributes": {**base, **attrs}}


@pytest.fixture
def client(sandbox: SandboxProcess) -> Iterator[httpx.Client]:
    """An httpx client with a valid bearer token for the session sandbox."""
    with _client(sandbox) as http:
        yield http


def _client(sb: SandboxProcess, timeout: float = 10.0) -> httpx.Client:
    token = httpx.post(
        f"{sb.base_url}/v2/auth/token", json={"client_id": sb.client_id, "client_secret": sb.client_secret}
    ).json()["access_token"]
    return httpx.Client(
        base_url=sb.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout, trust_env=False
    )


def post_txns(client: httpx.Client, items: list[dict[str, Any]], **kwargs: Any) -> httpx.Response:
    """POST a transactions batch."""
    return client.post(f"/v2/issuers/{ORG}/transactions", json={"data": items}, **kwargs)


def pointers(response: httpx.Response) -> list[tuple[str | None, str]]:
    """``(id, pointer)`` of every error object in an ErrorResponse."""
    return [(e.get("id"), e["source"]["pointer"]) for e in response.json()["errors"]]


# ------------------------------------------------------------------------------------------------- auth


def test_token_endpoint_issues_bearer_token_and_refuses_wrong_credentials(sandbox: SandboxProcess) -> None:
    """The token endpoint answers TokenResponse for the right credentials and a 401 ErrorResponse otherwise."""
    ok = httpx.post(
        f"{sandbox.base_url}/v2/auth/token", json={"client_id": "sandbox-client", "client_secret": "sandbox-secret"}
    )
    assert ok.status_code == 200
    body = ok.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]
    bad = httpx.post(f"{sandbox.base_url}/v2/auth/token", json={"client_id": "sandbox-client", "client_secret": "no"})
    assert bad.status_code == 401
    assert bad.json()["errors"][0]["status"] == "401"
    assert sandbox.control.stats()["token_requests"] == 2


def test_missing_or_unknown_token_gets_401_jsonapi(sandbox: SandboxProcess) -> None:
    """Calls without a valid bearer token are refused with a JSON:API 401 body, and nothing is recorded."""
    with httpx.Client(base_url=sandbox.base_url) as raw:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
            response = raw.post(f"/v2/issuers/{ORG}/transactions", json={"data": [txn("e1")]}, headers=headers)
            assert response.status_code == 401
            error = response.json()["errors"][0]
            assert error["status"] == "401" and error["title"] == "Unauthorized" and error["detail"]
    assert sandbox.control.received() == []


def test_expired_token_gets_401(sandbox_factory: SandboxFactory) -> None:
    """A token used after its TTL is refused with 401 "expired"; a fresh token works again."""
    sb = sandbox_factory(token_ttl=2)
    with _client(sb) as client:
        assert client.get("/v2/ping").status_code == 200
        time.sleep(2.2)
        response = client.get("/v2/ping")
    assert response.status_code == 401
    assert "expired" in response.json()["errors"][0]["detail"]
    with _client(sb) as fresh:
        assert fresh.get("/v2/ping").status_code == 200


def test_control_api_expires_tokens(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """``/_sandbox/tokens/expire`` makes issued tokens fail with 401 at once."""
    assert sandbox.control.expire_tokens() >= 1
    assert client.get("/v2/ping").status_code == 401


# ------------------------------------------------------------------------------------------- validation


def test_over_limit_batch_is_rejected_whole(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """501 transactions get one 400 ErrorResponse pointing at /data; none is recorded."""
    response = post_txns(client, [txn(f"e{i}") for i in range(501)])
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["status"] == "400" and error["source"]["pointer"] == "/data" and "500" in error["detail"]
    assert sandbox.control.received() == []
    assert post_txns(client, [txn(f"e{i}") for i in range(500)]).status_code == 202


def test_naive_datetime_is_rejected_with_pointer(client: httpx.Client) -> None:
    """A datetime without a zone is an error at its pointer; the detail says the zone is missing."""
    response = post_txns(client, [txn("e1", authorizationDate="2025-01-02T03:04:05")])
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["source"]["pointer"] == "/data/0/attributes/authorizationDate"
    assert error["id"] == "e1" and "time zone" in error["detail"]


def test_unknown_enum_value_is_rejected_with_pointer(client: httpx.Client) -> None:
    """An undocumented enum value (status, direction, addrState) is an error at its pointer."""
    bad = txn("e1", status="PENDING", direction="SIDEWAYS", merchant={"name": "M", "addrState": "XX"})
    response = post_txns(client, [bad])
    assert response.status_code == 400
    assert sorted(p for _, p in pointers(response)) == [
        "/data/0/attributes/direction",
        "/data/0/attributes/merchant/addrState",
        "/data/0/attributes/status",
    ]


def test_mixed_batch_gets_207_naming_each_bad_item(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Good items are queued as a job, each bad item is named by id and pointer, and only good ones are stored."""
    items = [txn("ok-1"), txn("bad-1", cardBIN="12345"), matched("ok-2"), txn("bad-2", amount=10.5), txn("ok-3")]
    response = post_txns(client, items)
    assert response.status_code == 207
    body = response.json()
    assert body["data"]["type"] == "job" and body["data"]["attributes"]["status"] == "queued"
    assert pointers(response) == [("bad-1", "/data/1/attributes/cardBIN"), ("bad-2", "/data/3/attributes/amount")]
    assert all(e["status"] == "400" for e in body["errors"])
    received = sandbox.control.received("transactions")
    assert [r["key"] for r in received] == ["ok-1", "ok-2", "ok-3"]
    assert [r["index"] for r in received] == [0, 2, 4]
    assert received[1]["item"] == items[2] and received[0]["params"] == {"organizationId": ORG}


def test_batch_with_no_valid_item_gets_400_listing_every_item(client: httpx.Client) -> None:
    """When no item is valid the answer is 400 with every item's errors (id and pointer)."""
    response = post_txns(client, [txn("a", userId=None), txn("b", cardLastFour=None)])
    assert response.status_code == 400
    assert pointers(response) == [("a", "/data/0/attributes/userId"), ("b", "/data/1/attributes/cardLastFour")]


@pytest.mark.parametrize(
    ("status", "missing"),
    [("APPROVED", "authorizationDate"), ("SETTLED", "settledDate"), ("DECLINED", "transactionDate"),
     ("REVERSED", "transactionDate"), ("RETURNED", "transactionDate")],
)  # fmt: skip
def test_date_required_by_status(client: httpx.Client, status: str, missing: str) -> None:
    """Each status requires its own date field."""
    response = post_txns(client, [txn("e1", status=status, authorizationDate=None)])
    assert response.status_code == 400
    assert pointers(response) == [("e1", f"/data/0/attributes/{missing}")]
    dated = txn("e1", status=status, **{missing: "2025-01-02T03:04:05.123+05:30"})
    assert post_txns(client, [dated]).status_code == 202


@pytest.mark.parametrize(
    ("attrs", "pointer"),
    [
        ({"paymentType": "CASH", "cardBIN": "123456"}, "cardBIN"),
        ({"paymentType": "CASH", "cardLastFour": "4321"}, "cardLastFour"),
        ({"paymentType": "UNKNOWN", "cardNetwork": "VISA"}, "cardNetwork"),
        ({"paymentType": "UNKNOWN", "matchedLocationId": "loc"}, "matchedLocationId"),
        ({"paymentType": "UNKNOWN", "matchedOfferId": "offer"}, "matchedOfferId"),
        ({"paymentType": "CARD", "matchedOfferId": "offer"}, "cardLastFour"),
        ({"paymentType": "CASH", "cardProductId": "p"}, "cardProductId"),
    ],
)
def test_matched_transaction_conditional_rules(client: httpx.Client, attrs: dict[str, Any], pointer: str) -> None:
    """The paymentType rules of matchedTransaction ("must be left out", "required when") are enforced."""
    response = post_txns(client, [matched("m1", **attrs)])
    assert response.status_code == 400
    assert pointers(response) == [("m1", f"/data/0/attributes/{pointer}")]


def test_matched_transaction_allowed_combinations(client: httpx.Client) -> None:
    """Allowed matchedTransaction shapes pass: UNKNOWN with an offer and an orderId, CARD with last four."""
    items = [
        matched("m1", paymentType="UNKNOWN", matchedOfferId="o", orderId="ord"),
        matched("m2", matchedOfferId="o", cardLastFour="4321", cardBIN="123456", receiptMedium="PHYSICAL"),
        matched("m3", paymentType="CASH", matchedLocationId="loc"),
    ]
    assert post_txns(client, items).status_code == 202


@pytest.mark.parametrize(
    ("attrs", "pointer"),
    [
        ({"cardBIN": "1234567"}, "/data/0/attributes/cardBIN"),
        ({"amount": "1000"}, "/data/0/attributes/amount"),
        ({"subtotal": True}, "/data/0/attributes/subtotal"),
        ({"paymentType": "CASH"}, "/data/0/attributes/paymentType"),
        ({"cardBin": "123456"}, "/data/0/attributes/cardBin"),
        ({"processorMids": {"processor": "VISA", "mids": {"vmid": "1"}}}, "/data/0/attributes/processorMids/mids/vsid"),
        ({"processorMids": {"processor": "AMEX", "mids": {"vmid": "1", "vsid": "2"}}},
         "/data/0/attributes/processorMids/processor"),
        ({"authorizationDate": "2025-13-02T03:04:05Z"}, "/data/0/attributes/authorizationDate"),
        ({"authorizationDate": "02/01/2025"}, "/data/0/attributes/authorizationDate"),
        ({"merchant": {"addrCity": "X"}}, "/data/0/attributes/merchant/name"),
    ],
)  # fmt: skip
def test_field_rules(client: httpx.Client, attrs: dict[str, Any], pointer: str) -> None:
    """Types, formats, nested objects and unknown fields are checked and reported at the right pointer."""
    response = post_txns(client, [txn("e1", **attrs)])
    assert response.status_code == 400
    assert pointers(response) == [("e1", pointer)]


def test_envelope_errors_are_whole_request_400(client: httpx.Client) -> None:
    """Malformed JSON, a missing data member, a non-array data and an unknown type are 400s with pointers."""
    url = f"/v2/issuers/{ORG}/transactions"
    headers = {"Content-Type": "application/json"}
    assert client.post(url, content=b"{not json", headers=headers).status_code == 400
    assert client.post(url, json={"items": []}).json()["errors"][0]["source"]["pointer"] in ("/data", "/items")
    assert client.post(url, json={"data": {}}).json()["errors"][0]["source"]["pointer"] == "/data"
    assert client.post(url, json={"data": []}).status_code == 400
    response = post_txns(client, [{**txn("e1"), "type": "refund"}])
    assert pointers(response) == [("e1", "/data/0/type")]
    assert (
        client.post(url, content=b"a=b", headers={"Content-Type": "application/x-www-form-urlencoded"}).status_code
        == 415
    )


def test_non_207_endpoint_rejects_whole_request_listing_bad_items(
    client: httpx.Client, sandbox: SandboxProcess
) -> None:
    """User attributions have no 207: one bad item fails the request, every bad item is listed, nothing is kept."""
    items = [offer_attribution(), offer_attribution(medium="PUSH"), offer_attribution(eventDate="2025-01-01T00:00:00")]
    response = client.post(f"/v2/issuers/{ORG}/users/u1/attributions", json={"data": items})
    assert response.status_code == 400
    assert pointers(response) == [(None, "/data/1/attributes/medium"), (None, "/data/2/attributes/eventDate")]
    assert sandbox.control.received() == []
    ok = client.post(f"/v2/issuers/{ORG}/users/u1/attributions", json={"data": items[:1]})
    assert ok.status_code == 202 and ok.json()["data"]["type"] == "job"
    assert (
        len(client.post(f"/v2/issuers/{ORG}/users/u1/attributions", json={"data": items[:1] * 101}).json()["errors"])
        == 1
    )


def test_bulk_attributions_and_eligibility(client: httpx.Client, sandbox: SandboxProcess) -> None:
    """Bulk attributions answer meta.totalProcessed; eligibility ingest accepts segmentUser events."""
    item = offer_attribution()
    item["attributes"].update(issuerId=ORG, userId="u1")
    response = client.post("/v2/internal/attributions", json={"data": [item, item]})
    assert response.status_code == 200 and response.json() == {"meta": {"totalProcessed": 2}}
    attributes = {
        "userId": "u1",
        "issuerId": ORG,
        "segmentId": "s1",
        "status": "ACTIVE",
        "eventTime": "2021-07-02T17:47:06Z",
    }
    event: dict[str, Any] = {"type": "segmentUser", "attributes": attributes}
    assert client.post("/internal/eligibility-broker/ingest", json={"data": [event]}).status_code == 202
    bad = copy.deepcopy(event)
    bad["attributes"]["status"] = "GONE"
    assert pointers(client.post("/internal/eligibility-broker/ingest", json={"data": [event, bad]})) == [
        (None, "/data/1/attributes/status")
    ]
    keys = [r["key"] for r in sandbox.control.received("bulk_attributions")]
    assert len(keys) == 2 and keys[0] == keys[1] and keys[0].startswith("digest:")
    assert sandbox.control.duplicates("bulk_attributions") == {"bulk_attributions": {keys[0]: 2}}


def test_fraud_207_echoes_accepted_markers(client: httpx.Client) -> None:
    """Fraud markers are echoed; a bad one yields a 207 with the accepted list as data."""
    good = {"type": "fraudulentTransaction", "id": "t1", "attributes": {"userId": "u1"}}
    bad = {"type": "fraud", "id": "t2", "attributes": {"userId": "u1"}}
    response = client.post(f"/v2/issuers/{ORG}/fraud", json={"data": [good, bad]})
    assert response.status_code == 207
    assert response.json()["data"] == [good] and pointers(response) == [("t2", "/data/1/type")]
    assert client.post(f"/v2/issuers/{ORG}/fraud", json={"data": [good]}).json() == {"data": [good]}


def test_user_lifecycle(client: httpx.Client) -> None:
    """Users: create echoes, re-create is a per-item 409, update/delete need an existing user (else 404)."""
    user = {"type": "user", "id": "u1", "attributes": {"enrolledRewards": ["CARDLINKED"], "zipCode": "11238"}}
    other = {"type": "user", "id": "u2", "attributes": {"enrolledRewards": []}}
    assert client.post(f"/v2/issuers/{ORG}/users", json={"data": [user]}).json() == {"data": [user]}
    again = client.post(f"/v2/issuers/{ORG}/users", json={"data": [user, other]})
    assert again.status_code == 207 and again.json()["data"] == [other]
    assert [(e["status"], e["id"]) for e in again.json()["errors"]] == [("409", "u1")]
    assert client.post(f"/v2/issuers/{ORG}/users", json={"data": [user]}).status_code == 409
    assert client.put(f"/v2/issuers/{ORG}/users/u1", json={"data": user}).json() == {"data": user}
    assert client.put(f"/v2/issuers/{ORG}/users/u9", json={"data": {**user, "id": "u9"}}).status_code == 404
    assert client.put(f"/v2/issuers/{ORG}/users/u2", json={"data": user}).status_code == 400
    deleted = client.delete(f"/v2/issuers/{ORG}/users/u1")
    assert deleted.json() == {"data": {"type": "user", "id": "u1", "attributes": {}}}
    assert client.delete(f"/v2/issuers/{ORG}/users/u1").status_code == 404
    assert client.post(f"/v2/issuers/{ORG}/users", json={"data": [user]}).status_code == 201


def test_unknown_route_is_404_jsonapi(client: httpx.Client) -> None:
    """Unknown paths and wrong methods get JSON:API 404/405 bodies."""
    assert client.get("/v2/nothing").json()["errors"][0]["status"] == "404"
    assert client.get(f"/v2/issuers/{ORG}/transactions").status_code == 405
