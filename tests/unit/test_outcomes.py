"""Result values and failure headers: shapes that match their models, originals kept byte for byte, no leaks."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import (
    BridgeError,
    ConfigError,
    DecodeError,
    MappingError,
    RejectedError,
    SchemaError,
    TransientDeliveryError,
)
from bridge.events import outcomes
from bridge.events.outcomes import (
    FAILURE_HEADER_NAMES,
    HEADER_REASON,
    HEADER_REPLAY_COUNT,
    ApiSummary,
    FailureHeaders,
    ReasonClass,
    ResultValue,
    build_failure_headers,
    build_result_value,
    decode_key,
    encode_key,
    failure_headers_for,
    replay_count_of,
    sanitize_text,
)
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem, Route
from tests.event_strategies import EXAMPLES

T0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
T1 = datetime(2025, 1, 2, 3, 4, 6, 250000, tzinfo=UTC)
RECORD = SourceRecord(
    "kard.card-transactions", 2, 99, b"user-1", b'{"x":1}', (("trace", b"\x00\xff"), ("a", b"")), 1_735_787_045_000
)
ITEM = MappedItem(
    route=Route(Endpoint.TRANSACTIONS, "org-demo"),
    item={"type": "transaction", "id": "evt-1"},
    item_id="evt-1",
    ordering_key="user-1",
    encoded=b'{"type":"transaction","id":"evt-1"}',
    event_id="evt-1",
)


def test_header_names_are_prefixed_and_unique() -> None:
    """Every failure header is a distinct ``kard-bridge.*`` name, and each has a module constant."""
    assert len(set(FAILURE_HEADER_NAMES)) == len(FAILURE_HEADER_NAMES)
    assert all(name.startswith("kard-bridge.") for name in FAILURE_HEADER_NAMES)
    constants = {getattr(outcomes, n) for n in outcomes.__all__ if n.startswith("HEADER_") and n != "HEADER_PREFIX"}
    assert constants == set(FAILURE_HEADER_NAMES)


def test_result_value_matches_its_model() -> None:
    """The result bytes parse as a ResultValue carrying the source coordinates, route and API summary."""
    value = build_result_value(
        RECORD,
        ITEM,
        http_status=202,
        response=ApiSummary(job_id="job-1", job_status="queued", batch_items=17),
        attempts=2,
        latency_ms=12.34567,
        first_attempt_at=T0,
        completed_at=T1,
        instance_id="host-1",
        bridge_version="0.1.0",
    )
    parsed = ResultValue.model_validate_json(value)
    assert parsed.source.key == "user-1"
    assert parsed.source.key_encoding == "utf-8"
    assert parsed.route.path == "v2/issuers/org-demo/transactions"
    assert parsed.response.job_id == "job-1"
    assert parsed.latency_ms == 12.346
    document = orjson.loads(value)
    assert document["completed_at"] == "2025-01-02T03:04:06.250000Z"
    assert document["first_attempt_at"] == "2025-01-02T03:04:05Z"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        (None, (None, None)),
        (b"user-1", ("user-1", "utf-8")),
        ("usér".encode(), ("usér", "utf-8")),
        (b"\xff\x00", ("/wA=", "base64")),
        (b"a\nb", ("YQpi", "base64")),
        (b"", ("", "utf-8")),
    ],
)
def test_keys_are_text_when_printable_else_base64(key: bytes | None, expected: tuple[str | None, str | None]) -> None:
    """Printable UTF-8 keys stay readable, anything else is base64, and both decode back to the same bytes."""
    assert encode_key(key) == expected
    assert decode_key(*encode_key(key)) == key


@given(key=st.one_of(st.none(), st.binary(max_size=40)))
@settings(max_examples=EXAMPLES(300))
def test_key_encoding_round_trips(key: bytes | None) -> None:
    """encode_key then decode_key returns the original key bytes."""
    assert decode_key(*encode_key(key)) == key


def test_failure_keeps_original_headers_byte_for_byte_then_adds_its_own() -> None:
    """The failure record's headers start with the input's headers unchanged, followed by kard-bridge.* ones."""
    failure = failure_headers_for(
        RECORD,
        SchemaError("invalid_amount", "must be cents", pointer="/amount_cents"),
        attempts=0,
        first_failure_at=T0,
        last_failure_at=T0,
        bridge_version="0.1.0",
        bridge_instance="host-1",
    )
    headers = build_failure_headers(RECORD, failure)
    assert headers[: len(RECORD.headers)] == RECORD.headers
    added = dict(headers[len(RECORD.headers) :])
    assert added[HEADER_REASON] == b"invalid_amount"
    assert added["kard-bridge.reason-class"] == b"schema"
    assert added["kard-bridge.pointer"] == b"/amount_cents"
    assert added["kard-bridge.source-offset"] == b"99"
    assert added["kard-bridge.first-failure-at"] == b"2025-01-02T03:04:05Z"
    assert added["kard-bridge.replay-count"] == b"0"
    assert "kard-bridge.http-status" not in added
    assert FailureHeaders.from_headers(headers) == failure


@pytest.mark.parametrize(
    ("error", "reason", "reason_class", "status"),
    [
        (DecodeError("malformed_json", "bad"), "malformed_json", ReasonClass.DECODE, None),
        (MappingError("unsafe_path_id", "bad", pointer="/user_id"), "unsafe_path_id", ReasonClass.MAPPING, None),
        (RejectedError("refused", status=400, detail="d", pointer="/data/0"), "http_400", ReasonClass.REJECTED, 400),
        (RejectedError("refused in 207"), "api_rejected", ReasonClass.REJECTED, None),
        (TransientDeliveryError("503", status=503), "retries_exhausted", ReasonClass.RETRIES_EXHAUSTED, 503),
        (TransientDeliveryError("timeout"), "retries_exhausted", ReasonClass.RETRIES_EXHAUSTED, None),
    ],
)
def test_failure_classification(error: BridgeError, reason: str, reason_class: ReasonClass, status: int | None) -> None:
    """Record errors keep their reason; API refusals are http_<status>; transient errors mean retries_exhausted."""
    failure = failure_headers_for(
        RECORD,
        error,
        attempts=3,
        first_failure_at=T0,
        last_failure_at=T1,
        bridge_version="0.1.0",
        item=ITEM,
    )
    assert (failure.reason, failure.reason_class, failure.http_status) == (reason, reason_class, status)
    assert failure.item_id == "evt-1"
    assert failure.route is Endpoint.TRANSACTIONS


def test_non_record_errors_are_not_failures() -> None:
    """A configuration error cannot become a failure record."""
    with pytest.raises(TypeError):
        failure_headers_for(
            RECORD, ConfigError("x"), attempts=0, first_failure_at=T0, last_failure_at=T0, bridge_version="0"
        )


def test_api_details_are_sanitised() -> None:
    """API error details lose control characters, card numbers (Luhn-valid) are masked, and length is capped."""
    detail = "cardBIN 4111 1111 1111 1111\nand 5555555555554444 but not 1234567890123"
    text = sanitize_text(detail)
    assert "4111 1111" not in text and "5555555555554444" not in text
    assert "****1111" in text and "****4444" in text and "1234567890123" in text
    assert "\n" not in text
    assert len(sanitize_text("x" * 5000)) == 1024


def test_replayed_record_keeps_its_count_and_last_header_wins() -> None:
    """A replayed record's failure carries its replay count; when names repeat, the last occurrence is read."""
    replayed = SourceRecord("t", 0, 1, None, b"{}", ((HEADER_REPLAY_COUNT, b"1"), (HEADER_REPLAY_COUNT, b"3")), 0)
    assert replay_count_of(replayed.headers) == 3
    assert replay_count_of((("x", b"1"), (HEADER_REPLAY_COUNT, b"junk"))) == 0
    first = failure_headers_for(
        replayed, DecodeError("tombstone", "t"), attempts=0, first_failure_at=T0, last_failure_at=T0, bridge_version="0"
    )
    again = failure_headers_for(
        replayed,
        DecodeError("empty_value", "e"),
        attempts=0,
        first_failure_at=T0,
        last_failure_at=T1,
        bridge_version="1",
    )
    headers = build_failure_headers(replayed, first) + again.to_headers()
    assert FailureHeaders.from_headers(headers) == again
    assert again.replay_count == 3
