"""Kafka transport validation: SASL needs TLS (or an explicit dev-only opt-out) and credentials."""

from __future__ import annotations

import ssl
from typing import Any

import pytest

from bridge.config import load_settings
from bridge.errors import ConfigError

_CREDS = {"sasl_username": "alice", "sasl_password": "alice-secret"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SASL_MECHANISM",
        "KAFKA_SASL_USERNAME",
        "KAFKA_SASL_PASSWORD",
        "KAFKA_ALLOW_INSECURE",
        "KAFKA_SSL_CAFILE",
        "BRIDGE_CONFIG_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


def _kafka(**values: Any) -> Any:
    return load_settings(kafka=values).kafka


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_plaintext_is_refused_by_default(mechanism: str) -> None:
    """SASL_PLAINTEXT fails at start with a message naming the fix, whatever the mechanism."""
    with pytest.raises(ConfigError) as info:
        _kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, **_CREDS)
    text = str(info.value)
    assert "SASL_PLAINTEXT" in text and "KAFKA_ALLOW_INSECURE" in text and "[kafka]" in text
    assert "alice-secret" not in text
    if mechanism == "PLAIN":
        assert "in the clear" in text


def test_sasl_plaintext_refused_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "alice-secret")
    with pytest.raises(ConfigError, match="SASL_PLAINTEXT"):
        load_settings()
    monkeypatch.setenv("KAFKA_ALLOW_INSECURE", "true")
    kafka = load_settings().kafka
    assert kafka.allow_insecure and kafka.security_protocol == "SASL_PLAINTEXT"


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-512"])
def test_allow_insecure_permits_sasl_plaintext(mechanism: str) -> None:
    kafka = _kafka(security_protocol="SASL_PLAINTEXT", sasl_mechanism=mechanism, allow_insecure=True, **_CREDS)
    kwargs = kafka.common_kwargs()
    assert kwargs["security_protocol"] == "SASL_PLAINTEXT"
    assert kwargs["sasl_mechanism"] == mechanism
    assert "ssl_context" not in kwargs


def test_allow_insecure_defaults_to_false_and_is_documented() -> None:
    kafka = _kafka()
    assert kafka.allow_insecure is False
    description = type(kafka).model_fields["allow_insecure"].description or ""
    assert "dev only" in description


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_ssl_is_accepted_with_any_mechanism(mechanism: str) -> None:
    """Over TLS every mechanism is fine, PLAIN included; the kwargs carry an ssl_context that checks hosts."""
    kafka = _kafka(security_protocol="SASL_SSL", sasl_mechanism=mechanism, **_CREDS)
    kwargs = kafka.common_kwargs()
    assert kwargs["sasl_mechanism"] == mechanism
    assert kwargs["sasl_plain_username"] == "alice"
    assert kwargs["sasl_plain_password"] == "alice-secret"
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SASL_PLAINTEXT"])
@pytest.mark.parametrize(
    "creds",
    [
        {},
        {"sasl_username": "alice"},
        {"sasl_password": "x"},
        {"sasl_username": "", "sasl_password": "x"},
        {"sasl_username": "alice", "sasl_password": ""},
    ],
)
def test_sasl_needs_username_and_password(protocol: str, creds: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD"):
        _kafka(security_protocol=protocol, allow_insecure=True, **creds)


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SSL"])
def test_non_sasl_protocols_need_no_credentials(protocol: str) -> None:
    kwargs = _kafka(security_protocol=protocol).common_kwargs()
    assert "sasl_mechanism" not in kwargs
    assert ("ssl_context" in kwargs) == (protocol == "SSL")


def test_problems_in_other_sections_are_reported_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """The transport check goes through the same error path: one ConfigError listing every problem."""
    monkeypatch.setenv("BRIDGE_MAX_IN_FLIGHT", "0")
    with pytest.raises(ConfigError) as info:
        _kafka(security_protocol="SASL_PLAINTEXT", **_CREDS)
    assert "SASL_PLAINTEXT" in str(info.value) and "BRIDGE_MAX_IN_FLIGHT" in str(info.value)
