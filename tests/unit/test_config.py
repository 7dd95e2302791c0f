"""Settings: environment names users expect, precedence, validation messages, masked secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError


def test_standard_environment_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """KAFKA_BOOTSTRAP_SERVERS, KARD_API_BASE_URL, KARD_CLIENT_ID/SECRET and BRIDGE_GROUP_ID configure the bridge."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("KARD_API_BASE_URL", "https://api.example")
    monkeypatch.setenv("KARD_CLIENT_ID", "cid")
    monkeypatch.setenv("KARD_CLIENT_SECRET", "s3cr3t-value")
    monkeypatch.setenv("BRIDGE_GROUP_ID", "g1")
    settings = load_settings()
    assert settings.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert settings.kard.api_base_url == "https://api.example"
    assert settings.kard.client_id == "cid"
    assert settings.kard.client_secret.get_secret_value() == "s3cr3t-value"
    assert settings.bridge.group_id == "g1"


def test_environment_wins_over_file_and_file_over_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A TOML file sets values, and the environment overrides the file."""
    path = tmp_path / "bridge.toml"
    path.write_text('[bridge]\nlinger = 0.5\nmax_in_flight = 3\n[kafka]\nsession_timeout = 7.0\n')
    monkeypatch.setenv("BRIDGE_LINGER", "0.2")
    settings = load_settings(path)
    assert settings.bridge.linger == 0.2
    assert settings.bridge.max_in_flight == 3
    assert settings.kafka.session_timeout == 7.0
    assert settings.kafka.to_consumer_kwargs()["session_timeout_ms"] == 7000


def test_invalid_values_are_reported_by_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each bad setting is named by its environment variable in one ConfigError."""
    monkeypatch.setenv("BRIDGE_MAX_IN_FLIGHT", "0")
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT", "soon")
    with pytest.raises(ConfigError) as info:
        load_settings()
    text = str(info.value)
    assert "BRIDGE_MAX_IN_FLIGHT" in text
    assert "KAFKA_SESSION_TIMEOUT" in text


def test_secrets_never_appear_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client secret and SASL password are masked in repr and in the printable config."""
    monkeypatch.setenv("KARD_CLIENT_SECRET", "do-not-print-me")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "kafka-pass-123")
    settings = load_settings()
    assert "do-not-print-me" not in repr(settings)
    assert "kafka-pass-123" not in repr(settings)
    masked = orjson.dumps(settings.masked(), default=str).decode()
    assert "do-not-print-me" not in masked and "kafka-pass-123" not in masked


def test_print_config_masks_secrets_and_exits_zero() -> None:
    """`kard-bridge run --print-config` prints the effective JSON config with the secret masked."""
    env = {"KARD_CLIENT_SECRET": "hidden-value-42", "PATH": "/usr/bin:/bin", "BRIDGE_GROUP_ID": "printed-group"}
    out = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--print-config"], env=env, capture_output=True, check=True, timeout=60
    )
    config = orjson.loads(out.stdout)
    assert config["bridge"]["group_id"] == "printed-group"
    assert config["kard"]["client_secret"] == "**********"
    assert b"hidden-value-42" not in out.stdout + out.stderr


def test_bad_config_exits_with_a_clear_message() -> None:
    """`kard-bridge run` with an invalid setting exits 2 and names the variable on stderr."""
    env = {"BRIDGE_LINGER": "-1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "bridge", "run"], env=env, capture_output=True, timeout=60)
    assert out.returncode == 2
    assert b"BRIDGE_LINGER" in out.stderr


def test_static_membership_uses_the_host_name_unless_an_instance_id_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    """KAFKA_STATIC_MEMBERSHIP gives the consumer a group.instance.id: the host name, or KAFKA_GROUP_INSTANCE_ID."""
    import socket

    assert "group_instance_id" not in load_settings().kafka.to_consumer_kwargs()
    monkeypatch.setenv("KAFKA_STATIC_MEMBERSHIP", "true")
    assert load_settings().kafka.to_consumer_kwargs()["group_instance_id"] == socket.gethostname()
    monkeypatch.setenv("KAFKA_GROUP_INSTANCE_ID", "bridge-2")
    assert load_settings().kafka.to_consumer_kwargs()["group_instance_id"] == "bridge-2"
