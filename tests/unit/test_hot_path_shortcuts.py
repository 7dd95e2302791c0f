"""The per-record shortcuts give exactly what the long way gives: timestamps, result values, route paths."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import SchemaError
from bridge.events.common import _check_timestamp, format_utc, utc_text
from bridge.events.outcomes import ApiSummary, build_result_value, encode_key
from bridge.records import SourceRecord
from bridge.routes import Endpoint, MappedItem, Route
from tests.event_strategies import timestamps

# -- timestamps ---------------------------------------------------------------------------------------------


def _long_way(value: Any) -> tuple[str, Any]:
    """``format_utc(check(value))``, or the refusal's reason and message."""
    try:
        return "ok", format_utc(_check_timestamp(value))
    except SchemaError as exc:
        return "refused", (exc.reason, exc.message)


def _short_way(value: Any) -> tuple[str, Any]:
    """``utc_text(value)``, or the refusal's reason and message."""
    try:
        return "ok", utc_text(value)
    except SchemaError as exc:
        return "refused", (exc.reason, exc.message)


_TRICKY = [
    "2025-01-02T03:04:05Z", "2025-02-30T00:00:00Z", "2024-02-29T00:00:00Z", "2025-01-01T24:00:00Z",
    "2024-12-31T23:59:60Z", "0000-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z",
    "2025-13-01T00:00:00Z", "2025-01-02T03:04:05z", "2025-01-02t03:04:05Z", "2025-01-02 03:04:05Z",
    "２０２５-01-02T03:04:05Z", "2025-01-02T03:04:05.000Z", "2025-01-02T03:04:05+00:00", "2025-01-02T03:04:05",
    "2025-01-02T03:04:5Z", "2025-01-02T03:04:05ZZ", "", None, 20250102, ["2025-01-02T03:04:05Z"],
]  # fmt: skip


@pytest.mark.parametrize("value", _TRICKY)
def test_utc_text_accepts_refuses_and_formats_like_check_then_format(value: Any) -> None:
    """Edge cases (impossible dates, leap seconds, lower-case z, fractions, offsets, non-strings) match exactly."""
    assert _short_way(value) == _long_way(value)


@settings(max_examples=500, deadline=None)
@given(value=st.one_of(timestamps(), st.text(max_size=25)))
def test_utc_text_matches_check_then_format_on_any_input(value: str) -> None:
    """For generated timestamps (every zone and fraction) and arbitrary text, the shortcut equals the long way."""
    assert _short_way(value) == _long_way(value)


# -- result values ------------------------------------------------------------------------------------------


def _one_dump(record: SourceRecord, item: MappedItem, **kw: Any) -> bytes:
    """The result value as one ``orjson.dumps`` of the whole document (the shape before the memo)."""
    key, key_encoding = encode_key(record.key)
    return orjson.dumps(
        {
            "schema_version": 1,
            "outcome": "delivered",
            "source": {
                "topic": record.topic,
                "partition": record.partition,
                "offset": record.offset,
                "key": key,
                "key_encoding": key_encoding,
                "timestamp_ms": record.timestamp_ms,
            },
            "event_id": item.event_id or None,
            "item_id": item.item_id,
            "route": {
                "endpoint": item.route.endpoint.value,
                "path": item.route.path,
                "organization_id": item.route.organization_id,
            },
            "http_status": kw["http_status"],
            "response": kw["response"].model_dump(),
            "attempts": kw["attempts"],
            "latency_ms": round(kw["latency_ms"], 3),
            "first_attempt_at": format_utc(kw["first_attempt_at"]),
            "completed_at": format_utc(kw["completed_at"]),
            "bridge": {"instance_id": kw["instance_id"], "version": kw["bridge_version"]},
        }
    )


def test_result_values_equal_one_dump_of_the_document_for_every_argument_mix() -> None:
    """Batches share a serialised tail; any change of any argument (also to equal-but-different values) shows."""
    t0 = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    summaries = [
        ApiSummary(job_id="j", job_status="queued", batch_items=3),
        ApiSummary(total_processed=5, partial=True),
    ]
    values: dict[str, list[Any]] = {
        "http_status": [202, 207, True],
        "response": [*summaries, ApiSummary(job_id="j", job_status="queued", batch_items=3)],
        "attempts": [1, 2, True],
        "latency_ms": [12.34567, 12, 0.0, -0.0, 5.0],
        "first_attempt_at": [t0, t0.astimezone(timezone(timedelta(hours=2))), t0 + timedelta(microseconds=1)],
        "completed_at": [t0, t0 + timedelta(seconds=1)],
        "instance_id": ["host-1", "host-2"],
        "bridge_version": ["0.1.0"],
    }
    records = [SourceRecord("kard.card-transactions", 1, 7, key, b"{}", (), 1700) for key in (b"user-1", b"\xff", None)]
    items = [
        MappedItem(Route(Endpoint.TRANSACTIONS, "org-1"), {}, "e1", "u", b"{}", "e1"),
        MappedItem(Route(Endpoint.USER_ATTRIBUTIONS, "org 1", "u/1"), {}, "d1", "u", b"{}"),
    ]
    names = list(values)
    for n, combination in enumerate(itertools.product(*values.values())):
        kw = dict(zip(names, combination, strict=True))
        record, item = records[n % len(records)], items[n % len(items)]
        for _ in range(2):  # the second call is served by the memo when it may be
            assert build_result_value(record, item, **kw) == _one_dump(record, item, **kw)


# -- routes -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "path"),
    [
        (Route(Endpoint.TRANSACTIONS, "org 1"), "v2/issuers/org%201/transactions"),
        (Route(Endpoint.FRAUD, "o/rg"), "v2/issuers/o%2Frg/fraud"),
        (Route(Endpoint.USER_ATTRIBUTIONS, "org", "u?1"), "v2/issuers/org/users/u%3F1/attributions"),
        (Route(Endpoint.BULK_ATTRIBUTIONS, "org"), "v2/internal/attributions"),
        (Route(Endpoint.ELIGIBILITY), "internal/eligibility-broker/ingest"),
    ],
)
def test_route_path_is_computed_once_and_does_not_change_identity(route: Route, path: str) -> None:
    """The stored path is the percent-encoded request path; equality, hashing and repr ignore it."""
    assert route.path == path
    twin = Route(route.endpoint, route.organization_id, route.user_id)
    assert twin == route and hash(twin) == hash(route)
    assert "path" not in repr(route)
