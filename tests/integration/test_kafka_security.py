"""The bridge's Kafka settings over SASL_SSL (SCRAM) and plain SSL against the project's own broker with a test CA.

One dedicated local broker (``KafkaCluster.create(..., security=SecurityConfig(...))``) listens with
PLAINTEXT (used here only to create topics), SASL_SSL (SCRAM-SHA-512 and SCRAM-SHA-256) and SSL (TLS with a
server certificate only, no SASL); both TLS listeners present a certificate for 127.0.0.1 signed by a CA made
at test time. Clients are built only from ``load_settings(kafka=...).kafka.common_kwargs()``, so the tests cover
exactly what the bridge uses; the last tests run the real bridge (in process) over SASL_SSL and over SSL
against the sandbox. In this module ``kafka_bootstrap``
is the secure broker's PLAINTEXT listener, used only by the test helpers (topics, producing, reading outputs).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from bridge.config import KafkaSettings, load_settings
from bridge.devenv.kafka import KafkaCluster
from bridge.devenv.kafka_security import SecurityConfig
from bridge.sandbox.process import SandboxProcess
from tests.fixtures.bridge import (
    BridgeFactory,
    BridgeTopics,
    committed_offsets,
    end_offsets,
    generated_messages,
    produce,
    read_outcomes,
    wait_committed_to_end,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

_USERS = {"alice": "alice-secret-512", "bob": "bob-secret-256"}


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A one-node local broker with SASL_SSL and SSL listeners; stopped when the module ends."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external broker; these tests need its own TLS listeners")
    security = SecurityConfig(users=_USERS)
    with KafkaCluster.create(tmp_path_factory.mktemp("kafka-sasl-ssl"), brokers=1, security=security) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def kafka_bootstrap(secure_kafka: KafkaCluster) -> str:
    """Overrides the session broker for this module: the secure broker's PLAINTEXT listener (helpers only)."""
    return secure_kafka.bootstrap_servers


def _invalid_credentials_logged(cluster: KafkaCluster) -> int:
    text = cluster.node(0).log_path.read_text(encoding="utf-8", errors="replace")
    return text.count("due to invalid credentials with SASL mechanism")


@pytest.fixture
def topic(secure_kafka: KafkaCluster) -> str:
    name = f"secure-{uuid.uuid4().hex[:10]}"
    secure_kafka.create_topics([name])  # over the PLAINTEXT listener
    return name


def _settings(cluster: KafkaCluster, **kafka: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": cluster.sasl_ssl_bootstrap_servers,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "alice",
        "sasl_password": _USERS["alice"],
        "ssl_cafile": str(cluster.ca_file),
        **kafka,
    }
    return load_settings(kafka=values).kafka


async def _round_trip(settings: KafkaSettings, topic: str) -> None:
    key, value = uuid.uuid4().hex.encode(), b'{"secure": true}'
    producer = AIOKafkaProducer(**settings.common_kwargs(), acks="all", enable_idempotence=True)
    await producer.start()
    try:
        meta = await producer.send_and_wait(topic, value, key=key, headers=[("h", b"1")])
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic, **settings.common_kwargs(), group_id=f"g-{uuid.uuid4().hex[:8]}", auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), timeout=60)
        await consumer.commit()  # the group coordinator is reached over SASL_SSL too
    finally:
        await consumer.stop()
    assert (record.key, record.value, record.offset) == (key, value, meta.offset)
    assert tuple(record.headers) == (("h", b"1"),)


@pytest.mark.parametrize(("mechanism", "user"), [("SCRAM-SHA-512", "alice"), ("SCRAM-SHA-256", "bob")])
async def test_produce_and_consume_over_sasl_ssl(
    secure_kafka: KafkaCluster, topic: str, mechanism: str, user: str
) -> None:
    """The bridge's own settings produce and consume (with a group and a commit) over SCRAM + TLS."""
    settings = _settings(secure_kafka, sasl_mechanism=mechanism, sasl_username=user, sasl_password=_USERS[user])
    assert settings.common_kwargs()["ssl_context"].check_hostname
    await _round_trip(settings, topic)


async def _start_fails(kwargs: dict[str, Any]) -> None:
    producer = AIOKafkaProducer(**kwargs, request_timeout_ms=10_000)
    try:
        with pytest.raises(KafkaError):
            await asyncio.wait_for(producer.start(), timeout=60)
    finally:
        await producer.stop()


@pytest.mark.parametrize(
    "wrong",
    [
        {"sasl_password": "not-the-password"},
        {"sasl_username": "mallory"},
        {"sasl_mechanism": "SCRAM-SHA-256", "sasl_username": "bob", "sasl_password": _USERS["alice"]},
    ],
    ids=["wrong-password", "unknown-user", "wrong-password-sha256"],
)
async def test_bad_credentials_are_refused(secure_kafka: KafkaCluster, wrong: dict[str, str]) -> None:
    """The client fails to start, and the broker logged an authentication failure (not some other error)."""
    before = _invalid_credentials_logged(secure_kafka)
    settings = _settings(secure_kafka, **wrong)
    await _start_fails(settings.common_kwargs())
    await wait_until(
        lambda: _invalid_credentials_logged(secure_kafka) > before, 10, interval=0.1, what="the broker's auth failure"
    )


async def test_plaintext_client_cannot_use_the_tls_port(secure_kafka: KafkaCluster) -> None:
    settings = load_settings(kafka={"bootstrap_servers": secure_kafka.sasl_ssl_bootstrap_servers}).kafka
    assert settings.security_protocol == "PLAINTEXT"
    await _start_fails(settings.common_kwargs())


async def test_untrusted_ca_is_refused(secure_kafka: KafkaCluster) -> None:
    """Without the test CA (the system trust store only) the TLS handshake fails: the certificate is checked."""
    await _start_fails(_settings(secure_kafka, ssl_cafile=None).common_kwargs())


def _ssl_settings(cluster: KafkaCluster, **kafka: Any) -> KafkaSettings:
    values: dict[str, Any] = {
        "bootstrap_servers": cluster.ssl_bootstrap_servers,
        "security_protocol": "SSL",
        "ssl_cafile": str(cluster.ca_file),
        **kafka,
    }
    return load_settings(kafka=values).kafka


async def test_produce_and_consume_over_ssl(secure_kafka: KafkaCluster, topic: str) -> None:
    """Plain TLS (server certificate checked, no SASL): the bridge's settings produce and consume with a commit."""
    settings = _ssl_settings(secure_kafka)
    kwargs = settings.common_kwargs()
    assert kwargs["security_protocol"] == "SSL" and "sasl_mechanism" not in kwargs
    assert kwargs["ssl_context"].check_hostname
    assert secure_kafka.ssl_bootstrap_servers not in (
        secure_kafka.sasl_ssl_bootstrap_servers,
        secure_kafka.bootstrap_servers,
    )
    await _round_trip(settings, topic)


async def test_ssl_without_the_ca_is_refused(secure_kafka: KafkaCluster) -> None:
    """Without the test CA (the system trust store only) the SSL listener's handshake fails."""
    await _start_fails(_ssl_settings(secure_kafka, ssl_cafile=None).common_kwargs())


async def test_plaintext_client_cannot_use_the_ssl_port(secure_kafka: KafkaCluster) -> None:
    settings = load_settings(kafka={"bootstrap_servers": secure_kafka.ssl_bootstrap_servers}).kafka
    assert settings.security_protocol == "PLAINTEXT"
    await _start_fails(settings.common_kwargs())


def _secure_settings(cluster: KafkaCluster, protocol: str) -> dict[str, str]:
    if protocol == "SSL":
        return {
            "bootstrap_servers": cluster.ssl_bootstrap_servers,
            "security_protocol": "SSL",
            "ssl_cafile": str(cluster.ca_file),
        }
    return {
        "bootstrap_servers": cluster.sasl_ssl_bootstrap_servers,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_username": "alice",
        "sasl_password": _USERS["alice"],
        "ssl_cafile": str(cluster.ca_file),
    }


@pytest.mark.parametrize("protocol", ["SASL_SSL", "SSL"])
async def test_the_bridge_runs_over_tls(
    protocol: str,
    secure_kafka: KafkaCluster,
    kafka_bootstrap: str,
    bridge_topics: BridgeTopics,
    bridge_factory: BridgeFactory,
    sandbox: SandboxProcess,
) -> None:
    """The real bridge consumes, calls the sandbox, produces results and commits over SCRAM+TLS or plain TLS."""
    running = await bridge_factory(sandbox, kafka=_secure_settings(secure_kafka, protocol))
    assert running.settings.kafka.security_protocol == protocol
    produced = await produce(kafka_bootstrap, generated_messages(bridge_topics, 60, users=10))
    await wait_committed_to_end(kafka_bootstrap, running.group_id, bridge_topics.inputs, 120, alive=running.check)
    await running.stop()
    outcomes = await read_outcomes(kafka_bootstrap, bridge_topics)
    assert outcomes.count() == len(produced)
    assert not outcomes.failures
    ends = await end_offsets(kafka_bootstrap, bridge_topics.inputs)
    committed = await committed_offsets(kafka_bootstrap, running.group_id)
    assert {tp: committed.get(tp, 0) for tp in ends} == ends
