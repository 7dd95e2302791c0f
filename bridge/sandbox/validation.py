"""Pure request validation for the Kard sandbox: a parsed JSON body in, problems with JSON pointers out.

Why a hand-written checker instead of pydantic: the sandbox must name *every* problem of *every* item with a
JSON pointer (``/data/3/attributes/cardBIN``), apply the conditional rules of CONTRACT.md §6.1 (dates by
``status``, matched-transaction "must be left out" rules) and stay far faster than the bridge it tests
(benchmarks push ~1M items through it). Each field has a small check function (the authority on errors) and
an inline "fast" expression; each object schema is compiled once into straight-line Python that evaluates
the fast expressions and calls a check function only for a bad value. JSON pointers are built only on error.

Choices (the contract leaves them open; the module docstring of :mod:`bridge.sandbox.app` repeats them):

* **Unknown fields** are rejected by default (``strict=True``): a misspelt optional field (``cardBin``) would
  otherwise pass silently, which is exactly the bug a sandbox should catch. ``strict=False`` ignores them.
* **``null``** for an optional field counts as "left out"; for a required field it is an error.
* **Required strings** must be non-empty. Free-text optional strings may be empty.
* **Datetimes** must match ``YYYY-MM-DDThh:mm:ss[.s+](Z|±hh:mm)`` and be a real instant; a missing zone is
  its own error ("must include a time zone designator").
* **Money** (``amount``, ``subtotal``) and ``auditCode`` must be JSON integers (``10.0`` and ``true`` fail).
* Error details name the field and the rule, never the submitted value (it may be card data).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Check",
    "FieldCheck",
    "ItemSpec",
    "ObjectSchema",
    "Problem",
    "RequestRejected",
    "Rule",
    "Validator",
    "check_object",
    "empty_object_check",
    "validate_body",
]


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one item (or with the request): where, and what."""

    pointer: str
    detail: str
    status: str = "400"
    title: str = "Invalid Request"


class RequestRejected(Exception):
    """The whole request is refused (bad envelope, over the item limit...)."""

    def __init__(self, detail: str, *, pointer: str | None = None, status: int = 400, title: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.pointer = pointer
        self.status = status
        self.title = title or ("Invalid Request" if status == 400 else "Error")


#: A field check: ``(value, pointer of the parent object, field name, problems out, strict)``; appends problems.
Check = Callable[[Any, str, str, list[Problem], bool], None]
#: A cross-field rule on one attributes object: ``(attributes, pointer of the object, problems out)``.
Rule = Callable[[dict[str, Any], str, list[Problem]], None]
#: A compiled object validator: ``(object, its pointer, problems out, strict)``.
Validator = Callable[[Any, str, list[Problem], bool], None]


@dataclass(frozen=True, slots=True)
class FieldCheck:
    """How one field is checked.

    ``check`` is the authority: it appends a problem for every invalid value. ``fast`` is an optional Python
    expression over ``v`` (``{arg}`` stands for ``fast_arg``) that is True **only** for valid values; the
    compiled validator evaluates it inline and calls ``check`` only when it is False, so the common, valid case
    costs no function call.
    """

    check: Check
    fast: str | None = None
    fast_arg: Any = None


@dataclass(frozen=True, slots=True)
class ObjectSchema:
    """The fields an object may have, the ones it must have, and rules that span fields.

    On creation the schema is compiled into straight-line Python (one ``obj.get`` and one inline test per field,
    no function call or pointer string for a valid field), several times faster than walking a dict of check
    functions; see :func:`_compile`.
    """

    fields: Mapping[str, FieldCheck]
    required: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    validate: Validator = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validate", _compile(self))


def _not_object(obj: Any, pointer: str, out: list[Problem]) -> None:
    out.append(Problem(pointer or "/", f"{_leaf(pointer)} must be an object"))


def _unknown_fields(obj: dict[str, Any], known: frozenset[str], pointer: str, out: list[Problem]) -> None:
    out.extend(Problem(f"{pointer}/{_escape(k)}", f"unknown field {k!r}") for k in obj if k not in known)


def _compile(schema: ObjectSchema) -> Validator:
    """Generate the validator of ``schema``. Only names and ``repr``s of our own field names go into the code."""
    ns: dict[str, Any] = {
        "Problem": Problem,
        "_not_object": _not_object,
        "_unknown": _unknown_fields,
        "KNOWN": frozenset(schema.fields),
    }
    lines = [
        "def validate(obj, ptr, out, strict):",
        "    if type(obj) is not dict:",
        "        _not_object(obj, ptr, out)",
        "        return",
        "    if strict and not obj.keys() <= KNOWN:",
        "        _unknown(obj, KNOWN, ptr, out)",
        "    get = obj.get",
    ]
    for i, (name, spec) in enumerate(schema.fields.items()):
        ns[f"c{i}"], ns[f"a{i}"] = spec.check, spec.fast_arg
        lines.append(f"    v = get({name!r})")
        if name in schema.required:
            lines += [
                "    if v is None:",
                f"        out.append(Problem(ptr + {'/' + name!r}, {name + ' is required'!r}))",
                "    else:",
            ]
        else:
            lines.append("    if v is not None:")
        call = f"c{i}(v, ptr, {name!r}, out, strict)"
        if spec.fast:
            lines.append(f"        if not ({spec.fast.format(arg=f'a{i}')}): {call}")
        else:
            lines.append(f"        {call}")
    for j, rule in enumerate(schema.rules):
        ns[f"r{j}"] = rule
        lines.append(f"    r{j}(obj, ptr, out)")
    exec("\n".join(lines), ns)  # noqa: S102 - the code is generated from our own schema tables only
    validator: Validator = ns["validate"]
    return validator


def check_object(schema: ObjectSchema, obj: Any, pointer: str, out: list[Problem], strict: bool) -> None:
    """Check ``obj`` against ``schema``; problems get pointers below ``pointer``."""
    schema.validate(obj, pointer, out, strict)


def _leaf(pointer: str) -> str:
    return pointer.rsplit("/", 1)[-1] or "body"


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def empty_object_check(value: Any, parent: str, name: str, out: list[Problem], strict: bool) -> None:
    """``{}`` and nothing else (upload start/complete attributes)."""
    if type(value) is not dict or value:
        out.append(Problem(f"{parent}/{name}", f"{name} must be an empty object"))


# ---------------------------------------------------------------------------------------------- items, bodies

_ITEM_KEYS = frozenset({"type", "id", "attributes"})


@dataclass(frozen=True, slots=True)
class ItemSpec:
    """One ``type`` variant of a ``data`` item: its id rule and its attributes schema."""

    type_name: str
    attributes: ObjectSchema | None  # None: attributes must be {}
    id_required: bool = True
    id_allowed: bool = True


def _check_item(variants: Mapping[str, ItemSpec], item: Any, out: list[Problem], strict: bool, type_names: str) -> None:
    """Check one ``data`` item; pointers are relative to the item (``/attributes/cardBIN``), so that the happy
    path builds no pointer string at all (:func:`validate_body` prefixes ``/data/i`` to the problems only)."""
    if type(item) is not dict:
        out.append(Problem("", "item must be an object"))
        return
    kind = item.get("type")
    spec = variants.get(kind) if type(kind) is str else None
    if spec is None:
        detail = "type is required" if kind is None else f"type must be one of {type_names}"
        out.append(Problem("/type", detail))
        return
    if strict and not item.keys() <= _ITEM_KEYS:
        out.extend(Problem(f"/{_escape(k)}", f"unknown field {k!r}") for k in item if k not in _ITEM_KEYS)
    item_id = item.get("id")
    if item_id is None:
        if spec.id_required:
            out.append(Problem("/id", "id is required"))
    elif not spec.id_allowed:
        if strict:
            out.append(Problem("/id", f"unknown field 'id' ({spec.type_name} items have no id)"))
    elif type(item_id) is not str or not item_id:
        out.append(Problem("/id", "id must be a non-empty string"))
    attrs = item.get("attributes")
    if attrs is None:
        out.append(Problem("/attributes", "attributes is required"))
    elif spec.attributes is None:
        empty_object_check(attrs, "", "attributes", out, strict)
    else:
        spec.attributes.validate(attrs, "/attributes", out, strict)


def _prefixed(base: str, out: list[Problem]) -> list[Problem]:
    return [Problem(base + p.pointer, p.detail, p.status, p.title) for p in out]


def validate_body(
    body: Any,
    variants: Mapping[str, ItemSpec],
    *,
    batch: bool,
    max_items: int | None,
    strict: bool = True,
) -> tuple[list[Any], dict[int, list[Problem]]]:
    """Validate a request document; return its items and the problems of each bad item (by index).

    Args:
        body: the parsed JSON document.
        variants: the item variants this endpoint accepts, keyed by ``type``.
        batch: ``data`` must be an array (True) or a single object (False; reported as item 0, pointer ``/data``).
        max_items: the per-request limit, or None when the API states none.
        strict: reject unknown fields.

    Raises:
        RequestRejected: the envelope is wrong, ``data`` is empty, or there are more than ``max_items`` items.
    """
    if type(body) is not dict:
        raise RequestRejected("the request body must be a JSON object", pointer="")
    if strict:
        extra = sorted(k for k in body if k != "data")
        if extra:
            raise RequestRejected(f"unknown top-level member {extra[0]!r}", pointer=f"/{_escape(extra[0])}")
    if "data" not in body:
        raise RequestRejected("data is required", pointer="/data")
    data = body["data"]
    type_names = ", ".join(variants)
    problems: dict[int, list[Problem]] = {}
    if not batch:
        if type(data) is not dict:
            raise RequestRejected("data must be an object", pointer="/data")
        out: list[Problem] = []
        _check_item(variants, data, out, strict, type_names)
        if out:
            problems[0] = _prefixed("/data", out)
        return [data], problems
    if type(data) is not list:
        raise RequestRejected("data must be an array", pointer="/data")
    if not data:
        raise RequestRejected("data must contain at least one item", pointer="/data")
    if max_items is not None and len(data) > max_items:
        raise RequestRejected(f"too many items: at most {max_items} per request, got {len(data)}", pointer="/data")
    for index, item in enumerate(data):
        out = []
        _check_item(variants, item, out, strict, type_names)
        if out:
            problems[index] = _prefixed(f"/data/{index}", out)
    return data, problems
