"""Strict decoding of record values: one precise reason per way to be wrong, and a fast path that agrees
with a plain reference decoder."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import DecodeError
from bridge.mapping.decode import DEFAULT_MAX_DEPTH, decode_value
from tests.event_strategies import EXAMPLES

PAN = b"4111111111111111"


def _reason(value: bytes | None, **kwargs: Any) -> str:
    """The DecodeError reason decoding ``value`` raises."""
    with pytest.raises(DecodeError) as caught:
        decode_value(value, **kwargs)
    return caught.value.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "tombstone"),
        (b"", "empty_value"),
        (b" \t\r\n ", "empty_value"),
        (b'\xef\xbb\xbf{"a":1}', "invalid_encoding"),
        (b'\xff\xfe{\x00"\x00', "invalid_encoding"),
        (b"\xfe\xff\x00{", "invalid_encoding"),
        (b'{"a":"\xff"}', "invalid_encoding"),
        (b'{"a":"\xc0\xaf"}', "invalid_encoding"),  # overlong encoding
        (b'{"a":"\xed\xa0\x80"}', "invalid_encoding"),  # a surrogate encoded in UTF-8
        (b'{"a":"\xe2\x82"}', "invalid_encoding"),  # truncated multi-byte sequence
        (b'{"a":', "malformed_json"),
        (b'{"a":1}}', "malformed_json"),
        (b"{'a':1}", "malformed_json"),
        (b'{"a":1,}', "malformed_json"),
        (b'{"a":"\x01"}', "malformed_json"),  # raw control character in a string
        (b"[1, 2]", "not_an_object"),
        (b'"text"', "not_an_object"),
        (b"42", "not_an_object"),
        (b"null", "not_an_object"),
        (b'{"a":NaN}', "non_finite_number"),
        (b'{"a":[Infinity]}', "non_finite_number"),
        (b'{"a":-Infinity}', "non_finite_number"),
        (b'{"a":1e400}', "non_finite_number"),
        (b'{"a":"\\ud800"}', "invalid_unicode"),
        (b'{"\\udfff":1}', "invalid_unicode"),
        (b'{"a":["x\\ud83d"]}', "invalid_unicode"),
        (b'{"a":18446744073709551616}', "integer_out_of_range"),
        (b'{"a":-9223372036854775809}', "integer_out_of_range"),
        (b'{"a":' + b"9" * 5000 + b"}", "integer_out_of_range"),
        (b'{"a":"\\u0041","b":' + b"9" * 40 + b"}", "integer_out_of_range"),
        (b'{"a":1,"a":2}', "duplicate_key"),
        (b'{"a" : 1 ,\n "a" : 1}', "duplicate_key"),
        (b'{"x":{"a":1,"b":{"c":1,"c":1}}}', "duplicate_key"),
        (b'{"a":1,"\\u0061":1}', "duplicate_key"),
        (b'{"a":":x","a":":x"}', "duplicate_key"),
        (b'{"a":' + b"[" * DEFAULT_MAX_DEPTH + b"]" * DEFAULT_MAX_DEPTH + b"}", "too_deep"),
        (b"[" * 100_000 + b"]" * 100_000, "too_deep"),
        (b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", "too_deep"),
    ],
)
def test_each_poison_gets_its_reason(value: bytes | None, reason: str) -> None:
    """Each poison-pill value is refused with its own documented reason."""
    assert _reason(value) == reason


@pytest.mark.parametrize(
    "value",
    [
        b'{"a":18446744073709551615,"b":-9223372036854775808}',
        b'{"arn":"1234567890123456789012345678","n":1234567890123456789}',
        b'{"a":":x","b":" :y","c":"x\\":y"}',
        b'{"a":1.5e10,"b":-0.0,"c":[true,false,null]}',
        b'{"\xc3\xa9":"caf\xc3\xa9 \xf0\x9f\x98\x80","e":"\\u00e9\\ud83d\\ude00"}',
        b'  {"a":{"b":{}}}  \n',
    ],
)
def test_accepts_edge_cases_and_returns_what_the_stdlib_reads(value: bytes) -> None:
    """Legal edge cases (64-bit bounds, long digit strings, colons, escapes, pairs) decode like json.loads."""
    assert decode_value(value) == json.loads(value)


@pytest.mark.parametrize("backslash", [False, True])
def test_depth_limit_is_exact(backslash: bool) -> None:
    """Nesting of exactly max_depth levels passes and one more is refused, on the fast and the slow path."""
    text = '"\\u0041"' if backslash else '"A"'

    def nested(levels: int) -> bytes:
        """An object nested ``levels`` deep around one string."""
        return ('{"a":' * levels + text + "}" * levels).encode()

    assert decode_value(nested(5), max_depth=5)
    assert _reason(nested(6), max_depth=5) == "too_deep"


def test_size_limit_is_exact_and_checked_before_parsing() -> None:
    """A value of exactly max_bytes is parsed, one byte more is refused as too_large even when it is garbage."""
    value = b'{"a":"' + b"x" * 20 + b'"}'
    assert decode_value(value, max_bytes=len(value))
    assert _reason(value + b" ", max_bytes=len(value)) == "too_large"
    assert _reason(b"\xff" * 100, max_bytes=99) == "too_large"


@pytest.mark.parametrize(
    "value",
    [
        b'{"pan":' + PAN + b",",
        b'{"pan":"' + PAN + b'","pan":"' + PAN + b'"}',
        b'{"pan":"' + PAN + b'\\ud800"}',
        b'{"pan":' + PAN * 3 + b"}",
        b'["' + PAN + b'"]',
    ],
)
def test_messages_never_quote_the_value(value: bytes) -> None:
    """Decode errors describe the problem without echoing any part of the value."""
    with pytest.raises(DecodeError) as caught:
        decode_value(value)
    assert PAN.decode() not in str(caught.value)
    assert caught.value.pointer is None


# -- differential test: the fast path against an independent, obviously correct reference ------------

_keys = st.sampled_from(["a", "b", "a:", " :x", ":", 'q"', "\\", "é", "\u2028"])
_strings = st.text(st.sampled_from(["a", ":", " ", '"', "\\", "é", "\n", "0", "9"]), max_size=6)
_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    _strings,
)
# Objects are lists of pairs so that duplicate keys can be generated.
_trees = st.recursive(
    _leaves,
    lambda children: (
        st.lists(children, max_size=3).map(lambda items: ("list", items))
        | st.lists(st.tuples(_keys, children), max_size=4).map(lambda pairs: ("object", pairs))
    ),
    max_leaves=10,
)


def _render(node: Any, draw: Any) -> str:
    """JSON text for a generated tree, with random whitespace and escaping."""
    space: str = draw(st.sampled_from(["", " ", "\n  ", "\t"]))
    if isinstance(node, tuple) and node[0] == "list":
        return "[" + ("," + space).join(_render(child, draw) for child in node[1]) + "]"
    if isinstance(node, tuple) and node[0] == "object":
        ascii_only: bool = draw(st.booleans())
        return (
            "{"
            + space
            + ("," + space).join(
                json.dumps(key, ensure_ascii=ascii_only) + space + ":" + space + _render(child, draw)
                for key, child in node[1]
            )
            + space
            + "}"
        )
    return json.dumps(node, ensure_ascii=draw(st.booleans()))


def _reference(node: Any, depth: int = 1) -> Any:
    """Build the expected value, or raise ValueError naming the reason the decoder must give."""
    if depth > DEFAULT_MAX_DEPTH:
        raise ValueError("too_deep")
    if isinstance(node, tuple) and node[0] == "list":
        return [_reference(child, depth + 1) for child in node[1]]
    if isinstance(node, tuple) and node[0] == "object":
        keys = [key for key, _ in node[1]]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate_key")
        return {key: _reference(child, depth + 1) for key, child in node[1]}
    if isinstance(node, int) and not isinstance(node, bool) and not -(2**63) <= node <= 2**64 - 1:
        raise ValueError("integer_out_of_range")
    return node


def _problems(node: Any) -> set[str]:
    """Every reason present anywhere in the tree (the decoder may report any one of them)."""
    problems: set[str] = set()

    def visit(current: Any, depth: int) -> None:
        """Collect the problems of ``current`` and its children."""
        if depth > DEFAULT_MAX_DEPTH:
            problems.add("too_deep")
            return
        if isinstance(current, tuple):
            children = current[1] if current[0] == "list" else [child for _, child in current[1]]
            if current[0] == "object" and len({k for k, _ in current[1]}) != len(current[1]):
                problems.add("duplicate_key")
            for child in children:
                visit(child, depth + 1)
        elif isinstance(current, int) and not isinstance(current, bool) and not -(2**63) <= current <= 2**64 - 1:
            problems.add("integer_out_of_range")

    visit(node, 1)
    return problems


@settings(max_examples=EXAMPLES(1000), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=_trees.map(lambda t: ("object", [("root", t)])), data=st.data())
def test_fast_path_agrees_with_reference(tree: Any, data: st.DataObject) -> None:
    """For documents with duplicate keys, huge integers, escapes and any whitespace, decode_value matches a
    reference built from the generating tree: same value, or one of the problems the tree really has."""
    raw = _render(tree, data.draw).encode("utf-8")
    problems = _problems(tree)
    if not problems:
        assert decode_value(raw) == _reference(tree)
    else:
        assert _reason(raw) in problems


@settings(max_examples=EXAMPLES(500), deadline=None)
@given(value=st.dictionaries(st.text(max_size=6), st.text(max_size=6) | st.integers(-(2**63), 2**63), max_size=6))
def test_compact_documents_decode_to_themselves(value: dict[str, Any]) -> None:
    """A document serialised by orjson (the common compact producer) decodes to the original dict."""
    assert decode_value(orjson.dumps(value)) == value
