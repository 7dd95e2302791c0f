"""Events of the card-transaction topic (default ``kard.card-transactions``), schema version 1.

Three event types share the topic, so that every event about one transaction travels in one
partition (keyed by user id) and keeps its order:

* ``transaction``: a raw card transaction; becomes a Kard ``transaction`` item
  (``POST v2/issuers/{org}/transactions``). Every ``TransactionsAttributes`` field has a snake_case
  counterpart here; money fields carry their unit (``amount_cents``).
* ``matched_transaction``: a transaction the issuer already matched to a Kard offer; becomes a
  ``matchedTransaction`` item on the same endpoint.
* ``fraud_marker``: flags an earlier transaction as fraudulent; becomes a ``fraudulentTransaction``
  item on ``POST v2/issuers/{org}/fraud``.

The conditional rules the contract states in prose (which date a status needs, which card fields
``CASH`` and ``UNKNOWN`` payments must leave out) are enforced in :meth:`event_rules`, so an event the
API would refuse never leaves the bridge.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import Field

from bridge.errors import SchemaError
from bridge.events.common import (
    CardBin,
    CardLastFour,
    CardNetwork,
    Cents,
    CurrencyCode,
    Direction,
    EventKind,
    EventModel,
    Identifier,
    Latitude,
    Longitude,
    Mcc,
    StrictModel,
    Text,
    Timestamp,
    UsState,
    enum_leaf,
)

__all__ = [
    "CARD_TRANSACTION_EVENTS",
    "CardTransactionEvent",
    "FraudMarkerEvent",
    "MatchedTransactionEvent",
    "Merchant",
    "ProcessorMids",
    "TransactionEvent",
    "VisaMids",
]

TransactionStatusValue = Literal["APPROVED", "SETTLED", "REVERSED", "RETURNED", "DECLINED"]
TransactionStatus = Annotated[TransactionStatusValue, enum_leaf(get_args(TransactionStatusValue))]
CardPaymentValue = Literal["CARD"]
CardPayment = Annotated[CardPaymentValue, enum_leaf(get_args(CardPaymentValue))]
MatchedPaymentValue = Literal["CARD", "CASH", "UNKNOWN"]
MatchedPayment = Annotated[MatchedPaymentValue, enum_leaf(get_args(MatchedPaymentValue))]
ReceiptMediumValue = Literal["ELECTRONIC", "PHYSICAL"]
ReceiptMedium = Annotated[ReceiptMediumValue, enum_leaf(get_args(ReceiptMediumValue))]
ProcessorValue = Literal["VISA"]
Processor = Annotated[ProcessorValue, enum_leaf(get_args(ProcessorValue))]

#: Which date each status requires (CONTRACT.md §6.1, TransactionsAttributes).
_DATE_FOR_STATUS: dict[str, str] = {
    "APPROVED": "authorization_date",
    "SETTLED": "settled_date",
    "REVERSED": "transaction_date",
    "RETURNED": "transaction_date",
    "DECLINED": "transaction_date",
}


class Merchant(StrictModel):
    """Where the card was used; Kard's ``Merchant`` object."""

    id: Identifier | None = Field(
        default=None, description="Acquirer merchant id (MID), usually 15 digits; required for local offers."
    )
    name: Text = Field(description="Merchant name.")
    addr_street: Text | None = None
    addr_city: Text | None = None
    addr_state: UsState | None = Field(default=None, description="Two-letter US state or territory code.")
    addr_zipcode: Identifier | None = None
    addr_country: Text | None = Field(default=None, description="Free text, e.g. United States.")
    latitude: Latitude | None = Field(default=None, description="Decimal degrees, as a string.")
    longitude: Longitude | None = Field(default=None, description="Decimal degrees, as a string.")
    store_id: Identifier | None = None


class VisaMids(StrictModel):
    """Visa merchant and store ids."""

    vmid: Identifier = Field(description="Visa Merchant ID.")
    vsid: Identifier = Field(description="Visa Store ID.")


class ProcessorMids(StrictModel):
    """Processor-assigned merchant ids; Visa is the only processor the API knows."""

    processor: Processor = "VISA"
    mids: VisaMids


class TransactionEvent(EventModel):
    """A raw card transaction (one status change of it): Kard ``transaction`` item."""

    kind: ClassVar[EventKind] = EventKind.CARD_TRANSACTION

    event_type: Literal["transaction"]
    user_id: Identifier = Field(description="The user's id on the issuer's system.")
    transaction_id: Identifier = Field(description="The issuer's id of the transaction (same for every status).")
    status: TransactionStatus
    amount_cents: Cents = Field(description="Amount in cents.")
    subtotal_cents: Cents | None = Field(default=None, description="Amount in cents without tips, taxes and fees.")
    currency: CurrencyCode
    description: Text = Field(description="Usually the merchant name and key details.")
    description_2: Text | None = Field(default=None, description="Further merchant-identifying text.")
    mcc: Mcc | None = Field(default=None, description="Merchant category code; highly recommended.")
    core_provider_id: Text | None = Field(default=None, description="Name of the processor.")
    transaction_date: Timestamp | None = Field(default=None, description="Required for REVERSED/RETURNED/DECLINED.")
    authorization_date: Timestamp | None = Field(default=None, description="Required for APPROVED.")
    settled_date: Timestamp | None = Field(default=None, description="Required for SETTLED.")
    merchant: Merchant | None = None
    card_presence: Text | None = None
    pan_entry_mode: Text | None = None
    card_bin: CardBin = Field(description="6 to 8 leading card digits; the first 6 are sent.")
    card_last_four: CardLastFour
    authorization_code: Identifier | None = None
    retrieval_reference_number: Identifier | None = None
    system_trace_audit_number: Identifier | None = None
    acquirer_reference_number: Identifier | None = None
    direction: Direction
    payment_type: CardPayment = Field(default="CARD", description="Always CARD for this event type.")
    card_network: CardNetwork | None = None
    card_product_id: Identifier | None = None
    user_zip_code: Identifier | None = None
    processor_mids: ProcessorMids | None = None

    @classmethod
    def event_rules(cls, values: Mapping[str, Any]) -> None:
        """The date a status requires must be present."""
        needed = _DATE_FOR_STATUS.get(values.get("status") or "")
        if needed is not None and values.get(needed) is None:
            raise SchemaError("missing_field", "is required for this status", pointer="/" + needed)


#: Fields a CASH or UNKNOWN matched transaction must leave out (CONTRACT.md §6.1).
_NOT_FOR_NON_CARD = ("card_bin", "card_network", "card_product_id")


class MatchedTransactionEvent(EventModel):
    """A transaction the issuer matched to a Kard offer: Kard ``matchedTransaction`` item."""

    kind: ClassVar[EventKind] = EventKind.CARD_TRANSACTION

    event_type: Literal["matched_transaction"]
    user_id: Identifier = Field(description="The user's id on the issuer's system.")
    transaction_id: Identifier
    amount_cents: Cents
    subtotal_cents: Cents | None = None
    description: Text
    authorization_date: Timestamp = Field(description="When the transaction happened.")
    matched_offer_id: Identifier | None = Field(default=None, description="Kard offer id; absent means unmatched.")
    matched_location_id: Identifier | None = None
    merchant: Merchant | None = None
    payment_type: MatchedPayment
    card_bin: CardBin | None = Field(default=None, description="Must be absent for CASH and UNKNOWN.")
    card_last_four: CardLastFour | None = Field(
        default=None, description="Required for CARD with a matched offer; must be absent for CASH."
    )
    authorization_code: Identifier | None = None
    retrieval_reference_number: Identifier | None = None
    system_trace_audit_number: Identifier | None = None
    acquirer_reference_number: Identifier | None = None
    direction: Direction
    card_network: CardNetwork | None = None
    card_product_id: Identifier | None = None
    order_id: Identifier | None = None
    receipt_medium: ReceiptMedium | None = None

    @classmethod
    def event_rules(cls, values: Mapping[str, Any]) -> None:
        """Which card fields each payment type allows or needs."""
        payment = values.get("payment_type")
        if payment in ("CASH", "UNKNOWN"):
            for name in _NOT_FOR_NON_CARD:
                if values.get(name) is not None:
                    raise SchemaError("field_not_allowed", "must be absent for this payment_type", pointer="/" + name)
        if payment == "CASH" and values.get("card_last_four") is not None:
            raise SchemaError("field_not_allowed", "must be absent for CASH payments", pointer="/card_last_four")
        if payment == "UNKNOWN":
            if values.get("matched_location_id") is not None:
                raise SchemaError(
                    "field_not_allowed", "must be absent for UNKNOWN payments", pointer="/matched_location_id"
                )
            if (
                values.get("matched_offer_id") is not None
                and values.get("order_id") is None
                and values.get("card_last_four") is None
            ):
                raise SchemaError(
                    "field_not_allowed",
                    "must be absent for UNKNOWN payments without order_id or card_last_four",
                    pointer="/matched_offer_id",
                )
        if payment == "CARD" and values.get("matched_offer_id") is not None and values.get("card_last_four") is None:
            raise SchemaError(
                "missing_field", "is required for CARD payments with a matched offer", pointer="/card_last_four"
            )


class FraudMarkerEvent(EventModel):
    """Flags an already-sent transaction as fraudulent: Kard ``fraudulentTransaction`` item."""

    kind: ClassVar[EventKind] = EventKind.CARD_TRANSACTION

    event_type: Literal["fraud_marker"]
    user_id: Identifier = Field(description="The user the transaction belongs to.")
    transaction_id: Identifier = Field(description="The issuer's id of the fraudulent transaction.")


CardTransactionEvent = Annotated[
    TransactionEvent | MatchedTransactionEvent | FraudMarkerEvent, Field(discriminator="event_type")
]

#: ``event_type`` → model, for the card-transaction topic.
CARD_TRANSACTION_EVENTS: Mapping[str, type[EventModel]] = {
    "transaction": TransactionEvent,
    "matched_transaction": MatchedTransactionEvent,
    "fraud_marker": FraudMarkerEvent,
}
