"""The configuration reference (``docs/configuration.md``), generated from the settings models.

Every field of :class:`~bridge.config.KafkaSettings`, :class:`~bridge.config.KardSettings` and
:class:`~bridge.config.BridgeSettings` becomes one row: its environment variable (section prefix + field
name upper-cased), type, default (secrets shown as ``(secret)``) and a description. The description is the
field's own ``description`` when it has one, else the text in :data:`DESCRIPTIONS`, else a phrase derived
from the field name, so a new field always appears (and ``--check`` fails until the file is regenerated).

Usage::

    python -m bridge.config_doc           # (re)write docs/configuration.md
    python -m bridge.config_doc --check   # exit 1 when docs/configuration.md is out of date
"""

from __future__ import annotations

import argparse
import sys
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined
from pydantic_settings import BaseSettings

from bridge.config import BridgeSettings, KafkaSettings, KardSettings

__all__ = ["DEFAULT_PATH", "DESCRIPTIONS", "SECTIONS", "env_name", "main", "render_markdown"]

#: Where the reference lives, relative to the repository root.
DEFAULT_PATH = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

#: (TOML table, settings model) in the order of the reference.
SECTIONS: tuple[tuple[str, type[BaseSettings]], ...] = (
    ("kafka", KafkaSettings),
    ("kard", KardSettings),
    ("bridge", BridgeSettings),
)

_MIB = 1024 * 1024

#: Descriptions by (section, field), used when the field itself has no ``description``.
DESCRIPTIONS: dict[tuple[str, str], str] = {
    # Kafka
    ("kafka", "bootstrap_servers"): "Comma-separated `host:port` list of brokers.",
    ("kafka", "client_id"): "Client id sent to the brokers (shows in broker logs and quotas).",
    ("kafka", "security_protocol"): "How to talk to the brokers: plain, TLS, SASL, or SASL over TLS.",
    ("kafka", "sasl_mechanism"): "SASL mechanism when the protocol is `SASL_PLAINTEXT` or `SASL_SSL`.",
    ("kafka", "sasl_username"): "SASL user name.",
    ("kafka", "sasl_password"): "SASL password (never logged; put it in a Secret).",
    ("kafka", "ssl_cafile"): "CA bundle (PEM) that verifies the brokers' certificates; system CAs when unset.",
    ("kafka", "ssl_certfile"): "Client certificate (PEM) for mutual TLS.",
    ("kafka", "ssl_keyfile"): "Private key (PEM) of the client certificate.",
    ("kafka", "session_timeout"): "Consumer group session timeout, seconds.",
    ("kafka", "heartbeat_interval"): "Consumer group heartbeat interval, seconds.",
    ("kafka", "max_poll_interval"): "Longest time between polls before the member is removed from the group, seconds.",
    ("kafka", "rebalance_timeout"): "How long a rebalance may take, seconds; Kafka uses the poll interval when unset.",
    ("kafka", "max_partition_fetch_bytes"): "Largest fetch per partition; must be ≥ the topics' `max.message.bytes`.",
    ("kafka", "fetch_max_wait"): "Longest time the broker holds a fetch waiting for data, seconds.",
    ("kafka", "auto_offset_reset"): "Where a new consumer group starts reading.",
    ("kafka", "static_membership"): "Static group membership: a restarted member keeps its partitions without a "
    "rebalance (instance id defaults to the host name).",
    ("kafka", "group_instance_id"): "Explicit static member id (e.g. the pod name); implies static membership.",
    # Kard
    ("kard", "api_base_url"): "Base URL of the Kard API (the local sandbox by default).",
    ("kard", "client_id"): "OAuth client id.",
    ("kard", "client_secret"): "OAuth client secret (never logged; put it in a Secret).",
    ("kard", "organization_id"): "Organization used when an event carries none.",
    ("kard", "connect_timeout"): "HTTP connect timeout, seconds.",
    ("kard", "read_timeout"): "HTTP read timeout, seconds.",
    ("kard", "write_timeout"): "HTTP write timeout, seconds.",
    ("kard", "pool_timeout"): "Longest wait for a free connection from the pool, seconds.",
    ("kard", "request_deadline"): "Budget of one whole request (all phases), seconds.",
    ("kard", "keepalive_expiry"): "Idle keep-alive connections are closed after this long, seconds.",
    ("kard", "token_refresh_skew"): "Refresh the access token this long before it expires, seconds.",
    # Bridge
    ("bridge", "group_id"): "Kafka consumer group of the bridge; members with the same id share the partitions.",
    ("bridge", "instance_id"): "Name of this instance in logs and provenance headers.",
    ("bridge", "transactions_topic"): "Input topic of card transactions (empty disables it).",
    ("bridge", "eligibility_topic"): "Input topic of eligibility events (empty disables it).",
    ("bridge", "attributions_topic"): "Input topic of attribution events (empty disables it).",
    ("bridge", "results_suffix"): "Results topic of an input topic is `<input><suffix>`.",
    ("bridge", "dlq_suffix"): "Dead-letter topic of an input topic is `<input><suffix>`.",
    ("bridge", "attribution_mode"): "`per_user` → `v2/issuers/{org}/users/{user}/attributions`, "
    "`bulk` → `v2/internal/attributions`.",
    ("bridge", "mapping_hook"): "`package.module:function` adapting foreign event shapes "
    "(see `bridge/mapping/context.py`).",
    ("bridge", "max_value_bytes"): "Larger record values are dead-lettered as `too_large`.",
    ("bridge", "batch_max_items"): "A batch is flushed at this many items (never above the endpoint's limit).",
    ("bridge", "batch_max_bytes"): "A batch is flushed at this many bytes.",
    ("bridge", "linger"): "A non-full batch is flushed after this long, seconds.",
    ("bridge", "max_in_flight"): "Concurrent API requests (also the HTTP pool size).",
    ("bridge", "retry_base"): "First back-off delay (exponential, full jitter), seconds.",
    ("bridge", "retry_cap"): "Longest back-off delay, seconds.",
    ("bridge", "max_retry_time"): "After failing transiently this long, records become `retries_exhausted` "
    "failures, seconds; unset retries forever.",
    ("bridge", "max_retry_after"): "Longest `Retry-After` honoured, seconds.",
    ("bridge", "buffer_max_records"): "Consumed-but-unfinished records above which partitions pause.",
    ("bridge", "buffer_max_bytes"): "Consumed-but-unfinished bytes above which partitions pause.",
    ("bridge", "commit_interval"): "How often finished offsets are committed, seconds.",
    ("bridge", "drain_timeout"): "Drain budget after SIGTERM, seconds (keep the orchestrator's grace period above it).",
    ("bridge", "metrics_host"): "Address of the `/metrics`, `/healthz`, `/readyz` endpoint.",
    ("bridge", "event_loop"): (
        "`asyncio` (default) or `uvloop`. uvloop is faster, but under network cuts aiokafka and httpcore meet "
        "errors from its closed transports that they do not handle (RuntimeError, AttributeError), which the "
        "chaos suite saw crash the process; see RELIABILITY.md."
    ),
    ("bridge", "metrics_port"): "Port of the `/metrics`, `/healthz`, `/readyz` endpoint (0 picks a free port).",
    ("bridge", "log_level"): "Log level of the structured logs on stdout.",
    ("bridge", "log_format"): "`json` (one event per line) or `console` (for people).",
}

#: Defaults computed at start, described instead of shown (their value depends on the machine).
_FACTORY_DEFAULTS: dict[tuple[str, str], str] = {
    ("bridge", "instance_id"): "`<host name>-<pid>`",
}


def env_name(model: type[BaseSettings], field: str) -> str:
    """The environment variable of ``field``: the model's ``env_prefix`` + the field name upper-cased."""
    return str(model.model_config.get("env_prefix", "")) + field.upper()


def _type_text(annotation: Any) -> str:
    """A short readable type: ``str``, ``float``, ``secret``, one of literal values, ``… (optional)``."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = " \\| ".join(_type_text(a) for a in args)
        return f"{inner} (optional)" if len(args) < len(typing.get_args(annotation)) else inner
    if annotation is SecretStr:
        return "secret string"
    return getattr(annotation, "__name__", str(annotation))


def _default_text(section: str, name: str, info: FieldInfo) -> str:
    if (section, name) in _FACTORY_DEFAULTS:
        return _FACTORY_DEFAULTS[(section, name)]
    default = info.default
    if default is PydanticUndefined:
        return "computed" if info.default_factory is not None else "required"
    if isinstance(default, SecretStr) or _type_text(info.annotation).startswith("secret"):
        return "(secret)" if default is not None else "unset"
    if default is None:
        return "unset"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if isinstance(default, int) and default >= _MIB and default % _MIB == 0:
        return f"`{default}` ({default // _MIB} MiB)"
    if default == "":
        return '`""` (empty)'
    return f"`{default}`"


def _description(section: str, name: str, info: FieldInfo) -> str:
    if info.description:
        return " ".join(info.description.split()).replace("|", "\\|")
    if (section, name) in DESCRIPTIONS:
        return DESCRIPTIONS[(section, name)]
    return name.replace("_", " ").capitalize() + "."


def render_markdown() -> str:
    """The whole reference as Markdown (deterministic: same models, same text)."""
    lines = [
        "<!-- Generated by `python -m bridge.config_doc` from bridge/config.py; do not edit by hand. -->",
        "# Configuration reference",
        "",
        "Every setting is an environment variable (prefix + field name, upper case). The same fields can be set",
        "in a TOML file given with `--config FILE` or `BRIDGE_CONFIG_FILE`, in the `[kafka]`, `[kard]` and",
        "`[bridge]` tables (lower-case field names); the environment wins over the file, the file over the",
        "defaults. Durations are float seconds. Secrets are never printed: `kard-bridge run --print-config`",
        "shows them as `**********`. An invalid value stops the start with one line per problem, naming the",
        "variable.",
        "",
        "| section | prefix | TOML table |",
        "|---|---|---|",
    ]
    for section, model in SECTIONS:
        prefix = str(model.model_config.get("env_prefix", ""))
        lines.append(f"| [{model.__name__}](#{section}) | `{prefix}` | `[{section}]` |")
    lines.append("")
    lines.append("`BRIDGE_CONFIG_FILE`: path of the optional TOML file (same as `--config FILE`).")
    for section, model in SECTIONS:
        doc = (model.__doc__ or "").strip().splitlines()[0].replace("``", "`") if model.__doc__ else ""
        lines += ["", f'<a id="{section}"></a>', f"## `[{section}]` — {model.__name__}", ""]
        if doc:
            lines += [doc, ""]
        lines += ["| variable | type | default | description |", "|---|---|---|---|"]
        for name, info in model.model_fields.items():
            lines.append(
                f"| `{env_name(model, name)}` | {_type_text(info.annotation)} | "
                f"{_default_text(section, name, info)} | {_description(section, name, info)} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write ``docs/configuration.md``, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(prog="python -m bridge.config_doc", description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the rendered text")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH, help=f"output file (default {DEFAULT_PATH})")
    args = parser.parse_args(argv)
    text = render_markdown()
    path: Path = args.path
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            sys.stderr.write(f"{path} is out of date; run: python -m bridge.config_doc\n")
            return 1
        sys.stdout.write(f"{path} is up to date\n")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
