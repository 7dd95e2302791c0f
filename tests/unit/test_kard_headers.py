"""Tests for ``bridge.kard.headers``: server back-off hints from ``Retry-After`` and ``X-RateLimit-Reset``."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest

from bridge.kard.headers import parse_rate_limit_reset, parse_retry_after, retry_after_from_headers

NOW = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(("value", "expected"), [("0", 0.0), ("7", 7.0), (" 120 ", 120.0), ("1.5", 1.5)])
def test_retry_after_delta_seconds(value: str, expected: float) -> None:
    """Delta-seconds (and a lenient fractional form) are returned as seconds to wait."""
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    "value",
    [
        "Thu, 02 Jan 2025 03:04:35 GMT",  # IMF-fixdate (RFC 9110 preferred)
        "Thursday, 02-Jan-25 03:04:35 GMT",  # obsolete RFC 850 form
        "Thu Jan  2 03:04:35 2025",  # obsolete asctime form (no zone: GMT)
    ],
)
def test_retry_after_http_date_in_the_future(value: str) -> None:
    """An HTTP-date in any of the three RFC 9110 formats becomes the seconds left until then."""
    assert parse_retry_after(value, now=NOW) == pytest.approx(30.0)


def test_retry_after_http_date_in_the_past_is_zero() -> None:
    """A date that has already passed means "retry now", not a negative wait."""
    assert parse_retry_after("Thu, 02 Jan 2025 03:00:00 GMT", now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "soon", "-5", "1e3", "nan", "inf", "5 seconds", "٣"])
def test_retry_after_malformed_is_none(value: str | None) -> None:
    """Absent, negative, non-decimal or non-ASCII-digit values give no hint instead of raising."""
    assert parse_retry_after(value, now=NOW) is None


def test_rate_limit_reset_is_absolute_epoch() -> None:
    """``X-RateLimit-Reset`` is an absolute epoch in seconds (CONTRACT.md §3), so the wait is reset - now."""
    assert parse_rate_limit_reset(str(int(NOW) + 12), now=NOW) == pytest.approx(12.0)


def test_rate_limit_reset_in_the_past_is_zero() -> None:
    """A reset time already reached means the window is open again."""
    assert parse_rate_limit_reset(str(int(NOW) - 100), now=NOW) == 0.0


@pytest.mark.parametrize("value", [None, "", "tomorrow", "-1"])
def test_rate_limit_reset_malformed_is_none(value: str | None) -> None:
    """Unusable reset values give no hint."""
    assert parse_rate_limit_reset(value, now=NOW) is None


def test_retry_after_wins_over_rate_limit_reset() -> None:
    """When both headers are valid, ``Retry-After`` is the server's explicit instruction and wins."""
    headers = httpx.Headers({"Retry-After": "3", "X-RateLimit-Reset": str(int(NOW) + 50)})
    assert retry_after_from_headers(headers, now=NOW) == 3.0


def test_rate_limit_reset_used_when_retry_after_is_unusable() -> None:
    """A malformed ``Retry-After`` falls back to ``X-RateLimit-Reset``."""
    headers = httpx.Headers({"Retry-After": "later", "X-RateLimit-Reset": str(int(NOW) + 50)})
    assert retry_after_from_headers(headers, now=NOW) == pytest.approx(50.0)


def test_plain_dict_headers_are_matched_case_insensitively() -> None:
    """A plain dict with any header-name case works as well as ``httpx.Headers``."""
    assert retry_after_from_headers({"RETRY-AFTER": "9"}, now=NOW) == 9.0
    assert retry_after_from_headers({"x-ratelimit-reset": str(int(NOW) + 4)}, now=NOW) == pytest.approx(4.0)


def test_no_hint_headers_is_none() -> None:
    """Without either header there is no hint."""
    assert retry_after_from_headers(httpx.Headers({"Content-Type": "application/json"}), now=NOW) is None
