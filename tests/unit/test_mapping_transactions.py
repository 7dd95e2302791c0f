"""Card-transaction events become exactly the contract's ``transaction``, ``matchedTransaction`` and fraud items."""

from __future__ import annotations

import pytest

from bridge.routes import Endpoint
from tests.unit.mapping_helpers import context, failure, map_event, minimal, record

FULL = minimal(
    "transaction",
    event_id="evt-309rjf-approved",
    user_id="6FHt5b6Fnp0qdomMEy5AN6PXcSJIeX69",
    transaction_id="2467de37-cbdc-416d-a359-75de87bfffb0",
    amount_cents=1000,
    subtotal_cents=800,
    description="ADVANCEAUTO",
    description_2="ADVANCEAUTO",
    mcc="1234",
    core_provider_id="galileo",
    authorization_date="2021-07-02T13:47:06-04:00",
    merchant={
        "id": "12345678901234567",
        "name": "ADVANCEAUTO",
        "addr_street": "125 Main St",
        "addr_city": "Philadelphia",
        "addr_state": "PA",
        "addr_zipcode": "19147",
        "addr_country": "United States",
        "latitude": "37.9419429",
        "longitude": "-73.1446869",
        "store_id": "12345",
    },
    card_presence="PRESENT",
    pan_entry_mode="CHIP",
    card_bin="12345678",
    card_last_four="4321",
    authorization_code="123456",
    retrieval_reference_number="100804333919",
    acquirer_reference_number="1234567890123456789012345678",
    system_trace_audit_number="333828",
    card_network="VISA",
    card_product_id="1234567890123456789012345678",
    user_zip_code="19147",
    processor_mids={"processor": "VISA", "mids": {"vmid": "12345678901", "vsid": "12345678"}},
)


def test_full_transaction_maps_to_the_contract_example() -> None:
    """A transaction with every field becomes the CONTRACT.md §6.1 item: camelCase names, cents, UTC, 6-digit BIN."""
    item = map_event(FULL)
    assert item.item == {
        "type": "transaction",
        "id": "evt-309rjf-approved",
        "attributes": {
            "userId": "6FHt5b6Fnp0qdomMEy5AN6PXcSJIeX69",
            "amount": 1000,
            "subtotal": 800,
            "status": "APPROVED",
            "currency": "USD",
            "description": "ADVANCEAUTO",
            "description2": "ADVANCEAUTO",
            "mcc": "1234",
            "coreProviderId": "galileo",
            "authorizationDate": "2021-07-02T17:47:06Z",
            "merchant": {
                "id": "12345678901234567",
                "name": "ADVANCEAUTO",
                "addrStreet": "125 Main St",
                "addrCity": "Philadelphia",
                "addrState": "PA",
                "addrZipcode": "19147",
                "addrCountry": "United States",
                "latitude": "37.9419429",
                "longitude": "-73.1446869",
                "storeId": "12345",
            },
            "cardPresence": "PRESENT",
            "panEntryMode": "CHIP",
            "cardBIN": "123456",
            "cardLastFour": "4321",
            "authorizationCode": "123456",
            "retrievalReferenceNumber": "100804333919",
            "systemTraceAuditNumber": "333828",
            "acquirerReferenceNumber": "1234567890123456789012345678",
            "direction": "DEBIT",
            "paymentType": "CARD",
            "cardNetwork": "VISA",
            "transactionId": "2467de37-cbdc-416d-a359-75de87bfffb0",
            "cardProductId": "1234567890123456789012345678",
            "userZipCode": "19147",
            "processorMids": {"processor": "VISA", "mids": {"vmid": "12345678901", "vsid": "12345678"}},
        },
    }
    assert item.route.endpoint is Endpoint.TRANSACTIONS
    assert item.route.path == "v2/issuers/org-demo/transactions"
    assert item.item_id == "evt-309rjf-approved"
    assert item.event_id == "evt-309rjf-approved"


def test_absent_and_null_optionals_are_omitted_and_defaults_filled() -> None:
    """Optional fields that are missing or null never reach the wire; paymentType and processor default."""
    event = minimal("transaction", mcc=None, merchant={"name": "M", "addr_city": None}, subtotal_cents=None)
    event["description_2"] = None
    event["processor_mids"] = {"mids": {"vmid": "v", "vsid": "s"}}
    attributes = map_event(event).item["attributes"]
    assert "description2" not in attributes
    assert "subtotal" not in attributes
    assert attributes["merchant"] == {"name": "M"}
    assert attributes["paymentType"] == "CARD"
    assert attributes["processorMids"] == {"processor": "VISA", "mids": {"vmid": "v", "vsid": "s"}}
    assert None not in attributes.values()


@pytest.mark.parametrize(
    ("given", "sent"),
    [
        ("2025-01-02T03:04:05Z", "2025-01-02T03:04:05Z"),
        ("2025-01-02T03:04:05+00:00", "2025-01-02T03:04:05Z"),
        ("2025-01-02T03:04:05-00:00", "2025-01-02T03:04:05Z"),
        ("2025-01-01T22:04:05-05:00", "2025-01-02T03:04:05Z"),
        ("2025-01-02T08:34:05+05:30", "2025-01-02T03:04:05Z"),
        ("2025-01-02T03:04:05.000Z", "2025-01-02T03:04:05Z"),
        ("2025-01-02T03:04:05.45Z", "2025-01-02T03:04:05.450000Z"),
        ("2025-01-02T03:04:05.123456789+01:00", "2025-01-02T02:04:05.123456Z"),
        ("2024-12-31T23:59:59-23:59", "2025-01-01T23:58:59Z"),
    ],
)
def test_timestamps_are_sent_in_utc_like_the_sdk(given: str, sent: str) -> None:
    """Any zone becomes UTC with Z; fractional seconds appear (as microseconds) only when non-zero."""
    assert map_event(minimal("transaction", authorization_date=given)).item["attributes"]["authorizationDate"] == sent


@pytest.mark.parametrize("card_bin", ["411111", "4111112", "41111123"])
def test_card_bin_sends_the_first_six_digits(card_bin: str) -> None:
    """A 6-, 7- or 8-digit BIN is sent as its first 6 digits."""
    assert map_event(minimal("transaction", card_bin=card_bin)).item["attributes"]["cardBIN"] == "411111"


@pytest.mark.parametrize(
    ("status", "date_field"),
    [
        ("APPROVED", "authorization_date"),
        ("SETTLED", "settled_date"),
        ("REVERSED", "transaction_date"),
        ("RETURNED", "transaction_date"),
        ("DECLINED", "transaction_date"),
    ],
)
def test_each_status_requires_its_date(status: str, date_field: str) -> None:
    """A status without the date the contract requires for it is a schema error pointing at that date."""
    event = minimal("transaction", status=status, authorization_date=None)
    assert failure(event) == ("schema", "missing_field", "/" + date_field)
    event[date_field] = "2025-01-02T03:04:05Z"
    assert map_event(event).item["attributes"]["status"] == status


def test_approved_and_settled_of_one_transaction_are_two_items_in_one_order() -> None:
    """Two status events of one transaction get distinct item ids and the same ordering key (the user)."""
    approved = map_event(minimal("transaction", event_id="evt-a"))
    settled = map_event(minimal("transaction", event_id="evt-s", status="SETTLED", settled_date="2025-01-03T00:00:00Z"))
    assert approved.item_id != settled.item_id
    assert approved.item["attributes"]["transactionId"] == settled.item["attributes"]["transactionId"]
    assert approved.ordering_key == settled.ordering_key == "user-1"
    assert approved.route == settled.route


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"amount_cents": -1}, ("schema", "invalid_amount", "/amount_cents")),
        ({"amount_cents": 1.0}, ("schema", "invalid_amount", "/amount_cents")),
        ({"amount_cents": False}, ("schema", "invalid_amount", "/amount_cents")),
        ({"amount_cents": 2**53}, ("schema", "invalid_amount", "/amount_cents")),
        ({"subtotal_cents": "800"}, ("schema", "invalid_amount", "/subtotal_cents")),
        ({"card_bin": "123456789"}, ("schema", "invalid_field", "/card_bin")),
        ({"card_bin": "１２３４５６"}, ("schema", "invalid_field", "/card_bin")),
        ({"card_last_four": "123"}, ("schema", "invalid_field", "/card_last_four")),
        ({"mcc": "12345"}, ("schema", "invalid_field", "/mcc")),
        ({"currency": "US"}, ("schema", "invalid_field", "/currency")),
        ({"direction": "debit"}, ("schema", "invalid_enum", "/direction")),
        ({"payment_type": "CASH"}, ("schema", "invalid_enum", "/payment_type")),
        ({"card_network": "JCB"}, ("schema", "invalid_enum", "/card_network")),
        ({"merchant": {"name": "M", "latitude": 37.9}}, ("schema", "wrong_type", "/merchant/latitude")),
        ({"merchant": {"name": "M", "longitude": "-181.0"}}, ("schema", "invalid_field", "/merchant/longitude")),
        ({"merchant": {"name": "M", "colour": "red"}}, ("schema", "unknown_field", "/merchant/colour")),
        ({"processor_mids": {"mids": {"vmid": "v"}}}, ("schema", "missing_field", "/processor_mids/mids/vsid")),
        ({"authorization_date": "2025-01-02T03:04:05"}, ("schema", "naive_datetime", "/authorization_date")),
        ({"authorization_date": "2025-01-02"}, ("schema", "invalid_datetime", "/authorization_date")),
        ({"authorization_date": "2025-02-30T00:00:00Z"}, ("schema", "invalid_datetime", "/authorization_date")),
        ({"authorization_date": "2025-01-02T03:04:05+24:00"}, ("schema", "invalid_datetime", "/authorization_date")),
        ({"authorization_date": "2025-01-02t03:04:05z"}, ("schema", "invalid_datetime", "/authorization_date")),
        ({"description": ""}, ("schema", "invalid_field", "/description")),
        ({"description": "x" * 1025}, ("schema", "invalid_field", "/description")),
        ({"description": "a\x00b"}, ("schema", "invalid_field", "/description")),
        ({"user_id": "user\n1"}, ("schema", "invalid_field", "/user_id")),
        ({"event_id": "e" * 256}, ("schema", "invalid_field", "/event_id")),
        ({"schema_version": True}, ("schema", "wrong_type", "/schema_version")),
        ({"schema_version": 2}, ("schema", "unknown_schema_version", "/schema_version")),
        ({"schema_version": None}, ("schema", "missing_field", "/schema_version")),
        ({"event_type": 3}, ("schema", "wrong_type", "/event_type")),
        ({"event_type": "purchase"}, ("schema", "unknown_event_type", "/event_type")),
        ({"organization_id": "a/b"}, ("mapping", "unsafe_path_id", "/organization_id")),
        ({"organization_id": ".."}, ("mapping", "unsafe_path_id", "/organization_id")),
        ({"organization_id": "org%2F"}, ("mapping", "unsafe_path_id", "/organization_id")),
    ],
)
def test_transaction_field_errors(fields: dict[str, object], expected: tuple[str, str, str]) -> None:
    """Each way a transaction field can be wrong gives its reason and the field's pointer."""
    event = minimal("transaction")
    event.update(fields)
    if fields.get("schema_version", 1) is None:
        del event["schema_version"]
    assert failure(event, topic="kard.card-transactions") == expected


def test_matched_card_transaction_maps_every_field() -> None:
    """A CARD matched transaction maps its matched offer, card and order fields."""
    event = minimal(
        "matched_transaction",
        subtotal_cents=900,
        matched_offer_id="offer-1",
        matched_location_id="loc-1",
        merchant={"name": "M"},
        card_bin="5555555",
        card_last_four="4444",
        authorization_code="a",
        retrieval_reference_number="r",
        system_trace_audit_number="s",
        acquirer_reference_number="q",
        card_network="MASTERCARD",
        card_product_id="p",
        order_id="o",
        receipt_medium="ELECTRONIC",
        authorization_date="2025-01-02T04:04:05.5+01:00",
    )
    assert map_event(event).item == {
        "type": "matchedTransaction",
        "id": "evt-1",
        "attributes": {
            "userId": "user-1",
            "amount": 1000,
            "subtotal": 900,
            "description": "SHOP",
            "authorizationDate": "2025-01-02T03:04:05.500000Z",
            "matchedOfferId": "offer-1",
            "matchedLocationId": "loc-1",
            "merchant": {"name": "M"},
            "paymentType": "CARD",
            "cardBIN": "555555",
            "cardLastFour": "4444",
            "authorizationCode": "a",
            "retrievalReferenceNumber": "r",
            "systemTraceAuditNumber": "s",
            "acquirerReferenceNumber": "q",
            "direction": "DEBIT",
            "cardNetwork": "MASTERCARD",
            "transactionId": "txn-1",
            "cardProductId": "p",
            "orderId": "o",
            "receiptMedium": "ELECTRONIC",
        },
    }


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"matched_offer_id": "o"}, ("schema", "missing_field", "/card_last_four")),
        ({"payment_type": "CASH", "card_bin": "411111"}, ("schema", "field_not_allowed", "/card_bin")),
        ({"payment_type": "CASH", "card_network": "VISA"}, ("schema", "field_not_allowed", "/card_network")),
        ({"payment_type": "CASH", "card_product_id": "p"}, ("schema", "field_not_allowed", "/card_product_id")),
        ({"payment_type": "CASH", "card_last_four": "1234"}, ("schema", "field_not_allowed", "/card_last_four")),
        ({"payment_type": "UNKNOWN", "card_bin": "411111"}, ("schema", "field_not_allowed", "/card_bin")),
        (
            {"payment_type": "UNKNOWN", "matched_location_id": "l"},
            ("schema", "field_not_allowed", "/matched_location_id"),
        ),
        ({"payment_type": "UNKNOWN", "matched_offer_id": "o"}, ("schema", "field_not_allowed", "/matched_offer_id")),
        ({"payment_type": "card"}, ("schema", "invalid_enum", "/payment_type")),
        ({"payment_type": None}, ("schema", "missing_field", "/payment_type")),
        ({"authorization_date": None}, ("schema", "missing_field", "/authorization_date")),
        ({"receipt_medium": "EMAIL"}, ("schema", "invalid_enum", "/receipt_medium")),
        ({"status": "APPROVED"}, ("schema", "unknown_field", "/status")),
    ],
)
def test_matched_transaction_payment_rules(fields: dict[str, object], expected: tuple[str, str, str]) -> None:
    """The payment-type rules of matched transactions are enforced with a pointer to the offending field."""
    assert failure(minimal("matched_transaction", **fields)) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {"payment_type": "CASH", "matched_offer_id": "o"},
        {"payment_type": "UNKNOWN", "matched_offer_id": "o", "order_id": "x"},
        {"payment_type": "UNKNOWN", "matched_offer_id": "o", "card_last_four": "1234"},
        {"payment_type": "UNKNOWN"},
        {"payment_type": "CARD", "card_last_four": "1234"},
    ],
)
def test_matched_transaction_allowed_combinations(fields: dict[str, object]) -> None:
    """Combinations the contract allows map without error."""
    assert map_event(minimal("matched_transaction", **fields)).item["type"] == "matchedTransaction"


def test_fraud_marker_maps_to_fraud_endpoint_keyed_by_transaction() -> None:
    """A fraud marker becomes a fraudulentTransaction item whose id, and item_id, is the transactionId."""
    item = map_event(minimal("fraud_marker", organization_id="org-acme"))
    assert item.item == {"type": "fraudulentTransaction", "id": "txn-1", "attributes": {"userId": "user-1"}}
    assert item.route.endpoint is Endpoint.FRAUD
    assert item.route.path == "v2/issuers/org-acme/fraud"
    assert item.item_id == "txn-1"
    assert item.event_id == "evt-1"
    assert item.ordering_key == "user-1"


def test_organization_comes_from_the_event_else_the_default() -> None:
    """The event's organization_id wins; without one the default is used; without both the record fails."""
    assert map_event(minimal("transaction", organization_id="org-x")).route.organization_id == "org-x"
    assert map_event(minimal("transaction")).route.organization_id == "org-demo"
    no_default = context(organization_id=None)
    assert failure(minimal("transaction"), no_default) == ("mapping", "missing_organization_id", "/organization_id")


def test_mapping_is_deterministic() -> None:
    """Mapping the same bytes twice gives equal items, encoded bytes included."""
    rec = record(FULL)
    from bridge.mapping import map_record

    assert map_record(rec, context()) == map_record(rec, context())


@pytest.mark.parametrize(
    ("ordering", "key", "expected"),
    [
        ("user_id", b"k", "user-1"),
        ("record_key", b"\x00k", "k:006b"),
        ("record_key", None, "user-1"),
        ("partition", b"k", "p:kard.card-transactions:4"),
    ],
)
def test_ordering_key_sources(ordering: str, key: bytes | None, expected: str) -> None:
    """The ordering key is the user id by default, or the record key (hex) or the partition when configured."""
    item = map_event(minimal("transaction"), context(ordering=ordering), key=key, partition=4)
    assert item.ordering_key == expected
