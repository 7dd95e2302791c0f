"""Topic administration for ``kard-bridge topics apply``: create what is missing, report what drifted.

Idempotent: an existing topic is never recreated or altered behind the operator's back. Differences
between the catalogue and the cluster (partition count, replication factor, topic configs) are
reported as *drift* so a human decides; ``--fix`` only adds partitions or sets configs, the two
changes Kafka can make in place without data loss.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bridge.topics import TopicSpec

__all__ = ["TopicReport", "apply_topics"]

_TOPIC_ALREADY_EXISTS = 36


@dataclass(slots=True)
class TopicReport:
    """What ``apply`` found or did for one topic: ``created``, ``ok``, ``drift`` or ``fixed``."""

    name: str
    status: str
    drift: list[str] = field(default_factory=list)


async def apply_topics(
    common_kwargs: Mapping[str, Any],
    specs: Sequence[TopicSpec],
    *,
    fix: bool = False,
    request_timeout: float = 30.0,
) -> list[TopicReport]:
    """Create missing topics, compare existing ones with their spec, optionally fix safe drift."""
    admin = AIOKafkaAdminClient(**common_kwargs, request_timeout_ms=int(request_timeout * 1000))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        reports: dict[str, TopicReport] = {}
        missing = [s for s in specs if s.name not in existing]
        if missing:
            new = [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=dict(s.config)) for s in missing]
            response = await admin.create_topics(new, timeout_ms=int(request_timeout * 1000))
            for err in response.topic_errors:
                name, code = err[0], err[1]
                if code not in (0, _TOPIC_ALREADY_EXISTS):
                    msg = err[2] if len(err) > 2 else ""
                    raise RuntimeError(f"could not create topic {name!r}: Kafka error {code} {msg}")
            for s in missing:
                reports[s.name] = TopicReport(s.name, "created")
        present = [s for s in specs if s.name in existing]
        if present:
            await _check_existing(admin, present, reports, fix=fix, timeout_ms=int(request_timeout * 1000))
        await _wait_for_leaders(admin, [s.name for s in specs])
        return [reports[s.name] for s in specs]
    finally:
        await admin.close()


async def _check_existing(
    admin: AIOKafkaAdminClient,
    specs: Sequence[TopicSpec],
    reports: dict[str, TopicReport],
    *,
    fix: bool,
    timeout_ms: int,
) -> None:
    described = {d["topic"]: d for d in await admin.describe_topics([s.name for s in specs])}
    resources = [ConfigResource(ConfigResourceType.TOPIC, s.name) for s in specs]
    actual_configs: dict[str, dict[str, str]] = {}
    for response in await admin.describe_configs(resources):
        for resource in response.resources:
            # (error_code, error_message, resource_type, resource_name, config_entries)
            name, entries = resource[3], resource[4]
            actual_configs[name] = {e[0]: e[1] for e in entries}
    for spec in specs:
        drift: list[str] = []
        parts = described.get(spec.name, {}).get("partitions", [])
        if len(parts) != spec.partitions:
            drift.append(f"partitions: cluster {len(parts)}, catalogue {spec.partitions}")
        replicas = len(parts[0]["replicas"]) if parts else spec.replication_factor
        if replicas != spec.replication_factor:
            drift.append(f"replication factor: cluster {replicas}, catalogue {spec.replication_factor}")
        have = actual_configs.get(spec.name, {})
        wrong = {k: v for k, v in spec.config.items() if have.get(k) != v}
        drift.extend(f"config {k}: cluster {have.get(k)!r}, catalogue {v!r}" for k, v in wrong.items())
        status = "drift" if drift else "ok"
        if drift and fix:
            if len(parts) < spec.partitions:
                await admin.create_partitions({spec.name: NewPartitions(spec.partitions)}, timeout_ms=timeout_ms)
            if wrong:
                # Legacy AlterConfigs replaces the topic's overrides: the catalogue owns them all.
                await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, spec.name, dict(spec.config))])
            status = "fixed"
        reports[spec.name] = TopicReport(spec.name, status, drift)


async def _wait_for_leaders(admin: AIOKafkaAdminClient, names: Sequence[str], timeout: float = 30.0) -> None:
    pending = set(names)
    async with asyncio.timeout(timeout):
        while pending:
            for entry in await admin.describe_topics(sorted(pending)):
                parts = entry["partitions"]
                if entry["error_code"] == 0 and parts and all(p["leader"] >= 0 for p in parts):
                    pending.discard(entry["topic"])
            if pending:
                await asyncio.sleep(0.1)
