"""Field checks for the sandbox's schemas: strings, integers, enums, ISO-8601 date-times, nested objects.

Each factory returns a :class:`~bridge.sandbox.validation.FieldCheck`: a check function that appends a
:class:`~bridge.sandbox.validation.Problem` for every bad value (the authority), and an inline expression that
is True only for good values (the compiled validators' fast path). Details never echo the submitted value.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from bridge.sandbox.validation import FieldCheck, ObjectSchema, Problem

__all__ = ["datetime_check", "enum_check", "enum_list_check", "int_check", "object_check", "str_check"]


def _plain_str(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
    if type(value) is not str:
        out.append(Problem(f"{parent}/{name}", f"{name} must be a string"))


def str_check(*, nonempty: bool = False, pattern: str | None = None, rule: str = "") -> FieldCheck:
    """A string; optionally non-empty and/or fully matching ``pattern`` (described by ``rule``)."""
    if not nonempty and pattern is None:
        return FieldCheck(_plain_str, "type(v) is str")
    regex = re.compile(pattern) if pattern else None

    def check(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
        if type(value) is not str:
            out.append(Problem(f"{parent}/{name}", f"{name} must be a string"))
        elif nonempty and not value:
            out.append(Problem(f"{parent}/{name}", f"{name} must not be empty"))
        elif regex is not None and regex.fullmatch(value) is None:
            out.append(Problem(f"{parent}/{name}", f"{name} must be {rule}"))

    if regex is not None:
        return FieldCheck(check, "type(v) is str and {arg}(v) is not None", regex.fullmatch)
    return FieldCheck(check, "type(v) is str and v != ''")


def int_check(*, allowed: frozenset[int] | None = None) -> FieldCheck:
    """A JSON integer (not a float, not a boolean); optionally one of ``allowed``."""
    listed = ", ".join(str(v) for v in sorted(allowed)) if allowed else ""

    def check(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
        if type(value) is not int:
            out.append(Problem(f"{parent}/{name}", f"{name} must be an integer"))
        elif allowed is not None and value not in allowed:
            out.append(Problem(f"{parent}/{name}", f"{name} must be one of {listed}"))

    if allowed is not None:
        return FieldCheck(check, "type(v) is int and v in {arg}", allowed)
    return FieldCheck(check, "type(v) is int")


def enum_check(values: tuple[str, ...]) -> FieldCheck:
    """A string from a closed list (the documented values of an SDK ``Literal[...] | Any``)."""
    allowed = frozenset(values)
    listed = ", ".join(values)

    def check(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
        if type(value) is not str or value not in allowed:
            out.append(Problem(f"{parent}/{name}", f"{name} must be one of {listed}"))

    return FieldCheck(check, "type(v) is str and v in {arg}", allowed)


def enum_list_check(values: tuple[str, ...]) -> FieldCheck:
    """An array of strings from a closed list; ``[]`` is allowed."""
    allowed = frozenset(values)
    listed = ", ".join(values)

    def check(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
        if type(value) is not list:
            out.append(Problem(f"{parent}/{name}", f"{name} must be an array"))
            return
        for i, v in enumerate(value):
            if type(v) is not str or v not in allowed:
                out.append(Problem(f"{parent}/{name}/{i}", f"{name} items must be one of {listed}"))

    return FieldCheck(check)


_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(Z|[+-]\d{2}:\d{2})?")


_fromisoformat = datetime.fromisoformat


def _check_datetime(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
    # Fast path for the usual shapes ``...:ss[.fff]Z`` and ``...:ss[.fff]±hh:mm``: fixed separators, then
    # fromisoformat, which rejects non-digits and out-of-range fields. Anything else gets the regex's diagnosis.
    if type(value) is str and len(value) >= 20 and value.isascii():
        tail = value[19:]
        if tail[0] == ".":
            zone = tail[1:].lstrip("0123456789")
            tail = zone if 1 <= len(tail) - 1 - len(zone) <= 9 else ""
        if (
            (tail == "Z" or (len(tail) == 6 and tail[0] in "+-" and tail[3] == ":"))
            and value[10] == "T"
            and value[4] == value[7] == "-"
            and value[13] == value[16] == ":"
        ):
            try:
                _fromisoformat(value)
            except ValueError:
                pass
            else:
                return
    _diagnose_datetime(value, parent, name, out)


def _diagnose_datetime(value: Any, parent: str, name: str, out: list[Problem]) -> None:
    if type(value) is not str:
        out.append(Problem(f"{parent}/{name}", f"{name} must be an ISO-8601 date-time string"))
        return
    match = _DATETIME.fullmatch(value)
    if match is None:
        out.append(Problem(f"{parent}/{name}", f"{name} must be an ISO-8601 date-time (YYYY-MM-DDThh:mm:ss.sTZD)"))
    elif match.group(1) is None:
        detail = f"{name} must include a time zone designator (Z or +hh:mm or -hh:mm)"
        out.append(Problem(f"{parent}/{name}", detail))
    else:
        try:
            _fromisoformat(value)
        except ValueError:
            out.append(Problem(f"{parent}/{name}", f"{name} is not a valid date-time"))


def datetime_check() -> FieldCheck:
    """An ISO-8601 date-time string WITH a zone (``Z`` or ``±hh:mm``); naive values are rejected."""
    return FieldCheck(_check_datetime)


def object_check(schema: ObjectSchema) -> FieldCheck:
    """A nested object checked against ``schema``."""
    validate = schema.validate

    def check(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
        validate(value, f"{parent}/{name}", out, strict)

    return FieldCheck(check)
