"""The topic catalogue: defaults, overrides and refusal of inconsistent catalogues."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.events.common import EventKind
from bridge.topics import DEFAULT_CATALOGUE_PATH, load_catalogue


def test_default_catalogue() -> None:
    """The shipped catalogue has the three default inputs, their kinds, schemas and derived output names."""
    catalogue = load_catalogue()
    assert catalogue.kind_by_topic() == {
        "kard.card-transactions": EventKind.CARD_TRANSACTION,
        "kard.eligibility": EventKind.ELIGIBILITY,
        "kard.attributions": EventKind.ATTRIBUTION,
    }
    entry = catalogue.input("kard.card-transactions")
    assert entry.results.name == "kard.card-transactions.results"
    assert entry.dlq.name == "kard.card-transactions.dlq"
    assert catalogue.results_topic("kard.eligibility") == "kard.eligibility.results"
    assert catalogue.dlq_topic("kard.attributions") == "kard.attributions.dlq"
    assert entry.topic.partitions == 6
    assert entry.schema.is_file()
    assert len(catalogue.all_topics()) == 9


def test_outputs_have_their_own_retention_and_the_dlq_fits_its_input() -> None:
    """Results and DLQ topics get their own retention, and the DLQ accepts records larger than the input's limit."""
    entry = load_catalogue().by_kind(EventKind.CARD_TRANSACTION)
    retention = {spec.name: int(spec.config["retention.ms"]) for spec in (entry.topic, entry.results, entry.dlq)}
    assert retention[entry.dlq.name] > retention[entry.topic.name] > retention[entry.results.name]
    assert int(entry.dlq.config["max.message.bytes"]) > int(entry.topic.config["max.message.bytes"])
    assert all(spec.config["cleanup.policy"] == "delete" for spec in (entry.topic, entry.results, entry.dlq))


def test_names_are_overridable() -> None:
    """Input names per kind, output suffixes and explicit output names override the file; '' disables an input."""
    catalogue = load_catalogue(
        input_names={EventKind.CARD_TRANSACTION: "acme.txns", "eligibility": ""},
        results_suffix=".out",
        dlq_suffix=".dead",
        dlq_names={"attribution": "acme.attr-failures"},
    )
    assert catalogue.input_names() == ("acme.txns", "kard.attributions")
    assert catalogue.results_topic("acme.txns") == "acme.txns.out"
    assert catalogue.dlq_topic("acme.txns") == "acme.txns.dead"
    assert catalogue.dlq_topic("kard.attributions") == "acme.attr-failures"
    with pytest.raises(KeyError):
        catalogue.by_kind(EventKind.ELIGIBILITY)


def test_partitions_and_replication_overrides() -> None:
    """Global partition and replication overrides apply to every topic; min.insync.replicas never exceeds RF."""
    catalogue = load_catalogue(partitions=2, replication_factor=1)
    for spec in catalogue.all_topics():
        assert spec.partitions == 2
        assert spec.replication_factor == 1
        assert spec.config["min.insync.replicas"] == "1"
    assert load_catalogue().all_topics()[0].config["min.insync.replicas"] == "2"


def _write(tmp_path: Path, text: str) -> Path:
    """Write a catalogue file and return its path."""
    path = tmp_path / "catalogue.toml"
    path.write_text(text, encoding="utf-8")
    return path


_TOPIC = '[[topic]]\nname = "in"\nkind = "eligibility"\nschema = "s.json"\n'


@pytest.mark.parametrize(
    "text",
    [
        "version = 2\n" + _TOPIC,
        "version = 1\n",
        "version = 1\n" + _TOPIC.replace("eligibility", "payments"),
        "version = 1\n" + _TOPIC + _TOPIC.replace('"in"', '"in2"'),
        "version = 1\n" + _TOPIC.replace('"in"', '"bad name"'),
        "version = 1\n" + _TOPIC + "partitions = 0\n",
        "version = 1\n" + _TOPIC + '[topic.results]\nname = "in"\n',
        "version = 1\n" + _TOPIC + '[topic.config]\n"retention.ms" = true\n',
        "version = 1\n" + _TOPIC.replace('schema = "s.json"\n', ""),
        "version = 1\n[[topic\n",
    ],
)
def test_inconsistent_catalogues_are_config_errors(tmp_path: Path, text: str) -> None:
    """Wrong version, no topics, unknown or repeated kinds, illegal or clashing names and bad values are refused."""
    with pytest.raises(ConfigError):
        load_catalogue(_write(tmp_path, text))


def test_missing_file_and_unknown_override_kind_are_config_errors(tmp_path: Path) -> None:
    """A missing catalogue file or an override for an unknown kind is a ConfigError."""
    with pytest.raises(ConfigError):
        load_catalogue(tmp_path / "nope.toml")
    with pytest.raises(ConfigError):
        load_catalogue(input_names={"payments": "x"})


def test_per_topic_settings_win_over_defaults(tmp_path: Path) -> None:
    """A topic's own partitions, configs and output tables override the defaults; schemas resolve beside the file."""
    path = _write(
        tmp_path,
        'version = 1\n[defaults]\npartitions = 3\n[defaults.config]\n"cleanup.policy" = "delete"\n'
        + _TOPIC
        + 'partitions = 12\n[topic.config]\n"retention.ms" = 1000\n[topic.dlq]\npartitions = 1\nname = "in.failed"\n',
    )
    entry = load_catalogue(path).input("in")
    assert entry.topic.partitions == 12
    assert entry.topic.config == {"cleanup.policy": "delete", "retention.ms": "1000"}
    assert entry.results.partitions == 12
    assert (entry.dlq.name, entry.dlq.partitions) == ("in.failed", 1)
    assert entry.schema == (tmp_path / "s.json").resolve()
    assert DEFAULT_CATALOGUE_PATH.is_file()
