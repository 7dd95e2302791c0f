"""The Kard request schemas as data: every endpoint's item variants, field rules and item limit.

Transcribed from ``/work/shared/kard-api/CONTRACT.md`` §6 (itself read from the SDK's models). Each endpoint
is an :class:`EndpointSpec`; :func:`bridge.sandbox.validation.validate_body` applies it. Keeping the tables
apart from the checker keeps both short and lets a reader compare this file with the contract line by line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bridge.sandbox.checks import datetime_check, enum_check, enum_list_check, int_check, object_check, str_check
from bridge.sandbox.validation import FieldCheck, ItemSpec, ObjectSchema, Problem

__all__ = ["ENDPOINTS", "EndpointSpec", "item_error_id"]

_S = str_check()
_ID = str_check(nonempty=True)
_INT = int_check()
_DT = datetime_check()
# fmt: off
_STATES = (
    "AL", "AK", "AS", "AZ", "AR", "CA", "CO", "CT", "DE", "DC", "FM", "FL", "GA", "GU", "HI",
    "ID", "IL", "IN", "IA", "KS", "KY", "LA", "ME", "MH", "MD", "MA", "MI", "MN", "MS", "MO",
    "MT", "NE", "NV", "NH", "NJ", "NM", "NY", "NC", "ND", "MP", "OH", "OK", "OR", "PW", "PA",
    "PR", "RI", "SC", "SD", "TN", "TX", "UT", "VT", "VI", "VA", "WA", "WV", "WI", "WY",
)
# fmt: on
_CARD_NETWORK = enum_check(("VISA", "MASTERCARD", "AMERICANEXPRESS", "DISCOVER"))
_DIRECTION = enum_check(("DEBIT", "CREDIT"))
_BIN = str_check(pattern=r"[0-9]{6}", rule="a string of 6 digits")

MERCHANT = ObjectSchema(
    fields={
        "id": _S,
        "name": _ID,
        "addrStreet": _S,
        "addrCity": _S,
        "addrState": enum_check(_STATES),
        "addrZipcode": _S,
        "addrCountry": _S,
        "latitude": _S,
        "longitude": _S,
        "storeId": _S,
    },
    required=("name",),
)

_PROCESSOR_MIDS = ObjectSchema(
    fields={
        "processor": enum_check(("VISA",)),
        "mids": object_check(ObjectSchema(fields={"vmid": _ID, "vsid": _ID}, required=("vmid", "vsid"))),
    },
    required=("processor", "mids"),
)

_DATE_FOR_STATUS = {
    "APPROVED": "authorizationDate",
    "SETTLED": "settledDate",
    "REVERSED": "transactionDate",
    "RETURNED": "transactionDate",
    "DECLINED": "transactionDate",
}


def _status_dates(attrs: dict[str, Any], ptr: str, out: list[Problem]) -> None:
    """transactionDate / authorizationDate / settledDate are required according to ``status``."""
    status = attrs.get("status")
    needed = _DATE_FOR_STATUS.get(status) if type(status) is str else None
    if needed is not None and attrs.get(needed) is None:
        out.append(Problem(f"{ptr}/{needed}", f"{needed} is required when status is {status}"))


TRANSACTION_ATTRIBUTES = ObjectSchema(
    fields={
        "userId": _ID,
        "amount": _INT,
        "subtotal": _INT,
        "status": enum_check(("APPROVED", "SETTLED", "REVERSED", "RETURNED", "DECLINED")),
        "currency": _ID,
        "description": _ID,
        "description2": _S,
        "mcc": _S,
        "coreProviderId": _S,
        "transactionDate": _DT,
        "authorizationDate": _DT,
        "settledDate": _DT,
        "merchant": object_check(MERCHANT),
        "cardPresence": _S,
        "panEntryMode": _S,
        "cardBIN": _BIN,
        "cardLastFour": _ID,
        "authorizationCode": _S,
        "retrievalReferenceNumber": _S,
        "systemTraceAuditNumber": _S,
        "acquirerReferenceNumber": _S,
        "direction": _DIRECTION,
        "paymentType": enum_check(("CARD",)),
        "cardNetwork": _CARD_NETWORK,
        "transactionId": _ID,
        "cardProductId": _S,
        "userZipCode": _S,
        "processorMids": object_check(_PROCESSOR_MIDS),
    },
    required=(
        "userId",
        "amount",
        "status",
        "currency",
        "description",
        "cardBIN",
        "cardLastFour",
        "direction",
        "paymentType",
        "transactionId",
    ),
    rules=(_status_dates,),
)


def _must_be_absent(attrs: dict[str, Any], ptr: str, out: list[Problem], name: str, why: str) -> None:
    if attrs.get(name) is not None:
        out.append(Problem(f"{ptr}/{name}", f"{name} must be left out {why}"))


def _matched_rules(attrs: dict[str, Any], ptr: str, out: list[Problem]) -> None:
    """The paymentType-dependent "required" / "must be left out" rules of MatchedTransactionsAttributes."""
    payment = attrs.get("paymentType")
    if payment == "CARD":
        if attrs.get("matchedOfferId") is not None and attrs.get("cardLastFour") is None:
            out.append(
                Problem(
                    f"{ptr}/cardLastFour",
                    "cardLastFour is required when paymentType is CARD and matchedOfferId is present",
                )
            )
        return
    if payment not in ("CASH", "UNKNOWN"):
        return
    why = f"when paymentType is {payment}"
    for name in ("cardBIN", "cardNetwork", "cardProductId"):
        _must_be_absent(attrs, ptr, out, name, why)
    if payment == "CASH":
        _must_be_absent(attrs, ptr, out, "cardLastFour", why)
        return
    _must_be_absent(attrs, ptr, out, "matchedLocationId", why)
    if attrs.get("orderId") is None and attrs.get("cardLastFour") is None:
        _must_be_absent(attrs, ptr, out, "matchedOfferId", why + " and neither orderId nor cardLastFour is sent")


MATCHED_TRANSACTION_ATTRIBUTES = ObjectSchema(
    fields={
        "userId": _ID,
        "amount": _INT,
        "subtotal": _INT,
        "description": _ID,
        "authorizationDate": _DT,
        "matchedOfferId": _S,
        "matchedLocationId": _S,
        "merchant": object_check(MERCHANT),
        "paymentType": enum_check(("CARD", "CASH", "UNKNOWN")),
        "cardBIN": _BIN,
        "cardLastFour": _S,
        "authorizationCode": _S,
        "retrievalReferenceNumber": _S,
        "systemTraceAuditNumber": _S,
        "acquirerReferenceNumber": _S,
        "direction": _DIRECTION,
        "cardNetwork": _CARD_NETWORK,
        "transactionId": _ID,
        "cardProductId": _S,
        "orderId": _S,
        "receiptMedium": enum_check(("ELECTRONIC", "PHYSICAL")),
    },
    required=("userId", "amount", "description", "authorizationDate", "paymentType", "direction", "transactionId"),
    rules=(_matched_rules,),
)

_EVENT_CODE = enum_check(("IMPRESSION", "VIEW"))
_OFFER_MEDIUM = enum_check(("BROWSE", "EMAIL", "MAP", "SEARCH"))
_PUSH = enum_check(("PUSH",))
_ATTRIBUTION_REQUIRED = ("entityId", "eventCode", "medium", "eventDate")


def _attribution(medium: FieldCheck, *, internal: bool) -> ObjectSchema:
    fields: dict[str, FieldCheck] = {"entityId": _ID, "eventCode": _EVENT_CODE, "medium": medium, "eventDate": _DT}
    if internal:
        fields.update(issuerId=_ID, userId=_ID)
    required = (("issuerId", "userId") if internal else ()) + _ATTRIBUTION_REQUIRED
    return ObjectSchema(fields=fields, required=required)


USER_ATTRIBUTES = ObjectSchema(
    fields={
        "enrolledRewards": enum_list_check(("CARDLINKED",)),
        "zipCode": _S,
        "email": _S,
        "hashedEmail": _S,
        "phoneNumber": _S,
        "birthYear": _S,
    },
    required=("enrolledRewards",),
)


@dataclass(frozen=True, slots=True)
class EndpointSpec:
    """What one endpoint accepts: item variants, array or single object, limit, and whether 207 is declared."""

    name: str
    variants: Mapping[str, ItemSpec]
    batch: bool = True
    max_items: int | None = None
    multi_status: bool = False


def _variants(*specs: ItemSpec) -> dict[str, ItemSpec]:
    return {s.type_name: s for s in specs}


_HISTORICAL = ItemSpec("historicalTransaction", TRANSACTION_ATTRIBUTES)

#: Every validated endpoint, by the sandbox's endpoint name (the same names as ``bridge.routes.Endpoint``
#: where they overlap). Token, ping and delete take no body and are not listed.
ENDPOINTS: dict[str, EndpointSpec] = {
    "transactions": EndpointSpec(
        "transactions",
        _variants(
            ItemSpec("transaction", TRANSACTION_ATTRIBUTES),
            ItemSpec("matchedTransaction", MATCHED_TRANSACTION_ATTRIBUTES),
        ),
        max_items=500,
        multi_status=True,
    ),
    "fraud": EndpointSpec(
        "fraud",
        _variants(ItemSpec("fraudulentTransaction", ObjectSchema({"userId": _ID}, required=("userId",)))),
        max_items=500,
        multi_status=True,
    ),
    "audits": EndpointSpec(
        "audits",
        _variants(
            ItemSpec(
                "audit",
                ObjectSchema(
                    {
                        "auditCode": int_check(allowed=frozenset({3005, 3006, 8001})),
                        "merchantName": _ID,
                        "auditDescription": _ID,
                        "transactionId": _ID,
                    },
                    required=("auditCode", "merchantName", "auditDescription", "transactionId"),
                ),
                id_required=False,
                id_allowed=False,
            )
        ),
        multi_status=True,
    ),
    "user_attributions": EndpointSpec(
        "user_attributions",
        _variants(
            ItemSpec(
                "offerAttribution", _attribution(_OFFER_MEDIUM, internal=False), id_required=False, id_allowed=False
            ),
            ItemSpec(
                "notificationAttribution", _attribution(_PUSH, internal=False), id_required=False, id_allowed=False
            ),
        ),
        max_items=100,
    ),
    "bulk_attributions": EndpointSpec(
        "bulk_attributions",
        _variants(
            ItemSpec("offerAttribution", _attribution(_OFFER_MEDIUM, internal=True), id_required=False),
            ItemSpec("notificationAttribution", _attribution(_PUSH, internal=True), id_required=False),
        ),
        max_items=100,
    ),
    "eligibility": EndpointSpec(
        "eligibility",
        _variants(
            ItemSpec(
                "segmentUser",
                ObjectSchema(
                    {
                        "userId": _ID,
                        "issuerId": _ID,
                        "segmentId": _ID,
                        "status": enum_check(("ACTIVE", "INACTIVE")),
                        "eventTime": _DT,
                    },
                    required=("userId", "issuerId", "segmentId", "status", "eventTime"),
                ),
                id_required=False,
                id_allowed=False,
            )
        ),
    ),
    "users_create": EndpointSpec(
        "users_create", _variants(ItemSpec("user", USER_ATTRIBUTES)), max_items=100, multi_status=True
    ),
    "users_update": EndpointSpec("users_update", _variants(ItemSpec("user", USER_ATTRIBUTES)), batch=False),
    "uploads_create": EndpointSpec(
        "uploads_create",
        _variants(ItemSpec("historicalTransactionStart", None, id_required=False, id_allowed=False)),
        batch=False,
    ),
    "uploads_part": EndpointSpec("uploads_part", _variants(_HISTORICAL), max_items=500, multi_status=True),
    "uploads_complete": EndpointSpec(
        "uploads_complete", _variants(ItemSpec("historicalTransactionComplete", None)), batch=False
    ),
}


def item_error_id(endpoint: str, item: Any) -> str | None:
    """The ``errors[].id`` for a bad item: its ``id``; for transactions and audits, else ``transactionId``.

    The contract says the id is "always returned for multi-status errors" but not which one; the sandbox uses
    the resource ``id`` (the event id for transactions) and falls back to ``attributes.transactionId``.
    Items with neither (attributions, eligibility) get no id; their ``source.pointer`` locates them.
    """
    if type(item) is not dict:
        return None
    item_id = item.get("id")
    if type(item_id) is str and item_id:
        return item_id
    attrs = item.get("attributes")
    if endpoint in ("transactions", "audits", "uploads_part") and type(attrs) is dict:
        txn = attrs.get("transactionId")
        if type(txn) is str and txn:
            return txn
    return None
