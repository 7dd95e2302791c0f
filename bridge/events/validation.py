"""Per-record validation of decoded events against the event models, without building model instances.

Why not ``Model.model_validate``? It works, but constructing a frozen model per record and then
reading it back costs more than checking the dict directly, and this runs for every record. The
validators here are *compiled from the models* at import time: for each field they take the
:class:`~bridge.events.common.Leaf` check from the field's annotation (the very function pydantic
calls), whether it is required or nullable, its default, and nested models recursively. A field
type without a ``Leaf`` makes the import fail, so a new field cannot slip through unchecked.
``tests/unit/test_schemas_in_sync.py`` checks that pydantic and this module accept and refuse the
same inputs.

The mapping uses :meth:`ModelValidator.project`, which validates and renames in one pass over the
input (a *plan*, compiled once from the mapping's field tables, says which fields to emit under
which name and how to convert them), so no intermediate dict is built. :meth:`ModelValidator.validate`
is the same pass with an identity plan: the non-null fields, normalised (timestamps as aware UTC
datetimes), plus defaults. The accept test of the commonest field kinds (identifiers, text, cents,
enums) is inlined, which saves a function call per field. Only acceptance is inlined; every
rejection comes from the field's own check, so reasons and messages stay those of the model. A
timestamp that the plan sends with ``format_utc`` is checked and formatted in one step by
:func:`~bridge.events.common.utc_text` (same acceptance, same text, no datetime for ``...Z`` input).
"""

from __future__ import annotations

import re
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic_core import PydanticUndefined

from bridge.errors import SchemaError
from bridge.events.attribution import ATTRIBUTION_EVENTS
from bridge.events.card_transaction import CARD_TRANSACTION_EVENTS
from bridge.events.common import (
    MAX_CENTS,
    MAX_ID_LENGTH,
    MAX_TEXT_LENGTH,
    EventKind,
    EventModel,
    Leaf,
    StrictModel,
    check_schema_version,
    format_utc,
    utc_text,
)
from bridge.events.eligibility import ELIGIBILITY_EVENTS

__all__ = ["TOPIC_VALIDATORS", "ModelValidator", "Plan", "TopicValidator", "key_pointer", "make_plan"]

_ENVELOPE_LITERALS = frozenset({"event_type"})
_SAFE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def key_pointer(key: object) -> str:
    """A JSON-pointer segment for a key, or a placeholder when the key could carry data.

    Unknown keys come from the producer; a key such as a card number must not reach a failure
    header, so only identifier-like keys are echoed.
    """
    if type(key) is str and _SAFE_KEY.fullmatch(key):
        return "/" + key
    return "/<unrecognised key>"


# Per field: (inline kind, enum values, check, nested validator, required, nullable, pointer). A tuple,
# because unpacking one is cheaper than reading seven attributes, and this runs for every field.
_FieldSpec = tuple[int, frozenset[str], Callable[[Any], Any] | None, "ModelValidator | None", bool, bool, str]
_OTHER, _IDENTIFIER, _TEXT, _CENTS, _ENUM, _TIMESTAMP = range(6)

#: Field name → (output name, conversion or None, plan for a nested model or None).
Plan = Mapping[str, tuple[str, Callable[[Any], Any] | None, "Plan | None"]]
_KIND_CODES = {"identifier": _IDENTIFIER, "text": _TEXT, "cents": _CENTS, "enum": _ENUM, "timestamp": _TIMESTAMP}


def _leaf_of(annotation: Any, metadata: list[Any]) -> tuple[bool, Leaf | None, Any]:
    """Split a field annotation into (nullable, leaf, bare type)."""
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        members = [a for a in get_args(annotation) if a is not type(None)]
        nullable = len(members) < len(get_args(annotation))
        if len(members) != 1:
            raise TypeError("only Optional[...] unions are supported in event fields")
        annotation = members[0]
    leaves = [m for m in metadata if isinstance(m, Leaf)]
    if get_origin(annotation) is Annotated:
        bare, *extra = get_args(annotation)
        leaves.extend(m for m in extra if isinstance(m, Leaf))
        annotation = bare
    return nullable, (leaves[-1] if leaves else None), annotation


class _Pass:
    """One model's validation compiled for one plan: a single lookup per input field.

    Row: (inline kind, enum values, check, nested pass, output name or None, conversion, required,
    nullable, pointer). Tuples, because unpacking one is cheaper than reading nine attributes, and
    this loop runs for every field of every record.
    """

    __slots__ = ("_defaults", "_model", "_order", "_required", "_rows", "_rule_defaults")

    def __init__(self, validator: ModelValidator, plan: Plan) -> None:
        self._model = validator.model
        self._rows: dict[str, tuple[Any, ...]] = {}
        for name, (kind, allowed, check, nested, required, nullable, pointer) in validator.fields.items():
            target = plan.get(name)
            nested_pass = None
            if nested is not None:
                inner = target[2] if target is not None else None
                nested_pass = nested.compiled(inner if inner is not None else nested.identity)
            wire, convert = (target[0], target[1]) if target is not None else (None, None)
            if kind == _TIMESTAMP and convert is format_utc:
                check, convert = utc_text, None  # check and format in one step (see utc_text)
            self._rows[name] = (kind, allowed, check, nested_pass, wire, convert, required, nullable, pointer)
        self._order = tuple(name for name, row in self._rows.items() if row[6])
        self._required = len(self._order)
        self._defaults: list[tuple[str, str, Any]] = []
        for name, value in validator.defaults:
            target = plan.get(name)
            if target is not None:
                wire, convert, _ = target
                self._defaults.append((name, wire, value if convert is None else convert(value)))
        has_rules = self._model.event_rules.__func__ is not StrictModel.event_rules.__func__  # type: ignore[attr-defined]
        self._rule_defaults: dict[str, Any] | None = dict(validator.defaults) if has_rules else None

    def run(self, data: dict[Any, Any], prefix: str) -> dict[str, Any]:
        rows = self._rows
        out: dict[str, Any] = {}
        required_seen = 0
        for key, value in data.items():
            row = rows.get(key)
            if row is None:
                raise SchemaError(
                    "unknown_field", "is not a field of this event type", pointer=prefix + key_pointer(key)
                )
            kind, allowed, check, nested, wire, convert, required, nullable, pointer = row
            if required:
                required_seen += 1
            elif value is None and nullable:
                continue
            if (
                (kind == _IDENTIFIER and type(value) is str and 0 < len(value) <= MAX_ID_LENGTH and value.isprintable())
                or (kind == _TEXT and type(value) is str and 0 < len(value) <= MAX_TEXT_LENGTH and "\x00" not in value)
                or (kind == _CENTS and type(value) is int and 0 <= value <= MAX_CENTS)
                or (kind == _ENUM and type(value) is str and value in allowed)
            ):
                pass  # accepted inline, value unchanged
            elif check is not None:
                try:
                    value = check(value)
                except SchemaError as exc:
                    exc.pointer = prefix + pointer
                    raise
            elif nested is not None:
                if type(value) is not dict:
                    raise SchemaError("wrong_type", "must be an object", pointer=prefix + pointer)
                value = nested.run(value, prefix + pointer)
            if wire is not None:
                out[wire] = value if convert is None else convert(value)
        if required_seen != self._required:
            for name in self._order:
                if name not in data:
                    raise SchemaError("missing_field", "is required", pointer=prefix + "/" + name)
        if self._defaults:
            out.update({wire: value for name, wire, value in self._defaults if name not in data})
        if self._rule_defaults is not None:
            # Rules read presence and enum values, which validation does not change: the input will do.
            try:
                self._model.event_rules({**self._rule_defaults, **data} if self._rule_defaults else data)
            except SchemaError as exc:
                exc.pointer = prefix + (exc.pointer or "")
                raise
        return out


class ModelValidator:
    """Checks a dict against one model's fields (recursively for nested models) and its event rules.

    :meth:`project` validates and renames in one pass (the mapping's hot path); :meth:`validate` is
    the same pass with an identity plan.
    """

    __slots__ = ("_passes", "defaults", "fields", "identity", "model")

    def __init__(self, model: type[StrictModel]) -> None:
        self.model = model
        #: name → (inline kind, enum values, check, nested validator, required, nullable, pointer)
        self.fields: dict[str, _FieldSpec] = {}
        self.defaults: list[tuple[str, Any]] = []
        for name, info in model.model_fields.items():
            nullable, leaf, bare = _leaf_of(info.annotation, list(info.metadata))
            nested: ModelValidator | None = None
            if leaf is None:
                if isinstance(bare, type) and issubclass(bare, StrictModel):
                    nested = ModelValidator(bare)
                elif name not in _ENVELOPE_LITERALS:
                    raise TypeError(f"{model.__name__}.{name}: field type carries no Leaf check")
            kind = _KIND_CODES.get(leaf.kind, _OTHER) if leaf is not None else _OTHER
            self.fields[name] = (
                kind,
                leaf.allowed if leaf is not None else frozenset(),
                leaf.check if leaf is not None else None,
                nested,
                info.is_required(),
                nullable,
                "/" + name,
            )
            if info.default is not PydanticUndefined and info.default is not None:
                self.defaults.append((name, info.default))
        self.identity: Plan = {name: (name, None, None) for name in self.fields}
        self._passes: dict[int, tuple[Plan, _Pass]] = {}

    def compiled(self, plan: Plan) -> _Pass:
        """The pass for ``plan``, compiled on first use (plans are module constants: a handful)."""
        entry = self._passes.get(id(plan))
        if entry is None or entry[0] is not plan:
            entry = self._passes[id(plan)] = (plan, _Pass(self, plan))
        return entry[1]

    def validate(self, data: dict[Any, Any], prefix: str = "") -> dict[str, Any]:
        """Return the normalised, non-null fields of ``data`` plus defaults (``data`` is not changed).

        Raises:
            SchemaError: the first problem found, with ``pointer`` naming the field.
        """
        return self.compiled(self.identity).run(data, prefix)

    def project(self, data: dict[Any, Any], plan: Plan, prefix: str = "") -> dict[str, Any]:
        """Validate ``data`` and return its non-null fields renamed and converted per ``plan``.

        Fields the plan does not name are validated but left out. Nested models are projected with
        the plan's nested plan (identity when none). Defaults of absent fields are projected too.

        Raises:
            SchemaError: the first problem found, with ``pointer`` naming the field.
        """
        return self.compiled(plan).run(data, prefix)


def make_plan(
    table: Iterable[tuple[str, str, Callable[[Any], Any] | None]], nested: Mapping[str, Plan] | None = None
) -> Plan:
    """A projection plan from ``(field, output name, conversion)`` rows; ``nested`` gives nested models' plans."""
    nested = nested or {}
    return {name: (wire, convert, nested.get(name)) for name, wire, convert in table}


class TopicValidator:
    """Checks the envelope (``schema_version``, ``event_type``) and then the event type's fields."""

    __slots__ = ("_by_type", "kind")

    def __init__(self, kind: EventKind, models: Mapping[str, type[EventModel]]) -> None:
        self.kind = kind
        self._by_type = {event_type: ModelValidator(model) for event_type, model in models.items()}

    @property
    def event_types(self) -> tuple[str, ...]:
        """The event types of this topic."""
        return tuple(self._by_type)

    def validate(self, data: dict[Any, Any]) -> tuple[str, dict[str, Any]]:
        """Return ``(event_type, normalised fields)``.

        Raises:
            SchemaError: ``missing_field``, ``wrong_type``, ``unknown_schema_version``,
                ``unknown_event_type`` or any field-level reason, with a pointer.
        """
        event_type, validator = self.model_for(data)
        return event_type, validator.validate(data)

    def model_for(self, data: dict[Any, Any]) -> tuple[str, ModelValidator]:
        """Check the envelope and return ``(event_type, the validator of that event type)``.

        Raises:
            SchemaError: ``missing_field``, ``wrong_type``, ``unknown_schema_version`` or
                ``unknown_event_type``, pointing at ``/schema_version`` or ``/event_type``.
        """
        if "schema_version" not in data:
            raise SchemaError("missing_field", "is required", pointer="/schema_version")
        try:
            check_schema_version(data["schema_version"])
        except SchemaError as exc:
            exc.pointer = "/schema_version"
            raise
        event_type = data.get("event_type")
        if event_type is None:
            raise SchemaError("missing_field", "is required", pointer="/event_type")
        if type(event_type) is not str:
            raise SchemaError("wrong_type", "must be a string", pointer="/event_type")
        validator = self._by_type.get(event_type)
        if validator is None:
            raise SchemaError(
                "unknown_event_type",
                "is not an event type of this topic: expected one of " + ", ".join(self._by_type),
                pointer="/event_type",
            )
        return event_type, validator


#: One validator per event kind.
TOPIC_VALIDATORS: Mapping[EventKind, TopicValidator] = {
    EventKind.CARD_TRANSACTION: TopicValidator(EventKind.CARD_TRANSACTION, CARD_TRANSACTION_EVENTS),
    EventKind.ELIGIBILITY: TopicValidator(EventKind.ELIGIBILITY, ELIGIBILITY_EVENTS),
    EventKind.ATTRIBUTION: TopicValidator(EventKind.ATTRIBUTION, ATTRIBUTION_EVENTS),
}
