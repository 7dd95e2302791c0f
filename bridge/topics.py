"""The topic catalogue: which input topics exist, what each carries, and where its outcomes go.

Loads ``topics/catalogue.toml`` into frozen dataclasses. For every input topic the catalogue gives
its event kind, its schema file, its partitions and topic configs, and two output topics: results
(``<input>.results``) and failures (``<input>.dlq``), each with its own configs (the DLQ keeps
records longer and accepts slightly larger ones: a failure record is its input plus headers).

Every name is overridable without editing the file: input names per event kind (an empty name
disables that input), output suffixes, or explicit output names per kind; partitions and
replication factor globally. ``kard-bridge topics apply`` and the app read the same object, and
:meth:`Catalogue.kind_by_topic` feeds :class:`bridge.mapping.MappingContext`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

from bridge.errors import ConfigError
from bridge.events.common import EventKind

__all__ = [
    "DEFAULT_CATALOGUE_PATH",
    "DEFAULT_DLQ_SUFFIX",
    "DEFAULT_RESULTS_SUFFIX",
    "Catalogue",
    "InputTopic",
    "TopicSpec",
    "load_catalogue",
]

DEFAULT_CATALOGUE_PATH = Path(__file__).resolve().parent.parent / "topics" / "catalogue.toml"
DEFAULT_RESULTS_SUFFIX = ".results"
DEFAULT_DLQ_SUFFIX = ".dlq"

_LEGAL_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_MIN_ISR = "min.insync.replicas"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One Kafka topic as it should exist: name, partitions, replication and topic-level configs."""

    name: str
    partitions: int
    replication_factor: int
    config: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class InputTopic:
    """An input topic with its event kind, schema and its two output topics."""

    topic: TopicSpec
    kind: EventKind
    schema: Path
    key: str
    description: str
    results: TopicSpec
    dlq: TopicSpec

    @property
    def name(self) -> str:
        """The input topic's name."""
        return self.topic.name


@dataclass(frozen=True, slots=True)
class Catalogue:
    """All input topics; lookups by name or kind."""

    inputs: tuple[InputTopic, ...]

    def input(self, name: str) -> InputTopic:
        """The input topic called ``name``.

        Raises:
            KeyError: no such input topic.
        """
        for entry in self.inputs:
            if entry.name == name:
                return entry
        raise KeyError(name)

    def by_kind(self, kind: EventKind) -> InputTopic:
        """The input topic that carries ``kind``.

        Raises:
            KeyError: no input carries that kind (it may be disabled).
        """
        for entry in self.inputs:
            if entry.kind == kind:
                return entry
        raise KeyError(kind)

    def kind_by_topic(self) -> dict[str, EventKind]:
        """Input topic name → event kind (for ``MappingContext.kind_by_topic``)."""
        return {entry.name: entry.kind for entry in self.inputs}

    def input_names(self) -> tuple[str, ...]:
        """The input topic names, in catalogue order."""
        return tuple(entry.name for entry in self.inputs)

    def results_topic(self, input_name: str) -> str:
        """The results topic of input ``input_name``."""
        return self.input(input_name).results.name

    def dlq_topic(self, input_name: str) -> str:
        """The failure (dead-letter) topic of input ``input_name``."""
        return self.input(input_name).dlq.name

    def all_topics(self) -> tuple[TopicSpec, ...]:
        """Every topic to create: each input followed by its results and DLQ topics."""
        return tuple(spec for entry in self.inputs for spec in (entry.topic, entry.results, entry.dlq))

    def with_replication_factor(self, replication_factor: int) -> Catalogue:
        """The same catalogue with every topic's replication factor set (e.g. 1 on a one-broker
        dev cluster); ``min.insync.replicas`` is lowered to it where it is higher, since acks=all
        writes would otherwise fail."""
        if replication_factor < 1:
            raise ConfigError("replication factor must be at least 1")

        def adjust(spec: TopicSpec) -> TopicSpec:
            config = dict(spec.config)
            if _MIN_ISR in config and int(config[_MIN_ISR]) > replication_factor:
                config[_MIN_ISR] = str(replication_factor)
            return replace(spec, replication_factor=replication_factor, config=MappingProxyType(config))

        return Catalogue(
            tuple(
                replace(entry, topic=adjust(entry.topic), results=adjust(entry.results), dlq=adjust(entry.dlq))
                for entry in self.inputs
            )
        )


def _table(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"topic catalogue: {where} must be a table")
    return value


def _configs(*tables: Mapping[str, Any]) -> Mapping[str, str]:
    merged: dict[str, str] = {}
    for table in tables:
        for key, value in table.items():
            if isinstance(value, bool) or not isinstance(value, str | int):
                raise ConfigError(f"topic catalogue: config {key!r} must be a string")
            merged[key] = str(value)
    return MappingProxyType(merged)


def _positive(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"topic catalogue: {where} must be a positive integer")
    return value


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _LEGAL_NAME.fullmatch(value) or value in {".", ".."}:
        raise ConfigError(f"topic catalogue: {where} is not a legal Kafka topic name (A-Z a-z 0-9 . _ -)")
    return value


def _kind_key(kind: EventKind | str) -> EventKind:
    try:
        return EventKind(kind)
    except ValueError:
        raise ConfigError(f"unknown event kind {kind!r}; expected one of {[k.value for k in EventKind]}") from None


def default_catalogue_path() -> Path:
    """``$BRIDGE_TOPIC_CATALOGUE``, else the source tree's ``topics/catalogue.toml``, else ``./topics/``.

    The last one serves installed (non-editable) packages such as the container image, whose working
    directory holds a copy of ``topics/``.
    """
    configured = os.environ.get("BRIDGE_TOPIC_CATALOGUE")
    if configured:
        return Path(configured)
    if DEFAULT_CATALOGUE_PATH.exists():
        return DEFAULT_CATALOGUE_PATH
    return Path.cwd() / "topics" / "catalogue.toml"


def load_catalogue(
    path: Path | str | None = None,
    *,
    input_names: Mapping[EventKind | str, str] | None = None,
    results_suffix: str = DEFAULT_RESULTS_SUFFIX,
    dlq_suffix: str = DEFAULT_DLQ_SUFFIX,
    results_names: Mapping[EventKind | str, str] | None = None,
    dlq_names: Mapping[EventKind | str, str] | None = None,
    partitions: int | None = None,
    replication_factor: int | None = None,
) -> Catalogue:
    """Read the catalogue and apply overrides.

    Args:
        path: the TOML file; defaults to ``topics/catalogue.toml`` in the source tree.
        input_names: event kind → input topic name; an empty string disables that input.
        results_suffix, dlq_suffix: output names are ``<input><suffix>`` unless named explicitly.
        results_names, dlq_names: event kind → explicit output topic name (wins over the file and
            the suffixes).
        partitions: overrides every topic's partition count.
        replication_factor: overrides every topic's replication factor (see
            :meth:`Catalogue.with_replication_factor`).

    Raises:
        ConfigError: unreadable file, unknown kind, illegal or duplicate names, bad numbers.
    """
    source = Path(path) if path is not None else default_catalogue_path()
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read topic catalogue {source}: {exc}") from exc
    if document.get("version") != 1:
        raise ConfigError(f"topic catalogue {source}: version must be 1")
    names = {_kind_key(k): v for k, v in (input_names or {}).items()}
    results_override = {_kind_key(k): v for k, v in (results_names or {}).items()}
    dlq_override = {_kind_key(k): v for k, v in (dlq_names or {}).items()}
    defaults = _table(document.get("defaults"), "[defaults]")
    base_config = _table(defaults.get("config"), "[defaults.config]")
    role_config = {
        role: _table(_table(defaults.get(role), f"[defaults.{role}]").get("config"), f"[defaults.{role}.config]")
        for role in ("input", "results", "dlq")
    }
    default_partitions = _positive(defaults.get("partitions", 6), "defaults.partitions")
    default_rf = _positive(defaults.get("replication_factor", 3), "defaults.replication_factor")
    entries = document.get("topic")
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"topic catalogue {source}: at least one [[topic]] is required")

    inputs: list[InputTopic] = []
    seen_kinds: set[EventKind] = set()
    for index, raw in enumerate(entries):
        entry = _table(raw, f"topic #{index + 1}")
        kind = _kind_key(entry.get("kind", ""))
        if kind in seen_kinds:
            raise ConfigError(f"topic catalogue: two topics carry kind {kind.value!r}")
        seen_kinds.add(kind)
        name = names.get(kind, entry.get("name"))
        if name == "":
            continue  # disabled by configuration
        name = _name(name, f"topic #{index + 1} name")
        count = partitions or _positive(entry.get("partitions", default_partitions), f"{name}.partitions")
        rf = _positive(entry.get("replication_factor", default_rf), f"{name}.replication_factor")

        def spec(role: str, topic_name: str, overrides: dict[str, Any], count: int = count, rf: int = rf) -> TopicSpec:
            return TopicSpec(
                name=topic_name,
                partitions=_positive(overrides.get("partitions", count), f"{topic_name}.partitions"),
                replication_factor=rf,
                config=_configs(
                    base_config, role_config[role], _table(overrides.get("config"), f"{topic_name}.config")
                ),
            )

        results_table = _table(entry.get("results"), f"{name}.results")
        dlq_table = _table(entry.get("dlq"), f"{name}.dlq")
        results_name = results_override.get(kind) or results_table.get("name") or name + results_suffix
        dlq_name = dlq_override.get(kind) or dlq_table.get("name") or name + dlq_suffix
        schema = entry.get("schema")
        if not isinstance(schema, str):
            raise ConfigError(f"topic catalogue: {name}.schema must name a schema file")
        inputs.append(
            InputTopic(
                topic=spec("input", name, entry),
                kind=kind,
                schema=(source.parent / schema).resolve(),
                key=str(entry.get("key", "user_id")),
                description=str(entry.get("description", "")),
                results=spec("results", _name(results_name, f"{name} results name"), results_table),
                dlq=spec("dlq", _name(dlq_name, f"{name} dlq name"), dlq_table),
            )
        )
    all_names = [spec.name for entry in inputs for spec in (entry.topic, entry.results, entry.dlq)]
    duplicates = sorted({n for n in all_names if all_names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"topic catalogue: topic names used twice: {', '.join(duplicates)}")
    catalogue = Catalogue(tuple(inputs))
    if replication_factor is not None:
        catalogue = catalogue.with_replication_factor(replication_factor)
    return catalogue
