"""The poison-record catalogue (issue 5): every way an input record can be bad, with the failure it must become.

Each :class:`PoisonKind` is one valid example from ``topics/examples/*.valid.jsonl`` corrupted in exactly one
way, plus the failure record the bridge must publish for it (reason class, reason, pointer and, where it
helps, a piece of the message). The same table drives the unit test (the mapping alone) and the end-to-end
test (real Kafka, real sandbox), so a new kind is tested in both places by adding one row.

:data:`TOLERATED` lists inputs that look suspicious but are valid per ``CONTRACT.md`` and ``topics/schemas/``
(odd headers, odd keys, whitespace around the JSON...): they must be *delivered*, and are not counted as poison.

Values are kept below :data:`MAX_VALUE_BYTES`, the bridge's ``max_value_bytes`` in both tests, so that the
oversize kind stays small and fits the brokers' default ``max.message.bytes``.
"""

# One kind per line keeps the catalogue a table that reads (and diffs) row by row.
# ruff: noqa: E501

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from bridge.events.common import EventKind

__all__ = [
    "ATTR",
    "CARD",
    "DEFAULT_KEY",
    "ELIG",
    "MAX_VALUE_BYTES",
    "POISON",
    "TOLERATED",
    "PoisonKind",
    "ToleratedKind",
    "neighbour",
]

CARD = EventKind.CARD_TRANSACTION
ELIG = EventKind.ELIGIBILITY
ATTR = EventKind.ATTRIBUTION

#: The bridge's ``max_value_bytes`` in the catalogue's tests (the default is 1 MiB).
MAX_VALUE_BYTES = 16 * 1024
#: The record key of most kinds: the user id of the base examples below.
DEFAULT_KEY = b"user-2"

HeaderLike = tuple[str, bytes | None]  # Kafka header values may be null


@dataclass(frozen=True, slots=True)
class PoisonKind:
    """One way to be bad: the record to produce and the failure record it must end as."""

    name: str
    topic: EventKind
    value: bytes | None  # None: a tombstone
    reason_class: str  # kard-bridge.reason-class
    reason: str  # kard-bridge.reason
    pointer: str | None = None  # kard-bridge.pointer (None: absent, as for every decode error)
    message: str | None = None  # a piece of kard-bridge.message, where it says more than the reason
    key: bytes | None = DEFAULT_KEY
    headers: tuple[HeaderLike, ...] = ()


@dataclass(frozen=True, slots=True)
class ToleratedKind:
    """Looks like poison but is valid input: it must be delivered, not dead-lettered."""

    name: str
    topic: EventKind
    value: bytes
    why: str
    key: bytes | None = DEFAULT_KEY
    headers: tuple[HeaderLike, ...] = ()


# -- base examples -----------------------------------------------------------------------------------------

_EXAMPLES = Path(__file__).resolve().parents[1] / "topics" / "examples"


def _example(default_topic: str, event_id: str) -> dict[str, Any]:
    """The valid example line of ``default_topic`` with ``event_id``."""
    for line in (_EXAMPLES / f"{default_topic}.valid.jsonl").read_bytes().splitlines():
        if line.strip():
            event: dict[str, Any] = orjson.loads(line)
            if event["event_id"] == event_id:
                return event
    raise LookupError(f"{default_topic}: no valid example {event_id}")


TXN = _example("kard.card-transactions", "evt-0002")  # minimal APPROVED transaction of user-2
TXN_FULL = _example("kard.card-transactions", "evt-2467de37-approved")  # every field, nested objects
CASH = _example("kard.card-transactions", "evt-m-0002")  # matched CASH transaction of user-3
SEGMENT = _example("kard.eligibility", "elig-0003")  # segment_user of user-2
NOTIFICATION = _example("kard.attributions", "attr-n-0001")  # notification attribution of user-2
OFFER = _example("kard.attributions", "attr-0004")  # offer attribution of user-9


def _key(event: dict[str, Any]) -> bytes:
    return str(event["user_id"]).encode()


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    """``base`` with fields replaced or added, compact JSON."""
    return orjson.dumps({**base, **changes})


def _without(base: dict[str, Any], field: str) -> bytes:
    assert field in base
    return orjson.dumps({k: v for k, v in base.items() if k != field})


def _swap(base: dict[str, Any], old: bytes, new: bytes) -> bytes:
    """``base`` as compact JSON with the one occurrence of ``old`` replaced by ``new`` (byte-level poison)."""
    raw = orjson.dumps(base)
    assert raw.count(old) == 1, f"{old!r} must occur once"
    return raw.replace(old, new)


def _nested(depth: int) -> bytes:
    """A transaction nested ``depth`` levels deep: the event is level 1, its merchant 2, then arrays in ``merchant.id``."""
    return _swap(
        TXN,
        b'"currency":"USD"',
        b'"currency":"USD","merchant":{"name":"A","id":' + b"[" * (depth - 2) + b"1" + b"]" * (depth - 2) + b"}",
    )


_TXN = orjson.dumps(TXN)

# -- the catalogue -----------------------------------------------------------------------------------------

POISON: tuple[PoisonKind, ...] = (
    # Bytes that are not UTF-8 text.
    PoisonKind("invalid_utf8", CARD, _swap(TXN, b"COFFEE", b"COF\xffFEE"), "decode", "invalid_encoding"),
    PoisonKind("overlong_utf8_sequence", CARD, _swap(TXN, b"COFFEE", b"COF\xc0\xafFEE"), "decode", "invalid_encoding"),
    PoisonKind("surrogate_encoded_in_utf8", ELIG, _swap(SEGMENT, b"ACTIVE", b"ACT\xed\xa0\x80IVE"), "decode", "invalid_encoding"),
    PoisonKind("utf8_bom_prefix", CARD, b"\xef\xbb\xbf" + _TXN, "decode", "invalid_encoding"),
    PoisonKind("utf16_with_bom", ATTR, orjson.dumps(NOTIFICATION).decode().encode("utf-16"), "decode", "invalid_encoding"),
    # Not well-formed JSON.
    PoisonKind("truncated_json", CARD, _TXN[: len(_TXN) // 2], "decode", "malformed_json"),
    PoisonKind("trailing_garbage", CARD, _TXN + b" x", "decode", "malformed_json"),
    PoisonKind("two_concatenated_objects", ELIG, orjson.dumps(SEGMENT) * 2, "decode", "malformed_json"),
    PoisonKind("trailing_comma", CARD, _TXN[:-1] + b",}", "decode", "malformed_json"),
    PoisonKind("single_quoted_strings", ATTR, orjson.dumps(NOTIFICATION).replace(b'"', b"'"), "decode", "malformed_json"),
    PoisonKind("javascript_comment", CARD, b"/* approved */" + _TXN, "decode", "malformed_json"),
    PoisonKind("raw_control_character_in_string", CARD, _swap(TXN, b"COFFEE", b"COF\x01FEE"), "decode", "malformed_json"),
    PoisonKind("number_with_leading_zero", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":0100'), "decode", "malformed_json"),
    # JSON, but not an object.
    PoisonKind("array_at_top_level", CARD, orjson.dumps([TXN]), "decode", "not_an_object"),
    PoisonKind("string_at_top_level", ATTR, orjson.dumps(orjson.dumps(NOTIFICATION).decode()), "decode", "not_an_object"),
    PoisonKind("json_null_value", ELIG, b"null", "decode", "not_an_object"),
    PoisonKind("number_at_top_level", CARD, b"1250", "decode", "not_an_object"),
    # Numbers JSON allows but a double or int64 cannot hold.
    PoisonKind("nan_token", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":NaN'), "decode", "non_finite_number"),
    PoisonKind("negative_infinity_token", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":-Infinity'), "decode", "non_finite_number"),
    PoisonKind("huge_exponent_float", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":1e400'), "decode", "non_finite_number"),
    PoisonKind("integer_beyond_uint64", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":18446744073709551616'), "decode", "integer_out_of_range"),
    PoisonKind("integer_below_int64", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":-9223372036854775809'), "decode", "integer_out_of_range"),
    PoisonKind("integer_with_400_digits", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":' + b"9" * 400), "decode", "integer_out_of_range"),
    # Text that cannot be UTF-8.
    PoisonKind("lone_high_surrogate_escape", CARD, _swap(TXN, b"COFFEE", b"COFFEE \\ud800"), "decode", "invalid_unicode"),
    PoisonKind("lone_low_surrogate_in_a_key", ELIG, _swap(SEGMENT, b'"segment_id"', b'"segment_id\\udc00"'), "decode", "invalid_unicode"),
    # Shapes the decoder refuses outright.
    PoisonKind("nested_33_levels", CARD, _nested(33), "decode", "too_deep", message="deeper than 32"),
    PoisonKind("nested_2000_levels", CARD, _nested(2000), "decode", "too_deep"),
    PoisonKind("duplicate_key", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":0,"amount_cents":100000'), "decode", "duplicate_key"),
    PoisonKind("duplicate_key_spelled_with_an_escape", CARD, _swap(TXN, b'"currency":"USD"', b'"currency":"USD","curr\\u0065ncy":"EUR"'), "decode", "duplicate_key"),
    PoisonKind("duplicate_key_in_a_nested_object", CARD, _swap(TXN_FULL, b'"name":"ADVANCEAUTO"', b'"name":"ADVANCEAUTO","name":"OTHER"'), "decode", "duplicate_key", key=_key(TXN_FULL)),
    PoisonKind("empty_value", CARD, b"", "decode", "empty_value"),
    PoisonKind("whitespace_only_value", ELIG, b" \r\n\t ", "decode", "empty_value"),
    PoisonKind("tombstone", CARD, None, "decode", "tombstone"),
    PoisonKind("oversize_value", CARD, _TXN + b" " * (MAX_VALUE_BYTES + 1 - len(_TXN)), "decode", "too_large", message=f"larger than {MAX_VALUE_BYTES} bytes"),
    # The envelope: schema version and event type.
    PoisonKind("empty_object", CARD, b"{}", "schema", "missing_field", "/schema_version"),
    PoisonKind("unknown_schema_version", CARD, _with(TXN, schema_version=2), "schema", "unknown_schema_version", "/schema_version"),
    PoisonKind("schema_version_as_string", ELIG, _with(SEGMENT, schema_version="1"), "schema", "wrong_type", "/schema_version"),
    PoisonKind("schema_version_as_float", CARD, _swap(TXN, b'"schema_version":1', b'"schema_version":1.0'), "schema", "wrong_type", "/schema_version"),
    PoisonKind("missing_event_type", ATTR, _without(NOTIFICATION, "event_type"), "schema", "missing_field", "/event_type"),
    PoisonKind("unknown_event_type", CARD, _with(TXN, event_type="refund"), "schema", "unknown_event_type", "/event_type"),
    PoisonKind("event_type_of_another_topic", CARD, _with(TXN, event_type="segment_user"), "schema", "unknown_event_type", "/event_type"),
    PoisonKind("event_type_in_wrong_case", ATTR, _with(NOTIFICATION, event_type="Notification_Attribution"), "schema", "unknown_event_type", "/event_type"),
    # Missing fields and wrong types.
    PoisonKind("missing_required_field", ELIG, _without(SEGMENT, "segment_id"), "schema", "missing_field", "/segment_id"),
    PoisonKind("missing_date_the_status_requires", CARD, _without(TXN, "authorization_date"), "schema", "missing_field", "/authorization_date"),
    PoisonKind("missing_nested_required_field", CARD, _with(TXN_FULL, processor_mids={"processor": "VISA", "mids": {"vmid": "12345678901"}}), "schema", "missing_field", "/processor_mids/mids/vsid", key=_key(TXN_FULL)),
    PoisonKind("id_as_number", CARD, _with(TXN, user_id=2), "schema", "wrong_type", "/user_id"),
    PoisonKind("required_field_null", ATTR, _with(NOTIFICATION, entity_id=None), "schema", "wrong_type", "/entity_id"),
    PoisonKind("object_field_as_string", CARD, _with(TXN, merchant="ADVANCEAUTO"), "schema", "wrong_type", "/merchant"),
    PoisonKind("unknown_field", CARD, _with(TXN, card_bim="411111"), "schema", "unknown_field", "/card_bim"),
    PoisonKind("keys_differing_only_by_case", CARD, _swap(TXN, b'"currency":"USD"', b'"currency":"USD","Currency":"USD"'), "schema", "unknown_field", "/Currency"),
    PoisonKind("card_number_as_a_key", CARD, _with(TXN, **{"4111111111111111": "x"}), "schema", "unknown_field", "/<unrecognised key>"),
    # Money.
    PoisonKind("negative_cents", CARD, _with(TXN, amount_cents=-100), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("fractional_cents", CARD, _with(TXN, amount_cents=12.5), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("integral_float_cents", CARD, _with(TXN, amount_cents=10.0), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("exponent_notation_cents", CARD, _swap(TXN, b'"amount_cents":0', b'"amount_cents":1e3'), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("cents_as_string", CARD, _with(TXN, amount_cents="1250"), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("cents_as_boolean", CARD, _with(TXN, amount_cents=True), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("cents_above_2_pow_53", CARD, _with(TXN, amount_cents=2**53), "schema", "invalid_amount", "/amount_cents"),
    PoisonKind("currency_lower_case", CARD, _with(TXN, currency="usd"), "schema", "invalid_field", "/currency", "ISO 4217"),
    PoisonKind("currency_numeric_code", CARD, _with(TXN, currency=840), "schema", "wrong_type", "/currency"),
    PoisonKind("currency_symbol", CARD, _with(TXN, currency="€"), "schema", "invalid_field", "/currency"),
    # Enums outside the contract.
    PoisonKind("status_not_in_contract", CARD, _with(TXN, status="PENDING"), "schema", "invalid_enum", "/status"),
    PoisonKind("enum_in_wrong_case", CARD, _with(TXN, direction="debit"), "schema", "invalid_enum", "/direction"),
    PoisonKind("segment_status_not_in_contract", ELIG, _with(SEGMENT, status="PAUSED"), "schema", "invalid_enum", "/status"),
    PoisonKind("medium_of_another_event_type", ATTR, _with(OFFER, medium="PUSH"), "schema", "invalid_enum", "/medium", key=_key(OFFER)),
    PoisonKind("event_code_not_in_contract", ATTR, _with(NOTIFICATION, event_code="CLICK"), "schema", "invalid_enum", "/event_code"),
    PoisonKind("state_not_in_contract", CARD, _with(TXN, merchant={"name": "A", "addr_state": "XX"}), "schema", "invalid_enum", "/merchant/addr_state"),
    # Datetimes.
    PoisonKind("naive_datetime", CARD, _with(TXN, authorization_date="2025-01-02T03:04:05"), "schema", "naive_datetime", "/authorization_date"),
    PoisonKind("naive_datetime_eligibility", ELIG, _with(SEGMENT, event_time="2025-11-30T23:30:00"), "schema", "naive_datetime", "/event_time"),
    PoisonKind("impossible_date", CARD, _with(TXN, authorization_date="2025-02-30T03:04:05Z"), "schema", "invalid_datetime", "/authorization_date", "not a real point in time"),
    PoisonKind("year_zero", ATTR, _with(NOTIFICATION, event_date="0000-01-01T00:00:00Z"), "schema", "invalid_datetime", "/event_date"),
    PoisonKind("date_before_year_1_in_utc", CARD, _with(TXN, authorization_date="0001-01-01T00:00:00+01:00"), "schema", "invalid_datetime", "/authorization_date"),
    PoisonKind("date_after_year_9999_in_utc", ELIG, _with(SEGMENT, event_time="9999-12-31T23:59:59-01:00"), "schema", "invalid_datetime", "/event_time"),
    PoisonKind("leap_second", CARD, _with(TXN, authorization_date="2016-12-31T23:59:60Z"), "schema", "invalid_datetime", "/authorization_date"),
    PoisonKind("offset_beyond_24_hours", CARD, _with(TXN, authorization_date="2025-01-02T03:04:05+25:00"), "schema", "invalid_datetime", "/authorization_date"),
    PoisonKind("offset_without_colon", ATTR, _with(NOTIFICATION, event_date="2025-01-01T09:30:00+0900"), "schema", "invalid_datetime", "/event_date", "RFC 3339"),
    PoisonKind("space_instead_of_t", CARD, _with(TXN, authorization_date="2025-01-02 03:04:05Z"), "schema", "invalid_datetime", "/authorization_date"),
    PoisonKind("epoch_seconds_timestamp", CARD, _with(TXN, authorization_date=1735787045), "schema", "wrong_type", "/authorization_date"),
    # Identifiers and text.
    PoisonKind("control_character_in_id", CARD, _with(TXN, event_id="evt-\x07-0002"), "schema", "invalid_field", "/event_id", "printable"),
    PoisonKind("newline_in_id", ELIG, _with(SEGMENT, segment_id="seg\n1"), "schema", "invalid_field", "/segment_id", "printable"),
    PoisonKind("zero_width_space_in_id", CARD, _with(TXN, transaction_id="txn\u200b2"), "schema", "invalid_field", "/transaction_id"),
    PoisonKind("nul_in_text", CARD, _with(TXN, description="COF\x00FEE"), "schema", "invalid_field", "/description", "NUL"),
    PoisonKind("empty_id", ATTR, _with(NOTIFICATION, entity_id=""), "schema", "invalid_field", "/entity_id"),
    PoisonKind("very_long_id", CARD, _with(TXN, event_id="e" * 256), "schema", "invalid_field", "/event_id", "255"),
    PoisonKind("very_long_text", CARD, _with(TXN, description="C" * 5000), "schema", "invalid_field", "/description", "1024"),
    PoisonKind("full_card_number_as_bin", CARD, _with(TXN, card_bin="4111111111111111"), "schema", "invalid_field", "/card_bin"),
    PoisonKind("non_ascii_digits_in_last_four", CARD, _with(TXN, card_last_four="١١١١"), "schema", "invalid_field", "/card_last_four"),
    PoisonKind("latitude_out_of_range", CARD, _with(TXN, merchant={"name": "A", "latitude": "91.5"}), "schema", "invalid_field", "/merchant/latitude"),
    PoisonKind("card_field_on_a_cash_payment", CARD, _with(CASH, card_bin="411111"), "schema", "field_not_allowed", "/card_bin", key=_key(CASH)),
    # Ids that would change the request URL.
    PoisonKind("organization_id_with_slash", CARD, _with(TXN, organization_id="org/acme"), "mapping", "unsafe_path_id", "/organization_id"),
    PoisonKind("organization_id_with_question_mark", ELIG, _with(SEGMENT, organization_id="org?admin=1"), "mapping", "unsafe_path_id", "/organization_id"),
    PoisonKind("organization_id_with_hash", ATTR, _with(NOTIFICATION, organization_id="org#x"), "mapping", "unsafe_path_id", "/organization_id"),
    PoisonKind("organization_id_with_percent", CARD, _with(TXN, organization_id="org%2Facme"), "mapping", "unsafe_path_id", "/organization_id"),
    PoisonKind("organization_id_with_space", ELIG, _with(SEGMENT, organization_id="org acme"), "mapping", "unsafe_path_id", "/organization_id"),
    PoisonKind("organization_id_dot_dot", CARD, _with(TXN, organization_id=".."), "mapping", "unsafe_path_id", "/organization_id"),
    PoisonKind("path_user_id_with_slash", ATTR, _with(NOTIFICATION, user_id="user/2"), "mapping", "unsafe_path_id", "/user_id", key=b"user/2"),
    PoisonKind("path_user_id_with_space", ATTR, _with(NOTIFICATION, user_id="user 2"), "mapping", "unsafe_path_id", "/user_id", key=b"user 2"),
    PoisonKind("path_user_id_with_percent", ATTR, _with(NOTIFICATION, user_id="user%2F2"), "mapping", "unsafe_path_id", "/user_id", key=b"user%2F2"),
    # Poison whose headers are odd too: the failure record must keep them byte for byte (null values included).
    PoisonKind("binary_and_null_headers_on_poison", CARD, _TXN[:-1], "decode", "malformed_json", headers=(("x-binary", b"\xff\xfe\x00"), ("x-null", None))),
    PoisonKind("null_replay_count_header_on_poison", CARD, _TXN[:-1], "decode", "malformed_json", headers=(("kard-bridge.replay-count", None),)),
    PoisonKind("binary_replay_count_header_on_poison", ELIG, orjson.dumps(SEGMENT)[:-1], "decode", "malformed_json", headers=(("kard-bridge.replay-count", b"\xb2\xff"),)),
)  # fmt: skip


def _tolerated(name: str, base: dict[str, Any], **changes: Any) -> bytes:
    """``base`` made unique for ``name`` (ids, so the API sees a new event) plus ``changes``."""
    unique: dict[str, Any] = {"event_id": f"tolerated-{name}"}
    if "transaction_id" in base:
        unique["transaction_id"] = f"tolerated-{name}"
    return _with(base, **{**unique, **changes})


TOLERATED: tuple[ToleratedKind, ...] = (
    ToleratedKind("non_utf8_header_value", CARD, _tolerated("hdr-binary", TXN), "headers are opaque to the bridge", headers=(("x-trace", b"\xff\xfe\xfd"),)),
    ToleratedKind("null_header_value", CARD, _tolerated("hdr-null", TXN), "Kafka header values may be null", headers=(("x-trace", None),)),
    ToleratedKind("bridge_named_headers_on_input", CARD, _tolerated("hdr-bridge", TXN), "only failure records read kard-bridge.* headers", headers=(("kard-bridge.reason", b"\xff"), ("kard-bridge.replay-count", None))),
    ToleratedKind("null_key", CARD, _tolerated("key-null", TXN), "the key only picks the partition; order follows user_id", key=None),
    ToleratedKind("binary_key", CARD, _tolerated("key-binary", TXN), "result records carry such keys as base64", key=b"\x00\xff\xfe"),
    ToleratedKind("trailing_newline", CARD, _tolerated("newline", TXN) + b"\r\n", "whitespace around JSON is JSON"),
    ToleratedKind("escaped_surrogate_pair", CARD, _tolerated("emoji", TXN).replace(b'"COFFEE"', b'"COFFEE \\ud83d\\ude00"'), "a paired surrogate escape is one valid character"),
    ToleratedKind("nine_fraction_digits", CARD, _tolerated("nanos", TXN, authorization_date="2025-01-02T03:04:05.123456789Z"), "RFC 3339 allows them; the bridge truncates to microseconds"),
    ToleratedKind("path_characters_in_transaction_user_id", CARD, _tolerated("user-path", TXN, user_id="user/2?#% x"), "a transaction's user id is in the body, not in the URL"),
    ToleratedKind("cents_at_2_pow_53_minus_1", CARD, _tolerated("max-cents", TXN, amount_cents=2**53 - 1), "the largest amount every JSON reader holds exactly"),
)  # fmt: skip


# -- valid neighbours --------------------------------------------------------------------------------------

_EPOCH = datetime(2025, 3, 1, tzinfo=UTC)


def neighbour(topic: EventKind, serial: int) -> bytes:
    """A valid event of ``topic``, unique by ``serial`` (ids, user and time), to surround a poison record."""
    stamp = (_EPOCH + timedelta(seconds=serial)).strftime("%Y-%m-%dT%H:%M:%SZ")
    ids = {"event_id": f"neighbour-{serial}", "user_id": f"neighbour-user-{serial}"}
    if topic is CARD:
        return _with(TXN, **ids, transaction_id=f"neighbour-txn-{serial}", authorization_date=stamp)
    if topic is ELIG:
        return _with(SEGMENT, **ids, event_time=stamp)
    return _with(NOTIFICATION, **ids, event_date=stamp)
