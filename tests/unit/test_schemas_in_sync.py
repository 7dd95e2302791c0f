"""The JSON Schemas in ``topics/schemas/`` match the pydantic models, and the fast per-record validator
agrees with pydantic validation of the same models."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any

import orjson
import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.errors import DecodeError, SchemaError
from bridge.events import EVENTS_BY_KIND
from bridge.events.common import EventKind, Leaf, StrictModel
from bridge.events.schemas import DEFAULT_SCHEMA_DIR, SCHEMA_FILES, generate, main
from bridge.events.validation import TOPIC_VALIDATORS, ModelValidator
from bridge.mapping.decode import decode_value
from bridge.topics import load_catalogue
from tests.event_strategies import EXAMPLES, events, json_values, mutated, timestamps

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "topics" / "examples"
CATALOGUE = load_catalogue()
_SCHEMA_FOR_KIND = {
    EventKind.CARD_TRANSACTION: "card-transaction.json",
    EventKind.ELIGIBILITY: "eligibility.json",
    EventKind.ATTRIBUTION: "attribution.json",
}


@pytest.mark.parametrize("name", sorted(SCHEMA_FILES))
def test_schema_files_are_up_to_date(name: str) -> None:
    """Each committed schema file equals what the models generate (run ``python -m bridge.events.schemas``)."""
    committed = (DEFAULT_SCHEMA_DIR / name).read_text(encoding="utf-8")
    assert committed == generate()[name], f"stale {name}: run `python -m bridge.events.schemas`"


def test_schema_check_command_passes(capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m bridge.events.schemas --check`` exits 0 on the committed files and 1 on a stale directory."""
    assert main(["--check"]) == 0
    assert main(["--check", "--dir", str(DEFAULT_SCHEMA_DIR / "does-not-exist")]) == 1
    assert "stale" in capsys.readouterr().err


def test_generator_writes_missing_files(tmp_path: Path) -> None:
    """Generating into an empty directory writes every schema file, and a second run changes nothing."""
    assert main(["--dir", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(SCHEMA_FILES)
    from bridge.events.schemas import write

    assert write(tmp_path) == []


@pytest.mark.parametrize("kind", list(EventKind))
def test_catalogue_schema_matches_the_topic_events(kind: EventKind) -> None:
    """The catalogue points each topic at the schema of its kind, and that schema lists exactly its event types."""
    entry = CATALOGUE.by_kind(kind)
    assert entry.schema.name == _SCHEMA_FOR_KIND[kind]
    schema = json.loads(entry.schema.read_text(encoding="utf-8"))
    if "discriminator" in schema:
        event_types = set(schema["discriminator"]["mapping"])
    else:
        event_types = {schema["properties"]["event_type"]["const"]}
    assert event_types == set(EVENTS_BY_KIND[kind])


# -- pydantic and the fast validator agree -----------------------------------------------------------

_PYDANTIC_REASON = {
    "missing": {"missing_field"},
    "extra_forbidden": {"unknown_field"},
    "model_type": {"wrong_type"},
    "dict_type": {"wrong_type"},
    "model_attributes_type": {"wrong_type"},
}


def _pydantic_outcome(kind: EventKind, data: dict[str, Any]) -> set[tuple[str, str | None]] | None:
    """None when pydantic accepts; else the (reason, pointer) pairs it reports (pointer None for model rules)."""
    model = EVENTS_BY_KIND[kind][data["event_type"]]
    try:
        model.model_validate(data)
    except pydantic.ValidationError as exc:
        found: set[tuple[str, str | None]] = set()
        for error in exc.errors(include_url=False, include_input=False):
            pointer = "/" + "/".join(str(part) for part in error["loc"]) if error["loc"] else None
            for reason in _PYDANTIC_REASON.get(error["type"], {error["type"]}):
                found.add((reason, pointer))
        return found
    return None


def _assert_agree(kind: EventKind, data: dict[str, Any]) -> None:
    """The fast validator and pydantic accept or refuse ``data`` alike, for the same reason."""
    event_type = data.get("event_type")
    try:
        TOPIC_VALIDATORS[kind].validate(data)
        fast: tuple[str, str | None] | None = None
    except SchemaError as exc:
        fast = (exc.reason, exc.pointer)
    if not (type(event_type) is str and event_type in EVENTS_BY_KIND[kind]):
        assert fast is not None
        assert fast[1] in ("/schema_version", "/event_type")
        return
    slow = _pydantic_outcome(kind, data)
    if fast is None or slow is None:
        assert fast is None and slow is None, f"fast={fast} pydantic={slow}"
        return
    reasons = {reason for reason, _ in slow}
    assert fast[0] in reasons, f"fast={fast} pydantic={slow}"
    pointed = {pointer for _, pointer in slow}
    if None not in pointed:  # model-level rule errors carry no location in pydantic
        assert fast[1] in pointed or fast[1] == "/<unrecognised key>", f"fast={fast} pydantic={slow}"


def _example_objects() -> list[tuple[EventKind, dict[str, Any]]]:
    """Every decodable example line, with its topic kind."""
    found = []
    for entry in CATALOGUE.inputs:
        for suffix in ("valid", "invalid"):
            for line in (EXAMPLES_DIR / f"{entry.name}.{suffix}.jsonl").read_bytes().splitlines():
                try:
                    found.append((entry.kind, decode_value(line)))
                except DecodeError:
                    continue
    return found


def test_validators_agree_on_the_examples() -> None:
    """On every decodable example line, pydantic and the fast validator accept or refuse alike, with one reason."""
    objects = _example_objects()
    assert len(objects) > 60
    for kind, data in objects:
        _assert_agree(kind, data)


@settings(max_examples=EXAMPLES(600), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(list(EventKind)), data=st.data())
def test_validators_agree_on_generated_events(kind: EventKind, data: st.DataObject) -> None:
    """On valid and mutated generated events (as JSON would deliver them), both validators agree."""
    event = data.draw(events(kind))
    if data.draw(st.booleans()):
        event = data.draw(mutated(event))
    try:
        decoded = decode_value(orjson.dumps(event))
    except (DecodeError, TypeError, orjson.JSONEncodeError):
        return
    _assert_agree(kind, decoded)


# -- each Leaf's JSON Schema admits everything its check accepts --------------------------------------


def _leaves() -> dict[str, Leaf]:
    """Every Leaf used by an event model, by ``Model.field``."""
    found: dict[str, Leaf] = {}

    def visit(model: type[StrictModel]) -> None:
        """Record the leaves of ``model`` and of its nested models."""
        for name, info in model.model_fields.items():
            stack: list[Any] = [info.annotation, *info.metadata]
            while stack:
                current = stack.pop()
                if isinstance(current, Leaf):
                    found[f"{model.__name__}.{name}"] = current
                elif isinstance(current, type) and issubclass(current, StrictModel):
                    visit(current)
                else:
                    stack.extend(getattr(current, "__args__", ()))
                    stack.extend(getattr(current, "__metadata__", ()))

    for models in EVENTS_BY_KIND.values():
        for model in models.values():
            visit(model)
    return found


LEAVES = _leaves()


def _schema_accepts(schema: dict[str, Any], value: Any) -> bool:
    """A minimal JSON Schema check for the keywords the leaf schemas use."""
    kind = schema.get("type")
    if kind == "string" and type(value) is not str:
        return False
    if kind == "integer" and type(value) is not int:
        return False
    if "enum" in schema and value not in schema["enum"]:
        return False
    if "const" in schema and value != schema["const"]:
        return False
    if type(value) is str:
        if not schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value)):
            return False
        if "pattern" in schema and re.search(schema["pattern"], value) is None:
            return False
    return not (type(value) is int and (value < schema.get("minimum", value) or value > schema.get("maximum", value)))


def test_every_event_field_has_a_leaf_or_a_nested_model() -> None:
    """The fast validator compiles for every model, and refuses to compile a field it could not check."""
    assert len(LEAVES) > 50

    class Unchecked(StrictModel):
        """A model whose field has no Leaf."""

        value: str

    with pytest.raises(TypeError, match="carries no Leaf"):
        ModelValidator(Unchecked)


_candidates = st.one_of(
    st.text(max_size=12),
    st.text(st.sampled_from("0123456789"), min_size=1, max_size=10),
    st.text(st.sampled_from("0123456789.-"), min_size=1, max_size=12),
    timestamps(),
    st.sampled_from(["USD", "PA", "VISA", "CARD", "PUSH", "ACTIVE", "VIEW", "EMAIL", "APPROVED", "DEBIT", "x\x7f"]),
    st.integers(-5, 2**54),
    json_values,
)


@settings(max_examples=EXAMPLES(1000), deadline=None)
@given(name=st.sampled_from(sorted(LEAVES)), value=_candidates)
def test_leaf_schemas_admit_what_their_checks_accept(name: str, value: Any) -> None:
    """A value a field's check accepts also satisfies that field's published JSON Schema."""
    leaf = LEAVES[name]
    try:
        leaf.check(value)
    except SchemaError:
        return
    assert _schema_accepts(dict(leaf.json_schema), value), f"{name} accepts a value its schema refuses"


_INLINED = sorted(name for name, leaf in LEAVES.items() if leaf.kind)
_SINGLE_FIELD: dict[str, ModelValidator] = {}


def _single_field_validator(name: str) -> ModelValidator:
    """A validator for a one-field model of the named leaf's type (cached)."""
    if name not in _SINGLE_FIELD:
        model = pydantic.create_model("One", __base__=StrictModel, value=(Annotated[Any, LEAVES[name]], ...))
        _SINGLE_FIELD[name] = ModelValidator(model)
    return _SINGLE_FIELD[name]


@settings(max_examples=EXAMPLES(1000), deadline=None)
@given(name=st.sampled_from(_INLINED), value=_candidates)
def test_inlined_acceptance_matches_the_leaf_check(name: str, value: Any) -> None:
    """For the kinds whose accept test the validator inlines, it accepts exactly what the field's check accepts."""
    try:
        LEAVES[name].check(value)
        accepted = True
    except SchemaError:
        accepted = False
    try:
        _single_field_validator(name).validate({"value": value})
        inline = True
    except SchemaError:
        inline = False
    assert inline == accepted
