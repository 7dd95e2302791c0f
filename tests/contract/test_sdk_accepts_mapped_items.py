"""Oracle: the official SDK's request models accept every item the mapping produces, byte for byte.

For each mapped item, the wire JSON is read into the SDK's request model the way the SDK itself reads
JSON (``convert_and_respect_annotation_metadata(..., direction="read")``), then written back the way
the SDK sends it. Equality proves field names (the camelCase aliases live in Fern's ``FieldMetadata``,
not in pydantic), types and the datetime format. Because SDK models accept unknown keys and its enums
are open (``Literal[...] | Any``), the test also checks that nothing landed in ``model_extra`` and that
every enum value is one the SDK documents.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kard.attributions.types.internal_api_attribution import InternalApiAttribution
from kard.core.jsonable_encoder import jsonable_encoder
from kard.core.serialization import FieldMetadata, convert_and_respect_annotation_metadata
from kard.eligibility_broker.types.ingestion_events import IngestionEvents
from kard.eligibility_broker.types.segmentation_ingestion_event_attributes import (
    SegmentationIngestionEventAttributes,
)
from kard.transactions.types.fraudulent_transaction_data import FraudulentTransactionData
from kard.transactions.types.matched_transactions_attributes import MatchedTransactionsAttributes
from kard.transactions.types.merchant import Merchant
from kard.transactions.types.processor_mid import ProcessorMid_Visa
from kard.transactions.types.transactions import Transactions
from kard.transactions.types.transactions_attributes import TransactionsAttributes
from kard.transactions.types.visa_mid_details import VisaMidDetails
from kard.users.attributions.types.create_attribution_request_union import CreateAttributionRequestUnion
from kard.users.attributions.types.notification_attribution_attributes import NotificationAttributionAttributes
from kard.users.attributions.types.offer_attribution_attributes import OfferAttributionAttributes

from bridge.events.common import EventKind
from bridge.mapping import MappingContext, map_record
from bridge.mapping.transactions import MATCHED_TRANSACTION_FIELDS, MERCHANT_FIELDS, TRANSACTION_FIELDS
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem
from bridge.topics import load_catalogue
from tests.event_strategies import EXAMPLES, events, render

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "topics" / "examples"
CATALOGUE = load_catalogue()

#: The SDK annotation for one ``data[]`` item of each endpoint's request.
SDK_ITEM: dict[Endpoint, Any] = {
    Endpoint.TRANSACTIONS: Transactions,
    Endpoint.FRAUD: FraudulentTransactionData,
    Endpoint.USER_ATTRIBUTIONS: CreateAttributionRequestUnion,
    Endpoint.BULK_ATTRIBUTIONS: InternalApiAttribution,
    Endpoint.ELIGIBILITY: IngestionEvents,
}


def _ctx(mode: Any) -> MappingContext:
    """A context for the catalogue's topics with default org ``org-demo``."""
    return MappingContext(kind_by_topic=CATALOGUE.kind_by_topic(), organization_id="org-demo", attribution_mode=mode)


def _literal_values(annotation: Any) -> set[Any] | None:
    """The documented values of an (open) SDK enum annotation, or None when it is no enum."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return set(typing.get_args(annotation))
    if origin is typing.Annotated:
        return _literal_values(typing.get_args(annotation)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        found: set[Any] = set()
        for member in typing.get_args(annotation):
            values = _literal_values(member)
            if values:
                found |= values
        return found or None
    return None


def _check_closed(model: pydantic.BaseModel, where: str) -> None:
    """No unknown keys anywhere, and every enum value documented (the SDK checks neither)."""
    assert not model.model_extra, f"{where}: fields the SDK does not know: {sorted(model.model_extra or {})}"
    hints = typing.get_type_hints(type(model), include_extras=True)
    for name in type(model).model_fields:
        value = getattr(model, name)
        if value is None:
            continue
        allowed = _literal_values(hints[name])
        if allowed is not None and name != "type":
            assert value in allowed, f"{where}.{name}: undocumented enum value"
        if isinstance(value, pydantic.BaseModel):
            _check_closed(value, f"{where}.{name}")


_DATETIME_FIELDS = frozenset({"transactionDate", "authorizationDate", "settledDate", "eventDate", "eventTime"})


def _check_policy(node: Any, where: str = "") -> None:
    """Bridge rules the SDK does not enforce: absent optionals are omitted (never null), times are UTC ``Z``."""
    if isinstance(node, dict):
        for key, value in node.items():
            assert value is not None, f"{where}/{key}: null instead of omitted"
            if key in _DATETIME_FIELDS:
                assert isinstance(value, str), f"{where}/{key}: not a string"
                assert value.endswith("Z"), f"{where}/{key}: not UTC"
            _check_policy(value, f"{where}/{key}")


def assert_sdk_accepts(item: MappedItem) -> None:
    """The SDK request model for the item's endpoint reads it and writes back exactly the same JSON."""
    _check_policy(item.item)
    annotation = SDK_ITEM[item.route.endpoint]
    read = convert_and_respect_annotation_metadata(object_=item.item, annotation=annotation, direction="read")
    model = pydantic.TypeAdapter(annotation).validate_python(read)
    _check_closed(model, item.route.endpoint.value)
    written = jsonable_encoder(
        convert_and_respect_annotation_metadata(object_=model, annotation=type(model), direction="write")
    )
    assert written == item.item
    if item.route.endpoint is Endpoint.FRAUD:
        assert item.item["type"] == "fraudulentTransaction"  # a free string in the SDK


def _wire_names(model: type[pydantic.BaseModel]) -> set[str]:
    """The camelCase wire names of an SDK model's fields (Fern keeps them in FieldMetadata)."""
    hints = typing.get_type_hints(model, include_extras=True)
    names = set()
    for name in model.model_fields:
        alias = name
        stack = [hints[name]]
        while stack:
            current = stack.pop()
            if typing.get_origin(current) is typing.Annotated:
                for extra in typing.get_args(current)[1:]:
                    if isinstance(extra, FieldMetadata):
                        alias = extra.alias
                stack.append(typing.get_args(current)[0])
            elif typing.get_origin(current) is typing.Union:
                stack.extend(typing.get_args(current))
        names.add(alias)
    return names


@pytest.mark.parametrize(
    ("table", "sdk_model"),
    [
        (TRANSACTION_FIELDS, TransactionsAttributes),
        (MATCHED_TRANSACTION_FIELDS, MatchedTransactionsAttributes),
        (MERCHANT_FIELDS, Merchant),
    ],
)
def test_field_tables_cover_every_sdk_field(table: Any, sdk_model: type[pydantic.BaseModel]) -> None:
    """Each mapping table names exactly the wire fields of its SDK attributes model: none missing, none invented."""
    assert {wire for _, wire, _ in table} == _wire_names(sdk_model)


def test_full_examples_carry_every_sdk_field() -> None:
    """The valid examples together use every field of every SDK request model the bridge produces."""
    expected = {
        "transaction": _wire_names(TransactionsAttributes),
        "matchedTransaction": _wire_names(MatchedTransactionsAttributes),
        "merchant": _wire_names(Merchant),
        "processorMids": _wire_names(ProcessorMid_Visa),
        "mids": _wire_names(VisaMidDetails),
        "segmentUser": _wire_names(SegmentationIngestionEventAttributes),
        "offerAttribution": _wire_names(OfferAttributionAttributes),
        "notificationAttribution": _wire_names(NotificationAttributionAttributes),
    }
    seen: dict[str, set[str]] = {key: set() for key in expected}
    for item in _example_items("per_user"):
        attributes = item.item.get("attributes", {})
        if item.item["type"] in seen:
            seen[item.item["type"]] |= set(attributes)
        if "merchant" in attributes:
            seen["merchant"] |= set(attributes["merchant"])
        if "processorMids" in attributes:
            seen["processorMids"] |= set(attributes["processorMids"])
            seen["mids"] |= set(attributes["processorMids"]["mids"])
    for key, names in expected.items():
        assert seen[key] == names, key


def _example_items(mode: str) -> list[MappedItem]:
    """The items mapped from every valid example line."""
    items = []
    for entry in CATALOGUE.inputs:
        path = EXAMPLES_DIR / f"{entry.name}.valid.jsonl"
        for offset, line in enumerate(path.read_bytes().splitlines()):
            record = SourceRecord(entry.name, 0, offset, None, line, (), 0)
            items.append(map_record(record, _ctx(mode)))
    return items


@pytest.mark.parametrize("mode", ["per_user", "bulk"])
def test_sdk_accepts_every_item_from_the_valid_examples(mode: str) -> None:
    """Every item mapped from the valid example files round-trips through the SDK's request models unchanged."""
    items = _example_items(mode)
    assert {item.route.endpoint for item in items} >= (
        {Endpoint.TRANSACTIONS, Endpoint.FRAUD, Endpoint.ELIGIBILITY}
        | ({Endpoint.USER_ATTRIBUTIONS} if mode == "per_user" else {Endpoint.BULK_ATTRIBUTIONS})
    )
    for item in items:
        assert_sdk_accepts(item)


@settings(
    max_examples=EXAMPLES(300),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(kind=st.sampled_from(list(EventKind)), mode=st.sampled_from(["per_user", "bulk"]), data=st.data())
def test_sdk_accepts_items_from_generated_valid_events(kind: EventKind, mode: str, data: st.DataObject) -> None:
    """Items mapped from hypothesis-generated valid events round-trip through the SDK's request models unchanged."""
    raw = data.draw(render(data.draw(events(kind))))
    item = map_record(SourceRecord(CATALOGUE.by_kind(kind).name, 0, 0, None, raw, (), 0), _ctx(mode))
    assert_sdk_accepts(item)
