"""Client-side checks and setup for local Kafka brokers: readiness probes, topic creation, partition state.

Why separate from ``kafka.py``: these talk the Kafka protocol through aiokafka, while ``kafka.py`` manages
JVM processes. Every helper has an ``async`` form for async tests and a blocking form for fixtures and the
CLI; a blocking form called while an event loop is running executes in a worker thread with its own loop
(so it works anywhere, but blocks the calling loop: in async code prefer the ``*_async`` form). The async
forms take no timeout argument: callers bound them with ``asyncio.timeout`` as usual; the blocking forms do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import socket
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import AIOKafkaClient
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from bridge.devenv.kafka_dist import KafkaDevenvError

__all__ = [
    "PartitionState",
    "broker_ids",
    "broker_ids_async",
    "create_topics",
    "create_topics_async",
    "delete_topics",
    "delete_topics_async",
    "describe_partitions",
    "describe_partitions_async",
    "run_blocking",
]

_T = TypeVar("_T")
_TOPIC_ALREADY_EXISTS = 36
_PROBE_REQUEST_MS = 5000
_REQUEST_MS = 30000


@dataclass(frozen=True, slots=True)
class PartitionState:
    """One partition as the cluster metadata describes it (node ids; ``leader`` is -1 when there is none)."""

    partition: int
    leader: int
    replicas: tuple[int, ...]
    isr: tuple[int, ...]


def run_blocking(factory: Callable[[], Coroutine[Any, Any, _T]], timeout: float | None = None) -> _T:
    """Run the coroutine made by ``factory`` to completion within ``timeout`` s from sync or async code.

    It always runs on a fresh event loop in a worker thread: ``asyncio.run`` on the calling thread would
    replace (and orphan) the thread's current event loop, e.g. the one pytest-asyncio set for a test.

    Raises:
        TimeoutError: ``timeout`` passed first.
    """

    async def bounded() -> _T:
        async with asyncio.timeout(timeout):
            return await factory()

    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-devenv") as pool:
        return pool.submit(lambda: asyncio.run(bounded())).result()


def _port_open(server: str) -> bool:
    host, _, port = server.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1.0):
            return True
    except OSError:
        return False


async def broker_ids_async(server: str) -> frozenset[int] | None:
    """Ask one broker for cluster metadata and return the registered broker ids, or None if it cannot answer.

    The request goes to ``server`` (``host:port``) only, so this checks that this very node serves clients.
    A TCP check comes first so that a closed port costs no client (and no client error log line).
    """
    if not await asyncio.to_thread(_port_open, server):
        return None
    client = AIOKafkaClient(bootstrap_servers=server, request_timeout_ms=_PROBE_REQUEST_MS)
    try:
        await client.bootstrap()
        return frozenset(int(broker.nodeId) for broker in client.cluster.brokers())
    except (OSError, KafkaError):  # a probe: a failure means "not ready yet"
        return None
    finally:
        await client.close()


def broker_ids(server: str, timeout: float = 5.0) -> frozenset[int] | None:
    """Blocking form of ``broker_ids_async``; None also when ``timeout`` seconds pass."""
    try:
        return run_blocking(lambda: broker_ids_async(server), timeout)
    except TimeoutError:
        return None


async def describe_partitions_async(bootstrap_servers: str, topic: str) -> list[PartitionState]:
    """Return the partitions of ``topic`` sorted by number (empty if the topic does not exist)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=_REQUEST_MS)
    try:
        await admin.start()
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    states: list[PartitionState] = []
    for entry in described:
        if entry["topic"] != topic or entry["error_code"] != 0:
            continue
        states.extend(
            PartitionState(
                partition=int(p["partition"]),
                leader=int(p["leader"]),
                replicas=tuple(int(r) for r in p["replicas"]),
                isr=tuple(int(r) for r in p["isr"]),
            )
            for p in entry["partitions"]
        )
    return sorted(states, key=lambda s: s.partition)


def describe_partitions(bootstrap_servers: str, topic: str, timeout: float = 30.0) -> list[PartitionState]:
    """Blocking form of ``describe_partitions_async``."""
    return run_blocking(lambda: describe_partitions_async(bootstrap_servers, topic), timeout)


async def create_topics_async(
    bootstrap_servers: str,
    names: Sequence[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
) -> None:
    """Create the topics (existing ones are left as they are) and wait until every broker serves them.

    Waiting ends when every reachable broker has each topic in its metadata with a leader per partition.

    Args:
        bootstrap_servers: ``host:port,...`` of the cluster.
        names: topic names.
        partitions: partitions per topic.
        replication_factor: replicas per partition (aiokafka's CreateTopics version needs an explicit value).
        configs: topic-level configs such as ``{"min.insync.replicas": "2"}``.

    Raises:
        KafkaDevenvError: the broker refused a topic; the message has the Kafka error code.
    """
    topic_configs = dict(configs or {})
    wanted = [NewTopic(name, partitions, replication_factor, topic_configs=topic_configs) for name in names]
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=_REQUEST_MS)
    try:
        await admin.start()
        response = await admin.create_topics(wanted, timeout_ms=_REQUEST_MS)
    finally:
        await admin.close()
    for error in response.topic_errors:
        name, code = error[0], error[1]
        if code not in (0, _TOPIC_ALREADY_EXISTS):
            detail = error[2] if len(error) > 2 else ""
            raise KafkaDevenvError(f"could not create topic {name!r}: Kafka error code {code} {detail}")
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=_PROBE_REQUEST_MS)
    try:
        await client.bootstrap()
        while True:  # polling: brokers offer no notification for this
            if await _known_everywhere(client, names):
                break
            await asyncio.sleep(0.1)
    finally:
        await client.close()


async def _known_everywhere(client: AIOKafkaClient, names: Sequence[str]) -> bool:
    """True once every reachable broker's metadata has every topic, each partition with a leader.

    Brokers learn new topics asynchronously; asking each one means that a client which
    bootstraps from any of them right after ``create_topics`` finds the topics.
    """
    for broker in client.cluster.brokers():
        try:
            response = await client.send(broker.nodeId, MetadataRequest(list(names), False))
        except KafkaError:  # unreachable (e.g. killed, not yet fenced): it serves no client either
            continue
        ready = {
            topic["topic"]
            for topic in response.to_object()["topics"]
            if topic["error_code"] == 0 and topic["partitions"] and all(p["leader"] >= 0 for p in topic["partitions"])
        }
        if not ready.issuperset(names):
            return False
    return True


def create_topics(
    bootstrap_servers: str,
    names: Sequence[str],
    *,
    partitions: int = 1,
    replication_factor: int = 1,
    configs: Mapping[str, str] | None = None,
    timeout: float = 60.0,
) -> None:
    """Blocking form of ``create_topics_async``.

    Raises:
        KafkaDevenvError: a topic was refused, or the topics had no leaders after ``timeout`` seconds.
    """
    try:
        run_blocking(
            lambda: create_topics_async(
                bootstrap_servers,
                names,
                partitions=partitions,
                replication_factor=replication_factor,
                configs=configs,
            ),
            timeout,
        )
    except TimeoutError as exc:
        message = f"topics {list(names)} not ready in {timeout} s on {bootstrap_servers}"
        raise KafkaDevenvError(message) from exc


async def delete_topics_async(bootstrap_servers: str, names: Sequence[str]) -> None:
    """Delete the topics; topics that do not exist are ignored."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=_REQUEST_MS)
    try:
        await admin.start()
        await admin.delete_topics(list(names), timeout_ms=_REQUEST_MS)
    finally:
        await admin.close()


def delete_topics(bootstrap_servers: str, names: Sequence[str], timeout: float = 30.0) -> None:
    """Blocking form of ``delete_topics_async``."""
    run_blocking(lambda: delete_topics_async(bootstrap_servers, names), timeout)
