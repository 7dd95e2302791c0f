"""Optional SASL_SSL (SCRAM over TLS) and SSL (TLS only) listeners for the local test brokers, with a test CA.

Why: the bridge's SASL_SSL and SSL paths must be tested against a real broker with a real certificate,
without a checked-in key. ``KafkaCluster.create(..., security=SecurityConfig())`` gives every node, next to
the ``PLAINTEXT`` listener (inter-broker and controller traffic stay PLAINTEXT), one extra port per listener
in ``SecurityConfig.listeners`` (by default both): ``SASL_SSL`` (SCRAM users written into the cluster
metadata when the storage is formatted, ``kafka-storage format --add-scram``) and ``SSL`` (server-authenticated
TLS, no client authentication). Both present a server certificate signed by a CA generated at create time with
the ``openssl`` CLI (valid for ``127.0.0.1`` and ``localhost``, so clients keep hostname checks on).

Files under ``<data-dir>/tls/``: ``ca.pem`` (give it to clients as ``KAFKA_SSL_CAFILE``), ``ca.key``,
``server.pem``, ``server.key`` and ``server.p12`` (the broker keystore, PKCS#12). Test-only: the keys are
not protected beyond file permissions.
"""

from __future__ import annotations

import re
import secrets
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bridge.devenv.kafka_dist import KafkaDevenvError

__all__ = ["LISTENER", "LISTENERS", "SCRAM_MECHANISMS", "SSL_LISTENER", "SecurityConfig", "TestPki", "make_test_pki"]

LISTENER: Final = "SASL_SSL"
SSL_LISTENER: Final = "SSL"
LISTENERS: Final[tuple[str, ...]] = (LISTENER, SSL_LISTENER)  # the order of the extra ports on every node
SCRAM_MECHANISMS: Final[tuple[str, ...]] = ("SCRAM-SHA-512", "SCRAM-SHA-256")
_SAFE: Final = re.compile(r"^[A-Za-z0-9._@-]+$")  # --add-scram has no quoting for ',', '=' or ']'


@dataclass(frozen=True, slots=True)
class SecurityConfig:
    """Which secure listeners the nodes get, and what SASL_SSL accepts: SCRAM users (name → password), mechanisms."""

    users: Mapping[str, str] = field(default_factory=lambda: {"alice": "alice-secret"})
    mechanisms: tuple[str, ...] = SCRAM_MECHANISMS
    listeners: tuple[str, ...] = LISTENERS

    def __post_init__(self) -> None:
        if not self.listeners or any(name not in LISTENERS for name in self.listeners):
            raise ValueError(f"listeners must be some of {LISTENERS}, got {self.listeners}")
        if len(set(self.listeners)) != len(self.listeners):
            raise ValueError(f"listeners must not repeat, got {self.listeners}")
        unknown = [m for m in self.mechanisms if m not in SCRAM_MECHANISMS]
        if unknown or not self.mechanisms:
            raise ValueError(f"mechanisms must be some of {SCRAM_MECHANISMS}, got {self.mechanisms}")
        for name, password in self.users.items():
            if not (_SAFE.match(name) and _SAFE.match(password)):
                raise ValueError(f"SCRAM user {name!r}: names and passwords may only use [A-Za-z0-9._@-]")

    def scram_format_args(self) -> list[str]:
        """``--add-scram`` arguments for ``kafka-storage format``: every user and mechanism (none without SASL_SSL)."""
        args: list[str] = []
        if LISTENER not in self.listeners:
            return args
        for mechanism in self.mechanisms:
            for name, password in self.users.items():
                args += ["--add-scram", f"{mechanism}=[name={name},password={password}]"]
        return args

    def broker_settings(self, pki: TestPki) -> dict[str, str]:
        """Listener-scoped TLS (and SASL) settings (the listeners themselves are added by ``KafkaNode``)."""
        settings: dict[str, str] = {}
        for name in self.listeners:
            prefix = f"listener.name.{name.lower()}."
            settings |= {
                f"{prefix}ssl.keystore.type": "PKCS12",
                f"{prefix}ssl.keystore.location": str(pki.keystore),
                f"{prefix}ssl.keystore.password": pki.keystore_password,
                f"{prefix}ssl.key.password": pki.keystore_password,
                f"{prefix}ssl.enabled.protocols": "TLSv1.3,TLSv1.2",
                f"{prefix}ssl.client.auth": "none",  # server-authenticated TLS only
            }
        if LISTENER not in self.listeners:
            return settings
        prefix = f"listener.name.{LISTENER.lower()}."
        settings[f"{prefix}sasl.enabled.mechanisms"] = ",".join(self.mechanisms)
        for mechanism in self.mechanisms:
            settings[f"{prefix}{mechanism.lower()}.sasl.jaas.config"] = (
                "org.apache.kafka.common.security.scram.ScramLoginModule required;"
            )
        return settings


@dataclass(frozen=True, slots=True)
class TestPki:
    """A test CA and one server certificate for ``127.0.0.1``/``localhost``."""

    __test__ = False  # not a pytest test class

    directory: Path
    keystore_password: str

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) clients trust."""
        return self.directory / "ca.pem"

    @property
    def keystore(self) -> Path:
        """The broker's PKCS#12 keystore (server key and certificate chain)."""
        return self.directory / "server.p12"


def _openssl(*args: str, cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise KafkaDevenvError("the openssl command is needed to make the test certificates (install openssl)")
    done = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)
    if done.returncode != 0:
        raise KafkaDevenvError(f"openssl {args[0]} failed (exit {done.returncode}): {done.stderr.strip()[-500:]}")


def make_test_pki(directory: Path, *, days: int = 30) -> TestPki:
    """Make a CA and a server certificate (SAN ``IP:127.0.0.1``, ``DNS:localhost``) under ``directory``.

    Raises:
        KafkaDevenvError: ``openssl`` is missing or failed.
    """
    directory.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(16)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", str(days),
             "-subj", "/CN=kard-bridge test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
             cwd=directory)  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost",
             cwd=directory)  # fmt: skip
    (directory / "server.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nbasicConstraints=CA:FALSE\n",
        encoding="utf-8",
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "server.pem", "-days", str(days), "-sha256", "-extfile", "server.ext",
             cwd=directory)  # fmt: skip
    _openssl("pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile", "ca.pem",
             "-name", "server", "-out", "server.p12", "-passout", f"pass:{password}",
             cwd=directory)  # fmt: skip
    for key in ("ca.key", "server.key", "server.p12"):
        (directory / key).chmod(0o600)
    return TestPki(directory, password)
