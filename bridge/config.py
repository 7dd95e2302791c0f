"""The one frozen settings tree, read from environment variables and an optional TOML file.

Sections and their environment prefixes:

* ``KafkaSettings``   ``KAFKA_*``   (``KAFKA_BOOTSTRAP_SERVERS``, ``KAFKA_SECURITY_PROTOCOL``, ...); SASL needs a
  username and password, and ``SASL_PLAINTEXT`` is refused unless ``KAFKA_ALLOW_INSECURE=true`` (dev only)
* ``KardSettings``    ``KARD_*``    (``KARD_API_BASE_URL``, ``KARD_CLIENT_ID``, ``KARD_CLIENT_SECRET``, ...)
* ``BridgeSettings``  ``BRIDGE_*``  (``BRIDGE_GROUP_ID``, batching, dispatch, buffers, outputs, metrics)

Precedence: environment > file (``--config FILE`` / ``BRIDGE_CONFIG_FILE``, TOML with ``[kafka]``,
``[kard]`` and ``[bridge]`` tables) > defaults. Durations are float seconds; ``to_consumer_kwargs``
is the single place that converts them to aiokafka's ``*_ms`` integers. Secrets are ``SecretStr``:
their ``repr`` and ``--print-config`` show ``**********``.
"""

from __future__ import annotations

import os
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from bridge.errors import ConfigError

__all__ = ["BridgeSettings", "KafkaSettings", "KardSettings", "Settings", "load_settings"]


class _Section(BaseSettings):
    """Base of each section: frozen, env wins over values passed from the config file."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class KafkaSettings(_Section):
    """How to reach Kafka and how the consumer group behaves (``KAFKA_*``)."""

    model_config = SettingsConfigDict(env_prefix="KAFKA_", frozen=True, extra="forbid")

    bootstrap_servers: str = "127.0.0.1:9092"
    client_id: str = "kard-bridge"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    allow_insecure: bool = Field(
        default=False,
        description="dev only: allow SASL_PLAINTEXT (credentials sent without TLS); never set in production",
    )
    session_timeout: float = Field(default=10.0, gt=0)
    heartbeat_interval: float = Field(default=3.0, gt=0)
    max_poll_interval: float = Field(default=300.0, gt=0)
    rebalance_timeout: float | None = Field(default=None, gt=0)
    # = the catalogue's input max.message.bytes: larger fetches only hold more records in aiokafka's buffers.
    max_partition_fetch_bytes: int = Field(default=1_048_588, gt=0)
    fetch_max_wait: float = Field(default=0.1, gt=0)
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    static_membership: bool = False
    group_instance_id: str | None = None
    # Exactly-once outcomes (bridge/outputs.py TransactionalOutcomes); off by default.
    exactly_once: bool = Field(
        default=False,
        description="Commit result/failure records and the consumed offsets in one Kafka transaction, so each "
        "input record has exactly one *committed* outcome even after a crash; readers of the output topics must "
        "use `isolation.level=read_committed`. The Kard API call itself stays at-least-once.",
    )
    transactional_id: str | None = Field(
        default=None,
        description="`transactional.id` in exactly-once mode: unique among running members and stable across "
        "restarts of one member (a restarted member then fences its predecessor and aborts its open "
        "transaction). Default `<client id>-<group id>-<member>`, member = the static group instance id when "
        "static membership is on, else `BRIDGE_INSTANCE_ID` (unique but not stable across restarts).",
    )
    transaction_timeout: float = Field(
        default=60.0,
        gt=0,
        le=900,
        description="Exactly-once mode: the broker aborts a transaction left open this long (by a member that "
        "died and is not restarted with the same transactional id), seconds; ≤ the broker's "
        "`transaction.max.timeout.ms`.",
    )

    @model_validator(mode="after")
    def _transactions(self) -> KafkaSettings:
        if self.transactional_id is not None and not self.exactly_once:
            raise ValueError("KAFKA_TRANSACTIONAL_ID is only used with KAFKA_EXACTLY_ONCE=true")
        return self

    def effective_group_instance_id(self) -> str | None:
        """The static member id sent to the group coordinator, or None without static membership."""
        return self.group_instance_id or (socket.gethostname() if self.static_membership else None)

    def transactional_id_for(self, group_id: str, instance_id: str) -> str | None:
        """The producer's ``transactional.id`` in exactly-once mode (None otherwise); see ``transactional_id``."""
        if not self.exactly_once:
            return None
        if self.transactional_id:
            return self.transactional_id
        member = self.effective_group_instance_id() or instance_id
        return f"{self.client_id}-{group_id}-{member}"

    @model_validator(mode="after")
    def _secure_transport(self) -> KafkaSettings:
        """Refuse SASL credentials over a non-TLS connection (unless ``allow_insecure``) and SASL without them."""
        sasl = self.security_protocol.startswith("SASL")
        if sasl and (not self.sasl_username or self.sasl_password is None or not self.sasl_password.get_secret_value()):
            raise ValueError(f"{self.security_protocol} needs KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD")
        if self.security_protocol == "SASL_PLAINTEXT" and not self.allow_insecure:
            raise ValueError(
                f"SASL_PLAINTEXT sends the {self.sasl_mechanism} exchange without TLS"
                + (" (PLAIN: the password in the clear)" if self.sasl_mechanism == "PLAIN" else "")
                + "; use SASL_SSL, or set KAFKA_ALLOW_INSECURE=true (dev only)"
            )
        return self

    def common_kwargs(self) -> dict[str, Any]:
        """Connection kwargs shared by aiokafka consumers, producers and admin clients."""
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "security_protocol": self.security_protocol,
        }
        if self.security_protocol.startswith("SASL"):
            kwargs["sasl_mechanism"] = self.sasl_mechanism
            kwargs["sasl_plain_username"] = self.sasl_username
            kwargs["sasl_plain_password"] = (
                self.sasl_password.get_secret_value() if self.sasl_password else None
            )
        if self.security_protocol in ("SSL", "SASL_SSL"):
            from aiokafka.helpers import create_ssl_context  # only kafka-facing code needs it

            kwargs["ssl_context"] = create_ssl_context(
                cafile=self.ssl_cafile, certfile=self.ssl_certfile, keyfile=self.ssl_keyfile
            )
        return kwargs

    def to_consumer_kwargs(self) -> dict[str, Any]:
        """The single seconds → milliseconds conversion for aiokafka's consumer."""
        kwargs = self.common_kwargs()
        kwargs.update(
            client_id=self.client_id,
            session_timeout_ms=int(self.session_timeout * 1000),
            heartbeat_interval_ms=int(self.heartbeat_interval * 1000),
            max_poll_interval_ms=int(self.max_poll_interval * 1000),
            max_partition_fetch_bytes=self.max_partition_fetch_bytes,
            fetch_max_wait_ms=int(self.fetch_max_wait * 1000),
            auto_offset_reset=self.auto_offset_reset,
            enable_auto_commit=False,
        )
        if self.rebalance_timeout is not None:
            kwargs["rebalance_timeout_ms"] = int(self.rebalance_timeout * 1000)
        instance_id = self.effective_group_instance_id()
        if instance_id:
            kwargs["group_instance_id"] = instance_id
        if self.exactly_once:
            kwargs["isolation_level"] = "read_committed"  # skip aborted input records (transactional upstreams)
        return kwargs


class KardSettings(_Section):
    """The Kard API endpoint, credentials and HTTP client limits (``KARD_*``)."""

    model_config = SettingsConfigDict(env_prefix="KARD_", frozen=True, extra="forbid")

    api_base_url: str = "http://127.0.0.1:8080"
    client_id: str = "sandbox-client"
    client_secret: SecretStr = SecretStr("sandbox-secret")
    organization_id: str = "org-demo"
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=30.0, gt=0)
    write_timeout: float = Field(default=30.0, gt=0)
    pool_timeout: float = Field(default=30.0, gt=0)
    request_deadline: float = Field(default=60.0, gt=0)
    keepalive_expiry: float = Field(default=30.0, gt=0)
    token_refresh_skew: float = Field(default=60.0, ge=0)


class BridgeSettings(_Section):
    """What the bridge consumes and produces, and how it batches, dispatches and buffers (``BRIDGE_*``)."""

    model_config = SettingsConfigDict(env_prefix="BRIDGE_", frozen=True, extra="forbid")

    group_id: str = "kard-bridge"
    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    # Input topics (empty string disables one) and output topic naming.
    transactions_topic: str = "kard.card-transactions"
    eligibility_topic: str = "kard.eligibility"
    attributions_topic: str = "kard.attributions"
    results_suffix: str = ".results"
    dlq_suffix: str = ".dlq"
    result_mode: Literal["record", "batch"] = Field(
        default="record",
        description="`record`: one result record per delivered input record (key = the input key). `batch`: one "
        "result record per API request and input topic listing its records (topics/schemas/result-batch.json); "
        "far fewer produces, no per-key order on the results topic. Not with `KAFKA_EXACTLY_ONCE`.",
    )
    # Mapping.
    attribution_mode: Literal["per_user", "bulk"] = "per_user"
    mapping_hook: str | None = None
    max_value_bytes: int = Field(default=1024 * 1024, gt=0)
    # Micro-batching.
    batch_max_items: int = Field(default=500, gt=0)
    batch_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    linger: float = Field(default=0.05, ge=0)
    # Dispatch.
    max_in_flight: int = Field(default=16, gt=0)
    retry_base: float = Field(default=0.2, gt=0)
    retry_cap: float = Field(default=30.0, gt=0)
    max_retry_time: float | None = Field(default=900.0, gt=0)
    max_retry_after: float = Field(default=300.0, gt=0)
    # Adaptive concurrency (AIMD, bridge/pipeline/concurrency.py); BRIDGE_MAX_IN_FLIGHT stays the ceiling.
    adaptive_concurrency: bool = Field(
        default=False,
        description="Let the number of concurrent API requests adapt (AIMD): +1 per round trip while latency "
        "holds, cut on 429/503/timeouts or latency spikes, never above `BRIDGE_MAX_IN_FLIGHT`.",
    )
    adaptive_initial_concurrency: int = Field(
        default=1, gt=0, description="Adaptive concurrency: the limit to start with (at most the maximum)."
    )
    adaptive_decrease_ratio: float = Field(
        default=0.9, gt=0, lt=1, description="Adaptive concurrency: the limit is multiplied by this on back-pressure."
    )
    adaptive_rtt_deviation_scale: float = Field(
        default=2.5,
        ge=0,
        description="Adaptive concurrency: a round trip slower than the moving average by this many deviations "
        "(and by at least 10 %) counts as back-pressure.",
    )
    # Buffers (records consumed but not yet finished) and commits.
    buffer_max_records: int = Field(default=10_000, gt=0)
    buffer_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    commit_interval: float = Field(default=1.0, gt=0)
    drain_timeout: float = Field(default=25.0, gt=0)
    # Observability.
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(default=9400, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"
    # Runtime.
    event_loop: Literal["asyncio", "uvloop"] = "asyncio"
    gc_threshold: int = Field(
        default=50_000,
        ge=0,
        description="Allocations between young-generation garbage collections (Python's default is 700; 0 keeps "
        "it). Records are many short-lived acyclic objects freed by reference counting, so frequent cycle "
        "collections are pure overhead (measured in BENCHMARKS.md).",
    )

    @model_validator(mode="after")
    def _some_input(self) -> BridgeSettings:
        if not self.input_topics:
            raise ValueError("at least one of the transactions/eligibility/attributions topics must be set")
        return self

    @property
    def input_topics(self) -> tuple[str, ...]:
        topics = (self.transactions_topic, self.eligibility_topic, self.attributions_topic)
        return tuple(t for t in topics if t)

    def results_topic(self, input_topic: str) -> str:
        return input_topic + self.results_suffix

    def dlq_topic(self, input_topic: str) -> str:
        return input_topic + self.dlq_suffix


class Settings:
    """The whole tree: ``settings.kafka``, ``settings.kard``, ``settings.bridge`` (immutable)."""

    __slots__ = ("bridge", "kafka", "kard")

    def __init__(self, kafka: KafkaSettings, kard: KardSettings, bridge: BridgeSettings) -> None:
        self.kafka = kafka
        self.kard = kard
        self.bridge = bridge

    def masked(self) -> dict[str, dict[str, Any]]:
        """The effective configuration with secrets shown as ``**********`` (for ``--print-config``)."""
        out: dict[str, dict[str, Any]] = {}
        for name in self.__slots__:
            section: BaseSettings = getattr(self, name)
            values = section.model_dump(mode="python")
            out[name] = {k: ("**********" if isinstance(v, SecretStr) else v) for k, v in values.items()}
        return out

    def __repr__(self) -> str:
        return f"Settings(kafka={self.kafka!r}, kard={self.kard!r}, bridge={self.bridge!r})"


def load_settings(config_file: str | Path | None = None, **overrides: dict[str, Any]) -> Settings:
    """Read the settings from the environment and an optional TOML file.

    Args:
        config_file: a TOML file with ``[kafka]``, ``[kard]`` and ``[bridge]`` tables; defaults to
            ``$BRIDGE_CONFIG_FILE`` when set.
        overrides: per-section dicts (``kafka={...}``) used by tests and the demo; like the file,
            they lose to the environment.

    Raises:
        ConfigError: with one line per invalid setting, naming its environment variable.
    """
    file_values: dict[str, Any] = {}
    path = config_file or os.environ.get("BRIDGE_CONFIG_FILE")
    if path:
        try:
            file_values = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    sections: dict[str, type[_Section]] = {"kafka": KafkaSettings, "kard": KardSettings, "bridge": BridgeSettings}
    built: dict[str, Any] = {}
    problems: list[str] = []
    for name, cls in sections.items():
        values = {**file_values.get(name, {}), **overrides.get(name, {})}
        prefix = str(cls.model_config.get("env_prefix", ""))
        try:
            built[name] = cls(**values)
        except ValidationError as exc:
            for err in exc.errors():
                field = ".".join(str(p) for p in err["loc"])
                where = f"{prefix}{field.upper()}" if field else f"[{name}]"  # a cross-field (model) check
                problems.append(f"{where}: {err['msg']}")
    if not problems and built["kafka"].exactly_once and built["bridge"].result_mode == "batch":
        # Exactly-once stages one outcome per input offset (bridge/outputs.py TransactionalOutcomes).
        problems.append("BRIDGE_RESULT_MODE: batch results are not supported with KAFKA_EXACTLY_ONCE=true")
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))
    return Settings(built["kafka"], built["kard"], built["bridge"])
