"""The local broker's SASL_SSL/SSL options without a JVM: SCRAM format arguments, listener settings, the test CA."""

from __future__ import annotations

import contextlib
import shutil
import ssl
import sys
from pathlib import Path

import pytest

from bridge.devenv.kafka import KafkaCluster
from bridge.devenv.kafka_dist import KafkaDevenvError, KafkaDist
from bridge.devenv.kafka_node import KafkaNode
from bridge.devenv.kafka_security import SecurityConfig, TestPki, make_test_pki


def test_scram_format_args_cover_every_user_and_mechanism() -> None:
    config = SecurityConfig(users={"alice": "a-1", "bob": "b-2"}, mechanisms=("SCRAM-SHA-512",))
    assert config.scram_format_args() == [
        "--add-scram",
        "SCRAM-SHA-512=[name=alice,password=a-1]",
        "--add-scram",
        "SCRAM-SHA-512=[name=bob,password=b-2]",
    ]


@pytest.mark.parametrize(
    ("users", "mechanisms"),
    [({"a,b": "x"}, ("SCRAM-SHA-512",)), ({"alice": "p=w"}, ("SCRAM-SHA-512",)), ({"a": "x"}, ("PLAIN",))],
)
def test_unsafe_names_and_unknown_mechanisms_are_refused(users: dict[str, str], mechanisms: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        SecurityConfig(users=users, mechanisms=mechanisms)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_pki_and_node_config(tmp_path: Path) -> None:
    """The server certificate verifies against the CA for 127.0.0.1 and localhost; the node config wires it."""
    pki = make_test_pki(tmp_path / "tls")
    assert pki.ca_file.is_file() and pki.keystore.is_file()
    assert (pki.keystore.stat().st_mode & 0o077) == 0
    context = ssl.create_default_context(cafile=str(pki.ca_file))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(str(tmp_path / "tls" / "server.pem"), str(tmp_path / "tls" / "server.key"))
    for host in ("127.0.0.1", "localhost"):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO()
        client = context.wrap_bio(incoming, outgoing, server_hostname=host)
        srv = server.wrap_bio(s_in, s_out, server_side=True)
        for _ in range(10):  # drive the handshake in memory
            for side in (client, srv):
                with contextlib.suppress(ssl.SSLWantReadError):
                    side.do_handshake()
            s_in.write(outgoing.read())
            incoming.write(s_out.read())
        client.do_handshake()  # raises SSLCertVerificationError on a bad chain or host name

    config = SecurityConfig()
    dist = KafkaDist("0", tmp_path, sys.executable)  # never run: only the config is written
    node = KafkaNode(0, directory=tmp_path / "node-0", broker_port=1, controller_port=2, sasl_ssl_port=3,
                     ssl_port=4, dist=dist, jvm_options=())  # fmt: skip
    node.write_config("0@127.0.0.1:2", config.broker_settings(pki), config.scram_format_args())
    props = node.config_path.read_text(encoding="utf-8")
    assert "SASL_SSL://127.0.0.1:3" in props and "SASL_SSL:SASL_SSL" in props
    assert "inter.broker.listener.name=PLAINTEXT" in props
    assert f"listener.name.sasl_ssl.ssl.keystore.location={pki.keystore}" in props
    assert node.sasl_ssl_server == "127.0.0.1:3"
    assert "SSL://127.0.0.1:4" in props.replace("SASL_SSL://", "") and ",SSL:SSL" in props
    assert f"listener.name.ssl.ssl.keystore.location={pki.keystore}" in props
    assert "listener.name.ssl.ssl.client.auth=none" in props
    assert "listener.name.ssl.sasl" not in props and "listener.name.ssl.scram" not in props
    assert node.ssl_server == "127.0.0.1:4"
    assert (node.directory / "format.args").read_text(encoding="utf-8").splitlines()[0] == "--add-scram"


@pytest.mark.parametrize("listeners", [(), ("PLAINTEXT",), ("SSL", "SSL")])
def test_unknown_or_repeated_listeners_are_refused(listeners: tuple[str, ...]) -> None:
    with pytest.raises(ValueError):
        SecurityConfig(listeners=listeners)


def test_ssl_only_config_has_no_sasl(tmp_path: Path) -> None:
    """``listeners=("SSL",)``: TLS settings for the SSL listener only, and no SCRAM users to format."""
    config = SecurityConfig(listeners=("SSL",))
    assert config.scram_format_args() == []
    settings = config.broker_settings(TestPki(tmp_path, "pw"))
    assert settings["listener.name.ssl.ssl.keystore.location"] == str(tmp_path / "server.p12")
    assert not any("sasl" in key for key in settings)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_cluster_ports_follow_the_chosen_listeners(tmp_path: Path) -> None:
    """Every node gets one extra port per secure listener; the bootstrap properties name the right ones."""
    dist = KafkaDist("0", tmp_path, sys.executable)  # never run
    both = KafkaCluster.create(tmp_path / "both", dist=dist, security=SecurityConfig())
    node = both.node(0)
    ports = {node.broker_port, node.controller_port, node.sasl_ssl_port, node.ssl_port}
    assert None not in ports and len(ports) == 4
    assert both.ssl_bootstrap_servers == f"127.0.0.1:{node.ssl_port}"
    assert both.sasl_ssl_bootstrap_servers == f"127.0.0.1:{node.sasl_ssl_port}"
    loaded = KafkaCluster.load(tmp_path / "both")
    assert loaded.ssl_bootstrap_servers == both.ssl_bootstrap_servers
    ssl_only = KafkaCluster.create(tmp_path / "ssl", dist=dist, security=SecurityConfig(listeners=("SSL",)))
    assert ssl_only.node(0).sasl_ssl_port is None and ssl_only.node(0).ssl_port is not None
    with pytest.raises(KafkaDevenvError):
        _ = ssl_only.sasl_ssl_bootstrap_servers
    plain = KafkaCluster.create(tmp_path / "plain", dist=dist)
    with pytest.raises(KafkaDevenvError):
        _ = plain.ssl_bootstrap_servers
