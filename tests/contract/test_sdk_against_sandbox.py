"""The official Kard SDK (the test-only oracle) against the sandbox: proof that the sandbox is faithful.

Every served endpoint is called through ``kard.AsyncKardApi`` in OAuth mode with payloads built from the SDK's
own request models; the SDK's response models must parse every answer, and its error classes must parse every
error body. The sandbox must also record exactly the wire JSON the SDK sent. Invalid payloads that the SDK can
send (open enums, over-limit batches) are refused as CONTRACT.md says; a naive datetime cannot be sent through
the SDK (it adds the local zone), so that case goes through raw httpx.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any, cast

import httpx
import pytest
from kard import AsyncKardApi
from kard.attributions import (
    InternalApiAttribution_NotificationAttribution,
    InternalApiAttribution_OfferAttribution,
    InternalApiNotificationAttributionAttributes,
    InternalApiOfferAttributionAttributes,
)
from kard.commons import EmptyObject, ErrorResponse
from kard.commons.errors import ConflictError, DoesNotExistError, InternalServerError, InvalidRequest, UnauthorizedError
from kard.core.api_error import ApiError
from kard.core.jsonable_encoder import jsonable_encoder
from kard.core.serialization import convert_and_respect_annotation_metadata
from kard.eligibility_broker import IngestionEvents_SegmentUser, SegmentationIngestionEventAttributes
from kard.ping.errors import NetworkBlockedError
from kard.transactions import (
    AuditAttributes,
    CreateAuditRequestDataUnion_Audit,
    FraudulentTransactionAttributes,
    FraudulentTransactionData,
    MatchedTransactionsAttributes,
    Merchant,
    ProcessorMid_Visa,
    Transactions_MatchedTransaction,
    Transactions_Transaction,
    TransactionsAttributes,
    VisaMidDetails,
)
from kard.users import UserRequestAttributes, UserRequestDataUnion_User
from kard.users.attributions import (
    CreateAttributionRequestUnion_NotificationAttribution,
    CreateAttributionRequestUnion_OfferAttribution,
    NotificationAttributionAttributes,
    OfferAttributionAttributes,
)
from kard.users.uploads import (
    CreateUploadPartDataUnion_HistoricalTransaction,
    CreateUploadRequestDataUnion_HistoricalTransactionStart,
    UpdateUploadRequestDataUnion_HistoricalTransactionComplete,
)

from bridge.sandbox.process import SandboxProcess

ORG = "org-sdk"
UTC = dt.UTC
WHEN = dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def wire(model: Any) -> Any:
    """The exact JSON the SDK sends for ``model`` (CONTRACT.md §0)."""
    return jsonable_encoder(
        convert_and_respect_annotation_metadata(object_=model, annotation=type(model), direction="write")
    )


async def aclose_sdk(api: AsyncKardApi) -> None:
    """Close the httpx clients an ``AsyncKardApi`` created: the SDK has no close(), so reach in."""
    wrapper = api._client_wrapper
    await wrapper.httpx_client.httpx_client.aclose()
    token_getter = wrapper._async_token
    if token_getter is not None:  # OAuth mode: the token provider has its own client
        provider: Any = cast(Any, token_getter).__self__
        await provider._auth_client._raw_client._client_wrapper.httpx_client.httpx_client.aclose()


@pytest.fixture
async def kard(sandbox: SandboxProcess) -> AsyncIterator[AsyncKardApi]:
    """An SDK client in OAuth mode (client id/secret) pointed at the sandbox."""
    api = AsyncKardApi(base_url=sandbox.base_url, client_id=sandbox.client_id, client_secret=sandbox.client_secret)
    yield api
    await aclose_sdk(api)


def transaction(event_id: str, **overrides: Any) -> Transactions_Transaction:
    """A full ``transaction`` item built with the SDK models (the SDK docstring example)."""
    attrs: dict[str, Any] = {
        "user_id": "u1",
        "status": "APPROVED",
        "amount": 1000,
        "subtotal": 800,
        "currency": "USD",
        "direction": "DEBIT",
        "payment_type": "CARD",
        "description": "ADVANCEAUTO",
        "description_2": "ADVANCEAUTO",
        "mcc": "1234",
        "card_bin": "123456",
        "card_last_four": "4321",
        "card_network": "VISA",
        "authorization_date": WHEN,
        "merchant": Merchant(
            id="12345678901234567",
            name="ADVANCEAUTO",
            addr_street="125 Main St",
            addr_city="Philadelphia",
            addr_state="PA",
            addr_zipcode="19147",
            addr_country="United States",
            latitude="37.9419429",
            longitude="-73.1446869",
            store_id="12345",
        ),
        "authorization_code": "123456",
        "retrieval_reference_number": "100804333919",
        "acquirer_reference_number": "1234567890123456789012345678",
        "system_trace_audit_number": "333828",
        "transaction_id": f"txn-{event_id}",
        "card_product_id": "1234567890123456789012345678",
        "user_zip_code": "19147",
        "processor_mids": ProcessorMid_Visa(mids=VisaMidDetails(vmid="12345678901", vsid="12345678")),
    }
    attrs.update(overrides)
    return Transactions_Transaction(id=event_id, attributes=TransactionsAttributes(**attrs))


def matched_transaction(event_id: str) -> Transactions_MatchedTransaction:
    """A ``matchedTransaction`` item built with the SDK models."""
    return Transactions_MatchedTransaction(
        id=event_id,
        attributes=MatchedTransactionsAttributes(
            user_id="u1", amount=1000, description="STORE", direction="DEBIT", payment_type="CARD",
            authorization_date=WHEN.astimezone(dt.timezone(dt.timedelta(hours=-5))), matched_offer_id="offer-1",
            card_last_four="4321", transaction_id=f"txn-{event_id}", order_id="ord-9", receipt_medium="ELECTRONIC",
        ),
    )  # fmt: skip


async def test_sdk_gets_a_token_and_pings(kard: AsyncKardApi, sandbox: SandboxProcess) -> None:
    """The SDK fetches one token lazily, caches it, and parses the ping answer."""
    first = await kard.ping.ping()
    second = await kard.ping.ping()
    assert first.status == "OK" and first.message == "Ping successful" and second.timestamp
    token = await kard.auth.get_token(client_id=sandbox.client_id, client_secret=sandbox.client_secret)
    assert token.token_type == "Bearer" and token.expires_in == 3600
    assert sandbox.control.stats()["token_requests"] == 2
    headers = sandbox.control.requests("ping")[0]["headers"]
    assert headers["X-Fern-SDK-Name"] == "kard-financial-sdk" and headers["Authorization"] == "Bearer ***"


async def test_sdk_transactions_both_variants(kard: AsyncKardApi, sandbox: SandboxProcess) -> None:
    """Both transaction variants are accepted as a queued job and stored exactly as the SDK sent them."""
    items = [
        transaction("evt-1"),
        matched_transaction("evt-2"),
        transaction("evt-3", status="SETTLED", settled_date=WHEN),
    ]
    response = await kard.transactions.create(ORG, data=items)
    assert response.data.type == "job" and response.data.attributes.status == "queued" and response.data.id
    received = sandbox.control.received("transactions")
    assert [r["item"] for r in received] == [wire(i) for i in items]
    assert received[0]["params"] == {"organizationId": ORG}


async def test_sdk_fraud_and_audits(kard: AsyncKardApi) -> None:
    """Fraud markers are echoed and audits are created, both parsed by the SDK models."""
    marker = FraudulentTransactionData(
        type="fraudulentTransaction", id="txn-1", attributes=FraudulentTransactionAttributes(user_id="u1")
    )
    fraud = await kard.transactions.create_fraud_markers(ORG, data=[marker])
    assert fraud.data == [marker]
    audit = CreateAuditRequestDataUnion_Audit(
        attributes=AuditAttributes(audit_code=8001, merchant_name="M", audit_description="dup", transaction_id="txn-1")
    )
    audits = await kard.transactions.create_audits(ORG, "u1", data=[audit])
    assert audits.data[0].type == "audit" and audits.data[0].attributes.transaction_id == "txn-1"


async def test_sdk_attributions_and_eligibility(kard: AsyncKardApi, sandbox: SandboxProcess) -> None:
    """User attributions (job), bulk attributions (totalProcessed) and eligibility ingest all succeed."""
    job = await kard.users.attributions.create(
        ORG,
        "u1",
        data=[
            CreateAttributionRequestUnion_OfferAttribution(
                attributes=OfferAttributionAttributes(
                    entity_id="o1", event_code="VIEW", medium="SEARCH", event_date=WHEN
                )
            ),
            CreateAttributionRequestUnion_NotificationAttribution(
                attributes=NotificationAttributionAttributes(
                    entity_id="n1", event_code="IMPRESSION", medium="PUSH", event_date=WHEN
                )
            ),
        ],
    )
    assert job.data.type == "job" and job.data.attributes.status == "queued"
    common: dict[str, Any] = {"issuer_id": ORG, "user_id": "u1", "event_date": WHEN}
    bulk = await kard.attributions.internal_bulk_create_attributions(
        data=[
            InternalApiAttribution_OfferAttribution(
                attributes=InternalApiOfferAttributionAttributes(
                    entity_id="o1", event_code="VIEW", medium="EMAIL", **common
                )
            ),
            InternalApiAttribution_NotificationAttribution(
                attributes=InternalApiNotificationAttributionAttributes(
                    entity_id="n1", event_code="VIEW", medium="PUSH", **common
                )
            ),
        ]
    )
    assert bulk.meta.total_processed == 2
    event = IngestionEvents_SegmentUser(
        attributes=SegmentationIngestionEventAttributes(
            user_id="u1", issuer_id=ORG, segment_id="s1", status="INACTIVE", event_time=WHEN
        )
    )
    assert await kard.eligibility_broker.ingest(data=[event]) is None
    assert sandbox.control.received("eligibility")[0]["item"] == wire(event)


async def test_sdk_user_lifecycle_and_uploads(kard: AsyncKardApi) -> None:
    """Users are created, updated and deleted; a historical upload is started, filled and completed."""
    user = UserRequestDataUnion_User(
        id="u1", attributes=UserRequestAttributes(enrolled_rewards=["CARDLINKED"], zip_code="11238", birth_year="1990")
    )
    assert (await kard.users.create(ORG, data=[user])).data == [user]
    assert (await kard.users.update(ORG, "u1", data=user)).data == user
    deleted = await kard.users.delete(ORG, "u1")
    assert deleted.data.id == "u1" and deleted.data.type == "user"
    start = await kard.users.uploads.create(
        ORG, "u1", data=CreateUploadRequestDataUnion_HistoricalTransactionStart(attributes=EmptyObject())
    )
    upload_id = start.data.id
    part = CreateUploadPartDataUnion_HistoricalTransaction(id="h1", attributes=transaction("h1").attributes)
    parts = await kard.users.uploads.create_part(ORG, "u1", upload_id, data=[part])
    assert [p.id for p in parts.data] == ["h1"]
    done = await kard.users.uploads.update(
        ORG,
        "u1",
        upload_id,
        data=UpdateUploadRequestDataUnion_HistoricalTransactionComplete(id=upload_id, attributes=EmptyObject()),
    )
    assert done.data.id == upload_id and done.data.type == "historicalTransactionComplete"


async def test_sdk_returns_207_as_success_with_errors_extra(kard: AsyncKardApi) -> None:
    """The SDK parses a 207 as its success model; the per-item errors survive as the ``errors`` extra."""
    response = await kard.transactions.create(ORG, data=[transaction("ok"), transaction("bad", card_bin="12345")])
    assert response.data.type == "job"
    errors = ErrorResponse.model_validate({"errors": response.model_extra["errors"]}).errors
    assert [(e.id, e.source.pointer if e.source else None) for e in errors] == [("bad", "/data/1/attributes/cardBIN")]
    user = UserRequestDataUnion_User(id="u1", attributes=UserRequestAttributes(enrolled_rewards=[]))
    other = UserRequestDataUnion_User(id="u2", attributes=UserRequestAttributes(enrolled_rewards=[]))
    await kard.users.create(ORG, data=[user])
    partial = await kard.users.create(ORG, data=[user, other])
    assert partial.data == [other] and partial.model_extra["errors"][0]["id"] == "u1"


async def test_sdk_invalid_payloads_are_rejected(kard: AsyncKardApi, sandbox: SandboxProcess) -> None:
    """Open-enum values the SDK lets through and over-limit batches come back as InvalidRequest bodies."""
    with pytest.raises(InvalidRequest) as info:
        await kard.transactions.create(ORG, data=[transaction("e1", status="PENDING")])
    assert info.value.body.errors[0].source.pointer == "/data/0/attributes/status"
    with pytest.raises(InvalidRequest) as info:
        await kard.transactions.create(ORG, data=[transaction(f"e{i}") for i in range(501)])
    assert info.value.body.errors[0].source.pointer == "/data"
    with pytest.raises(InvalidRequest):
        await kard.users.attributions.create(
            ORG,
            "u1",
            data=[
                CreateAttributionRequestUnion_OfferAttribution(
                    attributes=OfferAttributionAttributes(
                        entity_id="o", event_code="CLICK", medium="SEARCH", event_date=WHEN
                    )
                )
            ],
        )
    assert sandbox.control.received() == []


async def test_sdk_gives_naive_datetimes_a_zone_but_raw_naive_ones_fail(
    kard: AsyncKardApi, sandbox: SandboxProcess
) -> None:
    """The SDK serialises a naive datetime with the host zone (accepted); the same value sent naive is refused."""
    naive = dt.datetime(2025, 1, 2, 3, 4, 5)  # naive on purpose: the point of the test
    await kard.transactions.create(ORG, data=[transaction("e1", authorization_date=naive)])
    sent = sandbox.control.received("transactions")[0]["item"]["attributes"]["authorizationDate"]
    assert sent.startswith("2025-01-02T03:04:05") and sent != "2025-01-02T03:04:05"
    item = {
        **wire(transaction("e2")),
        "attributes": {**wire(transaction("e2"))["attributes"], "authorizationDate": "2025-01-02T03:04:05"},
    }
    token = (await kard.auth.get_token(client_id=sandbox.client_id, client_secret=sandbox.client_secret)).access_token
    async with httpx.AsyncClient(base_url=sandbox.base_url, trust_env=False) as raw:
        response = await raw.post(
            f"/v2/issuers/{ORG}/transactions", json={"data": [item]}, headers={"Authorization": f"Bearer {token}"}
        )
    assert response.status_code == 400
    error = ErrorResponse.model_validate(response.json()).errors[0]
    assert error.source is not None and error.source.pointer == "/data/0/attributes/authorizationDate"


async def test_sdk_error_classes_parse_sandbox_errors(kard: AsyncKardApi, sandbox: SandboxProcess) -> None:
    """Every error body the sandbox sends parses into the SDK's typed error for that status."""
    with pytest.raises(DoesNotExistError):
        await kard.users.delete(ORG, "nobody")
    user = UserRequestDataUnion_User(id="u1", attributes=UserRequestAttributes(enrolled_rewards=[]))
    await kard.users.create(ORG, data=[user])
    with pytest.raises(ConflictError) as conflict:
        await kard.users.create(ORG, data=[user])
    assert conflict.value.body.errors[0].id == "u1"
    sandbox.control.set_faults({"endpoint": "transactions", "error_rates": {"500": 1.0}})
    with pytest.raises(InternalServerError) as server:
        await kard.transactions.create(ORG, data=[transaction("e1")])
    assert server.value.body.errors[0].status == "500"
    sandbox.control.set_faults({"endpoint": "ping", "error_rates": {"403": 1.0}, "error_body": "gateway"})
    with pytest.raises(NetworkBlockedError) as blocked:
        await kard.ping.ping()
    assert blocked.value.body.message == "Unauthorized"
    sandbox.control.set_faults({"endpoint": "ping", "error_rates": {"429": 1.0}, "retry_after": {"seconds": 7}})
    with pytest.raises(ApiError) as limited:
        await kard.ping.ping()
    assert limited.value.status_code == 429 and limited.value.headers is not None
    assert limited.value.headers["retry-after"] == "7"
    static = AsyncKardApi(base_url=sandbox.base_url, token=lambda: "not-a-token")
    with pytest.raises(UnauthorizedError) as unauthorized:
        await static.transactions.create(ORG, data=[transaction("e1")])
    await aclose_sdk(static)
    assert unauthorized.value.body.errors[0].status == "401"


async def test_sdk_wrong_credentials_fail_at_the_token_endpoint(sandbox: SandboxProcess) -> None:
    """Wrong client credentials make the SDK's token fetch raise ApiError 401 with an ErrorResponse body."""
    client = AsyncKardApi(base_url=sandbox.base_url, client_id=sandbox.client_id, client_secret="wrong")
    with pytest.raises(ApiError) as info:
        await client.ping.ping()
    await aclose_sdk(client)
    assert info.value.status_code == 401 and info.value.body["errors"][0]["status"] == "401"
