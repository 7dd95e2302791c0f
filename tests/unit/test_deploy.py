"""Deployment files: the Kubernetes manifests and the Dockerfile agree with the code they deploy.

The manifests parse, run the real CLI (`kard-bridge run`), probe the health server's real paths on the
default metrics port, name only real settings, give the drain time to finish, and the KEDA trigger watches
the bridge's group on its input topics. PyYAML is used when installed; otherwise a strict loader for the
YAML subset the manifests use (block mappings and sequences, quoted and plain scalars, flow lists,
comments, ``---``) reads them, and refuses anything else.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.config import BridgeSettings, KafkaSettings, KardSettings, load_settings
from bridge.config_doc import SECTIONS, env_name
from bridge.observability.health import ObservabilityServer
from bridge.observability.metrics import BridgeMetrics
from tests.unit.test_metrics import FakeBridge

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
DEFAULT_PORT = BridgeSettings.model_fields["metrics_port"].default
DEFAULT_DRAIN = BridgeSettings.model_fields["drain_timeout"].default
SETTINGS = {env_name(model, field) for _, model in SECTIONS for field in model.model_fields} | {"BRIDGE_CONFIG_FILE"}
ENV_NAME = re.compile(r"\b(?:KAFKA|KARD|BRIDGE)_[A-Z0-9_]+\b")


# --------------------------------------------------------------------------------------------------------
# A strict loader for the YAML subset of the manifests (used only when PyYAML is not installed).


class YamlSubsetError(ValueError):
    pass


_INT = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT = re.compile(r"[-+]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?")


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i].rstrip()
    return line.rstrip()


def _split_flow(text: str) -> list[str]:
    parts, quote, depth, start = [], "", 0, 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    last = text[start:].strip()
    return [*parts, last] if last or parts else parts


def _scalar(text: str) -> Any:
    if text.startswith('"'):
        if not text.endswith('"') or len(text) < 2:
            raise YamlSubsetError(f"unterminated string: {text}")
        return json.loads(text)
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise YamlSubsetError(f"unterminated string: {text}")
        return text[1:-1].replace("''", "'")
    if text.startswith("["):
        if not text.endswith("]"):
            raise YamlSubsetError(f"unsupported flow sequence: {text}")
        return [_scalar(part) for part in _split_flow(text[1:-1])]
    if text == "{}":
        return {}
    if text[:1] in "{&*!|>%@`":
        raise YamlSubsetError(f"unsupported YAML construct: {text}")
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if text in ("null", "Null", "NULL", "~", ""):
        return None
    if text.lower() in ("yes", "no", "on", "off", "y", "n"):
        raise YamlSubsetError(f"ambiguous YAML 1.1 boolean, quote it: {text}")
    if _INT.fullmatch(text):
        return int(text)
    if _FLOAT.fullmatch(text):
        return float(text)
    return text


def _key_value(content: str) -> tuple[str, str] | None:
    """Split ``key: value`` (key possibly quoted); None when the line is not a mapping entry."""
    if content[:1] in "\"'":
        end = content.find(content[0], 1)
        if end < 0 or not content[end + 1 :].startswith(":"):
            return None
        key, rest = content[1:end], content[end + 2 :]
    else:
        match = re.match(r"([^\s:#\[\]{},][^:#]*?)\s*:(?:\s+|$)", content)
        if match is None:
            return None
        key, rest = match.group(1), content[match.end() :]
    if rest and not rest.startswith(" ") and content[:1] in "\"'":
        raise YamlSubsetError(f"missing space after ':' in {content!r}")
    return key, rest.strip()


class _Parser:
    def __init__(self, lines: list[tuple[int, str]]) -> None:
        self.lines = lines
        self.pos = 0

    def peek(self) -> tuple[int, str] | None:
        return self.lines[self.pos] if self.pos < len(self.lines) else None

    def block(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None and line[0] == indent
        if line[1] == "-" or line[1].startswith("- "):
            return self.sequence(indent)
        return self.mapping(indent)

    def sequence(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.peek()) is not None and line[0] == indent and (line[1] == "-" or line[1][:2] == "- "):
            rest = line[1][1:].lstrip()
            if not rest:
                self.pos += 1
                nxt = self.peek()
                if nxt is None or nxt[0] <= indent:
                    items.append(None)
                else:
                    items.append(self.block(nxt[0]))
                continue
            inner = indent + len(line[1]) - len(rest)
            self.lines[self.pos] = (inner, rest)  # "- key: v" opens a mapping at the item's column
            if _key_value(rest) is not None or rest.startswith("- "):
                items.append(self.block(inner))
            else:
                self.pos += 1
                items.append(_scalar(rest))
        self.check_dedent(indent)
        return items

    def mapping(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (line := self.peek()) is not None and line[0] == indent:
            if line[1] == "-" or line[1].startswith("- "):
                break
            kv = _key_value(line[1])
            if kv is None:
                raise YamlSubsetError(f"not a mapping entry: {line[1]!r}")
            key, value = kv
            if key in out:
                raise YamlSubsetError(f"duplicate key {key!r}")
            self.pos += 1
            nxt = self.peek()
            if value:
                out[key] = _scalar(value)
            elif nxt is not None and (
                nxt[0] > indent or (nxt[0] == indent and (nxt[1] == "-" or nxt[1].startswith("- ")))
            ):
                out[key] = self.block(nxt[0])
            else:
                out[key] = None
        self.check_dedent(indent)
        return out

    def check_dedent(self, indent: int) -> None:
        line = self.peek()
        if line is not None and line[0] > indent:
            raise YamlSubsetError(f"bad indentation at {line[1]!r}")


def load_yaml_subset(text: str) -> list[Any]:
    """All documents of ``text`` (the subset described above)."""
    if "\t" in text:
        raise YamlSubsetError("tabs are not allowed in YAML indentation")
    docs: list[list[tuple[int, str]]] = [[]]
    for raw in text.splitlines():
        if raw.rstrip() == "---":
            docs.append([])
            continue
        if raw.startswith("%") or raw.rstrip() == "...":
            raise YamlSubsetError(f"unsupported directive: {raw}")
        line = _strip_comment(raw)
        if line.strip():
            docs[-1].append((len(line) - len(line.lstrip(" ")), line.strip()))
    out = []
    for lines in docs:
        if not lines:
            continue
        parser = _Parser(lines)
        out.append(parser.block(lines[0][0]))
        if parser.peek() is not None:
            raise YamlSubsetError(f"unexpected line: {parser.peek()}")
    return out


def load_all(text: str) -> list[Any]:
    try:
        import yaml  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return load_yaml_subset(text)
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def test_the_subset_loader_reads_what_the_manifests_use() -> None:
    """Nested block mappings and sequences, '- key:' items, quotes, flow lists, numbers, comments, ---."""
    text = """# comment
a: 1
b: "x # not a comment"
c:
  - name: n1  # trailing comment
    value: 'it''s'
  - plain text
  -
    deep: [one, "two", 3]
d:
- 2.5
- true
---
e: {}
f:
"""
    assert load_yaml_subset(text) == [
        {
            "a": 1,
            "b": "x # not a comment",
            "c": [{"name": "n1", "value": "it's"}, "plain text", {"deep": ["one", "two", 3]}],
            "d": [2.5, True],
        },
        {"e": {}, "f": None},
    ]
    for bad in ("a: 1\na: 2\n", "a: yes\n", "a:\n  b: 1\n c: 2\n", "a: &anchor 1\n", "a: |\n  text\n"):
        with pytest.raises(YamlSubsetError):
            load_yaml_subset(bad)


# --------------------------------------------------------------------------------------------------------
# The manifests.


def docs_of(name: str) -> list[dict[str, Any]]:
    return load_all((DEPLOY / "kubernetes" / name).read_text(encoding="utf-8"))


def all_docs() -> Iterator[dict[str, Any]]:
    for path in MANIFESTS:
        yield from load_all(path.read_text(encoding="utf-8"))


def one(kind: str) -> dict[str, Any]:
    found = [doc for doc in all_docs() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def workloads() -> list[dict[str, Any]]:
    return [doc for doc in all_docs() if doc["kind"] in ("Deployment", "StatefulSet")]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def configmap_data() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def test_every_manifest_parses_into_named_kubernetes_objects() -> None:
    names = {path.name for path in MANIFESTS}
    assert names == {
        "configmap.yaml",
        "deployment.yaml",
        "keda-scaledobject.yaml",
        "secret.example.yaml",
        "service.yaml",
        "statefulset.yaml",
    }
    kinds = []
    for doc in all_docs():
        assert isinstance(doc, dict)
        assert doc["apiVersion"] and doc["kind"] and doc["metadata"]["name"], doc
        kinds.append(doc["kind"])
    assert sorted(kinds) == [
        "ConfigMap",
        "Deployment",
        "ScaledObject",
        "Secret",
        "Service",
        "Service",
        "StatefulSet",
        "TriggerAuthentication",
    ]
    assert (DEPLOY / "README.md").is_file()


def test_containers_run_the_real_cli() -> None:
    """`kard-bridge run`: the console script of pyproject.toml, and a subcommand its parser accepts."""
    from bridge import cli, run_cli

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts["kard-bridge"] == "bridge.cli:main"
    args = cli._parser().parse_args(["run"])
    assert args.command == "run" and args.func is run_cli._run
    for workload in workloads():
        c = container(workload)
        assert [*c["command"], *c["args"]] == ["kard-bridge", "run"], workload["kind"]
        assert c["image"] == "kard-bridge:0.1.0"


def test_probes_and_port_match_the_health_server() -> None:
    assert DEFAULT_PORT == 9400
    for workload in workloads():
        c = container(workload)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == {"metrics": DEFAULT_PORT}
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path
            assert ports.get(get["port"], get["port"]) == DEFAULT_PORT
    assert configmap_data()["BRIDGE_METRICS_PORT"] == str(DEFAULT_PORT)
    pod_labels = workloads()[0]["spec"]["template"]["metadata"]["labels"]
    for service in (doc for doc in all_docs() if doc["kind"] == "Service"):
        (port,) = service["spec"]["ports"]
        assert port["port"] == DEFAULT_PORT and port["targetPort"] == "metrics"
        assert service["spec"]["selector"].items() <= pod_labels.items()


async def test_the_health_server_serves_the_probed_paths() -> None:
    """The paths the probes and the Dockerfile use are routes of the real server (200/503, never 404)."""
    bridge = FakeBridge()
    async with ObservabilityServer(bridge, BridgeMetrics(bridge), port=0) as server, aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{server.port}"
        for path in ("/healthz", "/readyz", "/metrics"):
            async with http.get(base + path) as response:
                assert response.status in (200, 503), path
        async with http.get(base + "/nope") as response:
            assert response.status == 404


def test_every_environment_variable_named_is_a_real_setting() -> None:
    """Configured, referenced or merely mentioned (comments, README): each name is a field of the models."""
    named: set[str] = set()
    for path in [*MANIFESTS, DEPLOY / "README.md"]:
        named |= set(ENV_NAME.findall(path.read_text(encoding="utf-8")))
    for workload in workloads():
        named |= {e["name"] for e in container(workload).get("env", [])}
    named |= set(configmap_data())
    assert named, "no settings found"
    assert named <= SETTINGS, f"not settings: {sorted(named - SETTINGS)}"
    for value in configmap_data().values():
        assert isinstance(value, str), "ConfigMap values must be strings"


def test_secrets_come_from_the_secret_and_the_configmap_from_envfrom() -> None:
    secret = one("Secret")
    keys = set(secret["stringData"])
    assert {"KARD_CLIENT_SECRET", "KAFKA_SASL_PASSWORD"} <= keys
    assert not keys & set(configmap_data()), "a secret in the ConfigMap"
    configmap_name = one("ConfigMap")["metadata"]["name"]
    for workload in workloads():
        c = container(workload)
        assert c["envFrom"] == [{"configMapRef": {"name": configmap_name}}]
        from_secret = {
            e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})
        }
        assert {"KARD_CLIENT_SECRET", "KAFKA_SASL_PASSWORD"} <= from_secret.keys()
        for name, ref in from_secret.items():
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] == name and name in keys


def test_the_example_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """ConfigMap + Secret (+ the StatefulSet's own variables) form a valid configuration."""
    monkeypatch.delenv("BRIDGE_CONFIG_FILE", raising=False)
    for name, value in {**configmap_data(), **one("Secret")["stringData"]}.items():
        monkeypatch.setenv(name, value)
    settings = load_settings()
    assert settings.bridge.metrics_port == DEFAULT_PORT
    assert settings.kard.client_secret.get_secret_value() == "replace-me"
    statefulset = one("StatefulSet")
    for e in container(statefulset)["env"]:
        if "value" in e:
            monkeypatch.setenv(e["name"], e["value"])
        elif "fieldRef" in e["valueFrom"]:
            monkeypatch.setenv(e["name"], "kard-bridge-0")
    settings = load_settings()
    assert settings.kafka.static_membership is True
    assert settings.kafka.to_consumer_kwargs()["group_instance_id"] == "kard-bridge-0"


def test_static_membership_takes_the_instance_id_from_the_pod_name() -> None:
    statefulset = one("StatefulSet")
    env = {e["name"]: e for e in container(statefulset)["env"]}
    assert env["KAFKA_STATIC_MEMBERSHIP"]["value"] == "true"
    assert env["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    headless = [d for d in all_docs() if d["kind"] == "Service" and d["spec"].get("clusterIP") == "None"]
    assert [d["metadata"]["name"] for d in headless] == [statefulset["spec"]["serviceName"]]
    assert "KAFKA_STATIC_MEMBERSHIP" not in {e["name"] for e in container(one("Deployment")).get("env", [])}


def test_the_grace_period_outlasts_the_drain() -> None:
    drain = float(configmap_data().get("BRIDGE_DRAIN_TIMEOUT", DEFAULT_DRAIN))
    for workload in workloads():
        grace = workload["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert grace > DEFAULT_DRAIN and grace > drain, workload["kind"]


def test_pods_run_as_the_images_non_root_user_with_resources() -> None:
    uid = int(dockerfile_instructions()["USER"][-1])
    for workload in workloads():
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == uid
        c = container(workload)
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert c["resources"]["requests"] and c["resources"]["limits"]


def test_keda_scales_the_deployment_on_the_bridge_groups_lag() -> None:
    scaled = one("ScaledObject")
    deployment = one("Deployment")
    target = scaled["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    triggers = scaled["spec"]["triggers"]
    assert {t["type"] for t in triggers} == {"kafka"}
    data = configmap_data()
    fields = ("transactions_topic", "eligibility_topic", "attributions_topic")
    topics = {data.get(env_name(BridgeSettings, f), BridgeSettings.model_fields[f].default) for f in fields}
    assert topics == {BridgeSettings.model_fields[f].default for f in fields}, "the catalogue's topics"
    assert {t["metadata"]["topic"] for t in triggers} == topics
    auth = one("TriggerAuthentication")
    secret_keys = set(one("Secret")["stringData"])
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["name"] == one("Secret")["metadata"]["name"] and ref["key"] in secret_keys
    for t in triggers:
        meta = t["metadata"]
        assert meta["consumerGroup"] == data["BRIDGE_GROUP_ID"]
        assert meta["bootstrapServers"] == data["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["offsetResetPolicy"] == data["KAFKA_AUTO_OFFSET_RESET"]
        assert t["authenticationRef"]["name"] == auth["metadata"]["name"]
        assert all(isinstance(v, str) for v in meta.values()), "KEDA metadata values are strings"


# --------------------------------------------------------------------------------------------------------
# The Dockerfile.


def dockerfile_instructions() -> dict[str, list[str]]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    final_stage = text.rsplit("\nFROM ", 1)[1]
    out: dict[str, list[str]] = {}
    for line in final_stage.splitlines()[1:]:
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            out.setdefault(word.upper(), []).append(rest.strip())
    return out


def test_dockerfile_agrees_with_the_manifests() -> None:
    instructions = dockerfile_instructions()
    assert json.loads(instructions["ENTRYPOINT"][-1]) + json.loads(instructions["CMD"][-1]) == ["kard-bridge", "run"]
    assert instructions["EXPOSE"] == [str(DEFAULT_PORT)]
    (healthcheck,) = instructions["HEALTHCHECK"]
    assert f"127.0.0.1:{DEFAULT_PORT}/healthz" in healthcheck
    assert shlex.split(healthcheck)[0].startswith("--interval")
    env = " ".join(instructions.get("ENV", []))
    assert f"BRIDGE_METRICS_PORT={DEFAULT_PORT}" in env
    assert set(ENV_NAME.findall(env)) <= SETTINGS
    assert instructions["USER"][-1] != "root" and instructions["USER"][-1] != "0"


def test_models_are_the_three_sections() -> None:
    """The settings scanned above are exactly the three sections of bridge/config.py."""
    assert [model for _, model in SECTIONS] == [KafkaSettings, KardSettings, BridgeSettings]
