"""Server back-off hints: how long the Kard API asked us to wait, read from response headers.

Two headers, as CONTRACT.md §3 describes them:

* ``Retry-After`` (RFC 9110 §10.2.3): either delta-seconds (``"120"``) or an HTTP-date
  (``"Wed, 21 Oct 2015 07:28:00 GMT"``). It wins when both headers are present and valid.
* ``X-RateLimit-Reset``: an **absolute** Unix epoch in seconds at which the rate-limit window resets.

Pure functions: the caller passes ``now`` (wall-clock epoch seconds, ``time.time()``) because both an
HTTP-date and an epoch are absolute instants. Results are seconds to wait, ``>= 0.0``, or ``None`` when
no usable hint is present. A hint in the past is ``0.0`` ("you may retry now"). Values are *not* capped
here: ``pipeline/retry.py`` cuts hints to ``max_retry_after`` so a bogus header cannot park the bridge.
Malformed values (garbage, negative numbers, NaN, infinity) are ignored rather than raised: a header
must never turn a retryable response into a crash.
"""

from __future__ import annotations

import email.utils
import math
import re
from collections.abc import Mapping
from datetime import UTC

__all__ = ["parse_rate_limit_reset", "parse_retry_after", "retry_after_from_headers"]

# RFC 9110 says ``1*DIGIT``; we also accept a fractional part, which some servers send.
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _parse_number(value: str) -> float | None:
    text = value.strip()
    if not _NUMBER.fullmatch(text):
        return None
    number = float(text)
    return number if math.isfinite(number) else None


def parse_retry_after(value: str | None, *, now: float) -> float | None:
    """Seconds to wait according to a ``Retry-After`` value, or ``None`` if absent or malformed.

    Args:
        value: the raw header value (delta-seconds or an HTTP-date), or ``None``.
        now: the current wall-clock time in epoch seconds, used for HTTP-dates.
    """
    if value is None:
        return None
    delta = _parse_number(value)
    if delta is not None:
        return delta
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # asctime dates and "-0000" carry no zone; HTTP-dates are always GMT
        when = when.replace(tzinfo=UTC)
    wait = when.timestamp() - now
    return wait if wait > 0.0 else 0.0


def parse_rate_limit_reset(value: str | None, *, now: float) -> float | None:
    """Seconds until an ``X-RateLimit-Reset`` epoch (absolute seconds), or ``None`` if absent or malformed.

    Args:
        value: the raw header value, an absolute Unix time in seconds, or ``None``.
        now: the current wall-clock time in epoch seconds.
    """
    if value is None:
        return None
    reset = _parse_number(value)
    if reset is None:
        return None
    wait = reset - now
    return wait if wait > 0.0 else 0.0


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive lookup that works for ``httpx.Headers`` and for plain dicts."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def retry_after_from_headers(headers: Mapping[str, str], *, now: float) -> float | None:
    """The server's back-off hint in seconds: ``Retry-After`` first, then ``X-RateLimit-Reset``.

    Args:
        headers: response headers; ``httpx.Headers`` or any mapping (looked up case-insensitively).
        now: the current wall-clock time in epoch seconds.
    """
    hint = parse_retry_after(_header(headers, "retry-after"), now=now)
    if hint is not None:
        return hint
    return parse_rate_limit_reset(_header(headers, "x-ratelimit-reset"), now=now)
