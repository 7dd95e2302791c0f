"""The sandbox's pure validation: the compiled schema validators and the datetime fast path agree with the
slow, obviously-correct checks they shortcut."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.sandbox.checks import _check_datetime, _diagnose_datetime
from bridge.sandbox.schemas import ENDPOINTS, MERCHANT
from bridge.sandbox.validation import Problem, RequestRejected, validate_body

_DIGITS = st.text("0123456789", min_size=1, max_size=4)
_NEAR_DATETIME = st.builds(
    "{}-{}-{}{}{}:{}:{}{}{}".format,
    _DIGITS,
    _DIGITS,
    _DIGITS,
    st.sampled_from(["T", " ", "t"]),
    _DIGITS,
    _DIGITS,
    _DIGITS,
    st.sampled_from(["", ".", ".5", ".123456", ".1234567890", ",5"]),
    st.sampled_from(["", "Z", "z", "+05:30", "-00:00", "+0530", "+24:00", "+5:30", "+05:3x"]),
)


def _details(check: Any, value: Any) -> list[str]:
    out: list[Problem] = []
    check(value, "/p", "d", out, True)
    return [p.detail for p in out]


@given(st.one_of(_NEAR_DATETIME, st.text(max_size=40)))
def test_datetime_fast_path_agrees_with_the_regex(value: str) -> None:
    """The fast path accepts exactly what the regex-based diagnosis accepts, and reports the same problem."""
    slow: list[Problem] = []
    _diagnose_datetime(value, "/p", "d", slow)
    assert _details(_check_datetime, value) == [p.detail for p in slow]


def test_datetime_rules() -> None:
    """Zoned ISO-8601 date-times pass; naive, malformed and impossible ones fail with a reason."""
    assert _details(_check_datetime, "2025-01-02T03:04:05Z") == []
    assert _details(_check_datetime, "2025-01-02T03:04:05.250+05:30") == []
    assert "time zone" in _details(_check_datetime, "2025-01-02T03:04:05")[0]
    assert "not a valid" in _details(_check_datetime, "2025-02-30T03:04:05Z")[0]
    assert "ISO-8601" in _details(_check_datetime, "2025-01-02 03:04:05Z")[0]


@given(
    st.dictionaries(
        st.sampled_from(["name", "id", "addrState", "latitude", "extra", "storeId"]),
        st.one_of(
            st.none(), st.text(max_size=3), st.sampled_from(["PA", "NY", "XX"]), st.integers(), st.lists(st.none())
        ),
    )
)
def test_compiled_validator_matches_a_naive_walk(obj: dict[str, Any]) -> None:
    """The generated merchant validator reports the same pointers as a plain walk over its field checks."""
    out: list[Problem] = []
    MERCHANT.validate(obj, "/m", out, True)
    expected: list[Problem] = []
    for key, value in obj.items():
        spec = MERCHANT.fields.get(key)
        if spec is None:
            expected.append(Problem(f"/m/{key}", f"unknown field {key!r}"))
        elif value is not None:
            spec.check(value, "/m", key, expected, True)
    expected += [Problem(f"/m/{k}", f"{k} is required") for k in MERCHANT.required if obj.get(k) is None]
    assert sorted(p.pointer for p in out) == sorted(p.pointer for p in expected)


def test_limits_and_envelope() -> None:
    """Per-endpoint limits and envelope rules are whole-request errors; items get their own problems."""
    spec = ENDPOINTS["fraud"]
    item = {"type": "fraudulentTransaction", "id": "t1", "attributes": {"userId": "u1"}}
    items, problems = validate_body({"data": [item, {**item, "id": ""}]}, spec.variants, batch=True, max_items=500)
    assert len(items) == 2 and [p.pointer for p in problems[1]] == ["/data/1/id"] and 0 not in problems
    bodies: list[Any] = [{"data": [item] * 501}, {"data": []}, {"data": item}, {}, [], {"data": [item], "meta": {}}]
    for body in bodies:
        with pytest.raises(RequestRejected):
            validate_body(body, spec.variants, batch=True, max_items=500)
