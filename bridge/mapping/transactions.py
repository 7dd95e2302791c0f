"""Card-transaction events → Kard ``transaction``, ``matchedTransaction`` and ``fraudulentTransaction`` items.

Pure functions. The field tables below are the whole mapping: event field (snake_case) → wire field
(camelCase, spelled as CONTRACT.md §6.1 spells it: ``cardBIN``, ``description2``, ``addrZipcode``)
→ optional conversion. They are compiled into projection plans that the event validator follows,
so validating and renaming is one pass over the event (:meth:`ModelValidator.project`). Absent
optionals are omitted, never sent as ``null``. Timestamps are sent in UTC with ``Z``; ``card_bin``
is cut to its first 6 digits.

Item ids: a transaction item's ``id`` is the event's ``event_id`` (unique per event, so APPROVED
and SETTLED of one transaction are two items), a fraud marker's ``id`` is the ``transactionId`` (the
API keys fraud markers by it). Both are the ``MappedItem.item_id``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bridge.events.common import EventKind, format_utc
from bridge.events.validation import TOPIC_VALIDATORS, make_plan
from bridge.mapping.context import MappingContext, build_item, resolve_organization, route_for
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem

__all__ = ["MATCHED_TRANSACTION_FIELDS", "MERCHANT_FIELDS", "TRANSACTION_FIELDS", "map_card_transaction"]

FieldTable = tuple[tuple[str, str, Callable[[Any], Any] | None], ...]


def _bin(value: str) -> str:
    return value[:6]


MERCHANT_FIELDS: FieldTable = (
    ("id", "id", None),
    ("name", "name", None),
    ("addr_street", "addrStreet", None),
    ("addr_city", "addrCity", None),
    ("addr_state", "addrState", None),
    ("addr_zipcode", "addrZipcode", None),
    ("addr_country", "addrCountry", None),
    ("latitude", "latitude", None),
    ("longitude", "longitude", None),
    ("store_id", "storeId", None),
)

TRANSACTION_FIELDS: FieldTable = (
    ("user_id", "userId", None),
    ("amount_cents", "amount", None),
    ("subtotal_cents", "subtotal", None),
    ("status", "status", None),
    ("currency", "currency", None),
    ("description", "description", None),
    ("description_2", "description2", None),
    ("mcc", "mcc", None),
    ("core_provider_id", "coreProviderId", None),
    ("transaction_date", "transactionDate", format_utc),
    ("authorization_date", "authorizationDate", format_utc),
    ("settled_date", "settledDate", format_utc),
    ("merchant", "merchant", None),
    ("card_presence", "cardPresence", None),
    ("pan_entry_mode", "panEntryMode", None),
    ("card_bin", "cardBIN", _bin),
    ("card_last_four", "cardLastFour", None),
    ("authorization_code", "authorizationCode", None),
    ("retrieval_reference_number", "retrievalReferenceNumber", None),
    ("system_trace_audit_number", "systemTraceAuditNumber", None),
    ("acquirer_reference_number", "acquirerReferenceNumber", None),
    ("direction", "direction", None),
    ("payment_type", "paymentType", None),
    ("card_network", "cardNetwork", None),
    ("transaction_id", "transactionId", None),
    ("card_product_id", "cardProductId", None),
    ("user_zip_code", "userZipCode", None),
    ("processor_mids", "processorMids", None),  # {processor, mids: {vmid, vsid}}: same names on the wire
)

MATCHED_TRANSACTION_FIELDS: FieldTable = (
    ("user_id", "userId", None),
    ("amount_cents", "amount", None),
    ("subtotal_cents", "subtotal", None),
    ("description", "description", None),
    ("authorization_date", "authorizationDate", format_utc),
    ("matched_offer_id", "matchedOfferId", None),
    ("matched_location_id", "matchedLocationId", None),
    ("merchant", "merchant", None),
    ("payment_type", "paymentType", None),
    ("card_bin", "cardBIN", _bin),
    ("card_last_four", "cardLastFour", None),
    ("authorization_code", "authorizationCode", None),
    ("retrieval_reference_number", "retrievalReferenceNumber", None),
    ("system_trace_audit_number", "systemTraceAuditNumber", None),
    ("acquirer_reference_number", "acquirerReferenceNumber", None),
    ("direction", "direction", None),
    ("card_network", "cardNetwork", None),
    ("transaction_id", "transactionId", None),
    ("card_product_id", "cardProductId", None),
    ("order_id", "orderId", None),
    ("receipt_medium", "receiptMedium", None),
)

_VALIDATOR = TOPIC_VALIDATORS[EventKind.CARD_TRANSACTION]
_MERCHANT_PLAN = make_plan(MERCHANT_FIELDS)
_PLANS = {
    "transaction": make_plan(TRANSACTION_FIELDS, {"merchant": _MERCHANT_PLAN}),
    "matched_transaction": make_plan(MATCHED_TRANSACTION_FIELDS, {"merchant": _MERCHANT_PLAN}),
}
_WIRE_TYPE = {"transaction": "transaction", "matched_transaction": "matchedTransaction"}


def map_card_transaction(event: dict[str, Any], record: SourceRecord, ctx: MappingContext) -> MappedItem:
    """Validate one card-transaction event and map it to its Kard item.

    Raises:
        SchemaError: the event does not match its schema (reason and pointer say where).
        MappingError: ``missing_organization_id`` or ``unsafe_path_id`` (the org id is in the path).
    """
    event_type, validator = _VALIDATOR.model_for(event)
    if event_type == "fraud_marker":
        validator.validate(event)
        transaction_id: str = event["transaction_id"]
        item = {"type": "fraudulentTransaction", "id": transaction_id, "attributes": {"userId": event["user_id"]}}
        route = route_for(Endpoint.FRAUD, resolve_organization(event, ctx))
        return build_item(route=route, item=item, item_id=transaction_id, values=event, record=record, ctx=ctx)
    attributes = validator.project(event, _PLANS[event_type])
    event_id: str = event["event_id"]
    item = {"type": _WIRE_TYPE[event_type], "id": event_id, "attributes": attributes}
    route = route_for(Endpoint.TRANSACTIONS, resolve_organization(event, ctx))
    return build_item(route=route, item=item, item_id=event_id, values=event, record=record, ctx=ctx)
