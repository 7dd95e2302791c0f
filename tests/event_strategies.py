"""Hypothesis strategies for *valid* input events of every topic, and ways to render and break them.

Shared by the mapping property tests, the schema-sync tests and the SDK contract tests. Valid means:
accepted by the schema and mappable with a default organization in either attribution mode (ids are
path-safe).

Long mode (not run in CI): ``KARD_BRIDGE_HYPOTHESIS_LONG=1`` (any value but empty or ``0``) makes
:func:`EXAMPLES` return 1,000,000, so every property that takes its budget from it runs one million
examples, and :data:`LONG_RUN_MARKS` lifts pytest-timeout's per-test limit for it. The three core
properties (the mapper raises only its own errors; the offset tracker never commits past an unfinished
record; the batcher keeps its limits and loses or duplicates nothing)::

    KARD_BRIDGE_HYPOTHESIS_LONG=1 .venv/bin/pytest -p no:cacheprovider -q \
        tests/unit/test_mapping_properties.py tests/unit/test_offsets.py tests/unit/test_batcher.py

Add ``-k <test name>`` to run one property, ``--hypothesis-seed=N`` to repeat a run, and
``--hypothesis-show-statistics`` for timings. Expect hours: measured CPU per example on a 2-core dev machine
was ~6 ms for the batcher property (1M: ~1.6 h), ~13 ms for the offset state machine at its long-mode 20
steps (1M: ~3.7 h; see ``test_offsets.py``) and 1.5-13 ms for each of the seven mapping properties (1M of
each: ~15 h together). Hypothesis keeps per-example data: allow ~1 GB of RAM per test, a few GB for the
state machine's million runs.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import strategies as st

from bridge.events.common import MAX_CENTS, EventKind

__all__ = [
    "EXAMPLES",
    "LONG",
    "LONG_EXAMPLES",
    "LONG_RUN_MARKS",
    "events",
    "json_values",
    "mutated",
    "render",
    "timestamps",
]

LONG = os.environ.get("KARD_BRIDGE_HYPOTHESIS_LONG", "") not in ("", "0")

#: The example budget of every property in long mode.
LONG_EXAMPLES = 1_000_000
#: ``pytestmark`` for modules with long-mode properties: a million examples take hours, so the long run
#: has no per-test timeout (pytest-timeout's 0); normal runs keep the configured hang guard.
LONG_RUN_MARKS: list[pytest.MarkDecorator] = [pytest.mark.timeout(0)] if LONG else []


def EXAMPLES(ci: int) -> int:
    """``ci`` examples normally, 1,000,000 when ``KARD_BRIDGE_HYPOTHESIS_LONG`` is set."""
    return LONG_EXAMPLES if LONG else ci


# Path-safe, printable identifiers: letters, digits, dashes and connectors (no / ? # % . or spaces).
identifiers = st.text(st.characters(codec="utf-8", categories=("L", "N", "Pd", "Pc")), min_size=1, max_size=24)
texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40)
cents = st.one_of(st.integers(0, 10**7), st.integers(0, MAX_CENTS))


def digits(n: int) -> st.SearchStrategy[str]:
    """Exactly ``n`` ASCII digits."""
    return st.text(st.sampled_from("0123456789"), min_size=n, max_size=n)


_zones = st.one_of(
    st.just(UTC),
    st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda minutes: timezone(timedelta(minutes=minutes))),
)


@st.composite
def timestamps(draw: st.DrawFn) -> str:
    """An RFC 3339 timestamp with a zone, 0-9 fractional digits, ``Z`` or an offset."""
    zone = draw(_zones)
    moment = draw(st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2099, 12, 31))).replace(tzinfo=zone)
    text = f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}"
    text += f"T{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
    fraction = draw(st.integers(0, 9))
    if fraction:
        text += "." + (f"{moment.microsecond:06d}" + draw(digits(3)))[:fraction]
    offset = moment.utcoffset() or timedelta()
    if offset == timedelta() and draw(st.booleans()):
        return text + "Z"
    sign = "-" if offset < timedelta() else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{text}{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def _optional(**fields: st.SearchStrategy[Any]) -> dict[str, st.SearchStrategy[Any]]:
    """Optional fields: absent, null or a value."""
    return {name: st.one_of(st.none(), strategy) for name, strategy in fields.items()}


_states = st.sampled_from(["PA", "NY", "CA", "TX", "PR", "DC", "GU", "WY"])
_coords = st.builds(lambda d, f: f"{d}.{f}", st.integers(-89, 89), digits(4))

merchants = st.fixed_dictionaries(
    {"name": texts},
    optional=_optional(
        id=identifiers,
        addr_street=texts,
        addr_city=texts,
        addr_state=_states,
        addr_zipcode=identifiers,
        addr_country=texts,
        latitude=_coords,
        longitude=_coords,
        store_id=identifiers,
    ),
)
processor_mids = st.fixed_dictionaries(
    {"mids": st.fixed_dictionaries({"vmid": identifiers, "vsid": identifiers})},
    optional={"processor": st.just("VISA")},
)
_envelope: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.just(1),
    "event_id": identifiers,
    "user_id": identifiers,
}
_envelope_optional: dict[str, st.SearchStrategy[Any]] = {"organization_id": st.one_of(st.none(), identifiers)}
_codes: dict[str, st.SearchStrategy[Any]] = dict(
    authorization_code=identifiers,
    retrieval_reference_number=identifiers,
    system_trace_audit_number=identifiers,
    acquirer_reference_number=identifiers,
)
_networks = st.sampled_from(["VISA", "MASTERCARD", "AMERICANEXPRESS", "DISCOVER"])
_DATE_FOR = {
    "APPROVED": "authorization_date",
    "SETTLED": "settled_date",
    "REVERSED": "transaction_date",
    "RETURNED": "transaction_date",
    "DECLINED": "transaction_date",
}


@st.composite
def transactions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid ``transaction`` event (the date its status needs is always present)."""
    event = draw(
        st.fixed_dictionaries(
            {
                **_envelope,
                "event_type": st.just("transaction"),
                "transaction_id": identifiers,
                "status": st.sampled_from(sorted(_DATE_FOR)),
                "amount_cents": cents,
                "currency": st.sampled_from(["USD", "EUR", "CAD"]),
                "description": texts,
                "card_bin": st.integers(6, 8).flatmap(digits),
                "card_last_four": digits(4),
                "direction": st.sampled_from(["DEBIT", "CREDIT"]),
            },
            optional={
                **_envelope_optional,
                **_optional(
                    subtotal_cents=cents,
                    description_2=texts,
                    mcc=digits(4),
                    core_provider_id=texts,
                    transaction_date=timestamps(),
                    authorization_date=timestamps(),
                    settled_date=timestamps(),
                    merchant=merchants,
                    card_presence=texts,
                    pan_entry_mode=texts,
                    card_network=_networks,
                    card_product_id=identifiers,
                    user_zip_code=identifiers,
                    processor_mids=processor_mids,
                    **_codes,
                ),
                "payment_type": st.just("CARD"),
            },
        )
    )
    event[_DATE_FOR[event["status"]]] = draw(timestamps())
    return event


@st.composite
def matched_transactions(draw: st.DrawFn) -> dict[str, Any]:
    """A valid ``matched_transaction`` event, honouring the payment-type rules."""
    payment = draw(st.sampled_from(["CARD", "CASH", "UNKNOWN"]))
    optional = _optional(
        subtotal_cents=cents,
        matched_offer_id=identifiers,
        merchant=merchants,
        order_id=identifiers,
        receipt_medium=st.sampled_from(["ELECTRONIC", "PHYSICAL"]),
        **_codes,
    )
    if payment == "CARD":
        optional.update(
            _optional(card_bin=st.integers(6, 8).flatmap(digits), card_network=_networks, card_product_id=identifiers)
        )
    if payment != "CASH":
        optional.update(_optional(card_last_four=digits(4)))
    if payment != "UNKNOWN":
        optional.update(_optional(matched_location_id=identifiers))
    event = draw(
        st.fixed_dictionaries(
            {
                **_envelope,
                "event_type": st.just("matched_transaction"),
                "transaction_id": identifiers,
                "amount_cents": cents,
                "description": texts,
                "authorization_date": timestamps(),
                "payment_type": st.just(payment),
                "direction": st.sampled_from(["DEBIT", "CREDIT"]),
            },
            optional={**_envelope_optional, **optional},
        )
    )
    has_offer = event.get("matched_offer_id") is not None
    if payment == "CARD" and has_offer and event.get("card_last_four") is None:
        event["card_last_four"] = draw(digits(4))
    if payment == "UNKNOWN" and has_offer and event.get("order_id") is None and event.get("card_last_four") is None:
        event["order_id"] = draw(identifiers)
    return event


fraud_markers = st.fixed_dictionaries(
    {**_envelope, "event_type": st.just("fraud_marker"), "transaction_id": identifiers}, optional=_envelope_optional
)
segment_users = st.fixed_dictionaries(
    {
        **_envelope,
        "event_type": st.just("segment_user"),
        "segment_id": identifiers,
        "status": st.sampled_from(["ACTIVE", "INACTIVE"]),
        "event_time": timestamps(),
    },
    optional=_envelope_optional,
)
offer_attributions = st.fixed_dictionaries(
    {
        **_envelope,
        "event_type": st.just("offer_attribution"),
        "entity_id": identifiers,
        "event_code": st.sampled_from(["IMPRESSION", "VIEW"]),
        "medium": st.sampled_from(["BROWSE", "EMAIL", "MAP", "SEARCH"]),
        "event_date": timestamps(),
    },
    optional=_envelope_optional,
)
notification_attributions = st.fixed_dictionaries(
    {
        **_envelope,
        "event_type": st.just("notification_attribution"),
        "entity_id": identifiers,
        "event_code": st.sampled_from(["IMPRESSION", "VIEW"]),
        "event_date": timestamps(),
    },
    optional={**_envelope_optional, "medium": st.just("PUSH")},
)

_BY_KIND: dict[EventKind, st.SearchStrategy[dict[str, Any]]] = {
    EventKind.CARD_TRANSACTION: st.one_of(transactions(), matched_transactions(), fraud_markers),
    EventKind.ELIGIBILITY: segment_users,
    EventKind.ATTRIBUTION: st.one_of(offer_attributions, notification_attributions),
}


def events(kind: EventKind) -> st.SearchStrategy[dict[str, Any]]:
    """Valid events of one topic kind."""
    return _BY_KIND[kind]


@st.composite
def render(draw: st.DrawFn, value: Any) -> bytes:
    """Serialise ``value`` as a producer might: orjson compact, stdlib spaced, indented or ASCII-escaped.

    Values orjson cannot encode (lone surrogates, integers beyond 64 bits) fall back to the stdlib;
    lone surrogates then travel as ``\\udXXX`` escapes or as raw (invalid UTF-8) bytes.
    """
    style = draw(st.sampled_from(["orjson", "spaced", "ascii", "indented"]))
    if style == "orjson":
        try:
            return orjson.dumps(value)
        except orjson.JSONEncodeError:
            style = "ascii"
    text = json.dumps(value, ensure_ascii=style == "ascii", indent=2 if style == "indented" else None)
    return text.encode("utf-8", "surrogatepass")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
_surrogates = st.characters(categories=["Cs"])


@st.composite
def mutated(draw: st.DrawFn, event: dict[str, Any]) -> dict[str, Any]:
    """``event`` with one to three mutations: drop, retype, add or corrupt (lone surrogate) a field."""
    result = dict(event)
    for _ in range(draw(st.integers(1, 3))):
        operation = draw(st.sampled_from(["drop", "retype", "add", "surrogate", "nest"]))
        keys = sorted(result)
        if operation == "drop" and keys:
            result.pop(draw(st.sampled_from(keys)))
        elif operation == "retype" and keys:
            result[draw(st.sampled_from(keys))] = draw(json_values)
        elif operation == "add":
            result[draw(st.text(max_size=12))] = draw(json_values)
        elif operation == "surrogate" and keys:
            key = draw(st.sampled_from(keys))
            text = str(result[key])
            cut = draw(st.integers(0, len(text)))
            result[key] = text[:cut] + draw(_surrogates) + text[cut:]
        elif operation == "nest" and keys:
            key = draw(st.sampled_from(keys))
            result[key] = {"value": result[key]} if draw(st.booleans()) else [result[key]]
    return result
