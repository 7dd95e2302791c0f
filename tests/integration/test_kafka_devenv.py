"""The local real-Kafka tooling: a single broker round trip, the 3-node cluster under faults, and the CLI."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from bridge.devenv.kafka import STATE_FILE, KafkaCluster
from bridge.devenv.kafka_admin import PartitionState, broker_ids, describe_partitions_async
from bridge.devenv.kafka_node import owns_pid
from tests.fixtures.kafka import TopicFactory

pytestmark = pytest.mark.kafka

_KARD_BRIDGE = Path(sys.executable).with_name("kard-bridge")


async def _consume_all(servers: str, topic: str, partitions: int, count: int) -> dict[int, list[bytes]]:
    """Read ``count`` records of ``topic`` from the beginning without a group; values per partition."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    values: dict[int, list[bytes]] = {p: [] for p in range(partitions)}
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        await consumer.seek_to_beginning()
        async with asyncio.timeout(120):
            while sum(map(len, values.values())) < count:
                for tp, records in (await consumer.getmany(timeout_ms=1000)).items():
                    values[tp.partition].extend(r.value for r in records)
    finally:
        await consumer.stop()
    return values


async def _wait_partitions(servers: str, topic: str, ready: Callable[[list[PartitionState]], bool]) -> None:
    """Return once ``ready`` holds for the partitions of ``topic`` (callers bound the wait)."""
    while True:
        partitions = await describe_partitions_async(servers, topic)
        if partitions and ready(partitions):
            return
        await asyncio.sleep(0.3)


async def test_single_broker_round_trip(kafka_bootstrap: str, topic_factory: TopicFactory) -> None:
    """Records produced to the session broker come back in order to a consumer group, which can commit."""
    topic = topic_factory(partitions=2)
    expected = [f"value-{i}".encode() for i in range(20)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        for value in expected:
            await producer.send_and_wait(topic, value, partition=0)
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"group-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    received: list[bytes] = []
    try:
        async with asyncio.timeout(120):
            while len(received) < len(expected):
                for records in (await consumer.getmany(timeout_ms=1000)).values():
                    received.extend(r.value for r in records)
        await consumer.commit()
        committed = await consumer.committed(TopicPartition(topic, 0))
    finally:
        await consumer.stop()
    assert received == expected
    assert committed == len(expected)


@pytest.mark.cluster
@pytest.mark.slow
async def test_cluster_has_three_brokers_and_replicates_topics(kafka_cluster: KafkaCluster) -> None:
    """Every node of the cluster sees 3 brokers, and a new topic gets 3 in-sync replicas and min ISR 2."""
    for node in kafka_cluster.nodes:
        assert await asyncio.to_thread(broker_ids, node.bootstrap_server) == frozenset({0, 1, 2})
    topic = f"replicated-{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(kafka_cluster.create_topics, [topic], partitions=3)

    partitions = await describe_partitions_async(kafka_cluster.bootstrap_servers, topic)
    assert [p.partition for p in partitions] == [0, 1, 2]
    assert all(sorted(p.replicas) == [0, 1, 2] and sorted(p.isr) == [0, 1, 2] for p in partitions)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap_servers)
    await admin.start()
    try:
        responses = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    entries = {entry[0]: entry[1] for response in responses for res in response.resources for entry in res[4]}
    assert entries["min.insync.replicas"] == "2"


@pytest.mark.cluster
@pytest.mark.slow
async def test_acks_all_survives_sigkill_of_the_leader_node(kafka_cluster: KafkaCluster) -> None:
    """An idempotent acks=all producer keeps getting acks after SIGKILL of a partition leader's node, without
    loss or duplicates, and the restarted node rejoins every ISR."""
    servers = kafka_cluster.bootstrap_servers
    topic = f"fault-{uuid.uuid4().hex[:10]}"
    await asyncio.to_thread(kafka_cluster.create_topics, [topic], partitions=3)
    victim = (await describe_partitions_async(servers, topic))[0].leader
    sent: dict[int, list[bytes]] = {p: [] for p in range(3)}
    producer = AIOKafkaProducer(
        bootstrap_servers=servers, enable_idempotence=True, acks="all", request_timeout_ms=30000
    )
    await producer.start()

    async def send(first: int, last: int) -> None:
        for i in range(first, last):
            value = f"record-{i}".encode()
            async with asyncio.timeout(120):
                await producer.send_and_wait(topic, value, partition=i % 3)
            sent[i % 3].append(value)

    try:
        await send(0, 30)
        await asyncio.to_thread(kafka_cluster.kill, victim)
        await send(30, 90)
        async with asyncio.timeout(60):  # the new leader reaches every broker's metadata shortly
            await _wait_partitions(servers, topic, lambda parts: parts[0].leader not in (victim, -1))

        await asyncio.to_thread(kafka_cluster.start, victim)
        async with asyncio.timeout(180):
            await _wait_partitions(servers, topic, lambda parts: all(sorted(p.isr) == [0, 1, 2] for p in parts))
        await send(90, 120)
    finally:
        await producer.stop()
        await asyncio.to_thread(kafka_cluster.start)  # heal the shared cluster even when the test failed

    assert await _consume_all(servers, topic, 3, 120) == sent


@pytest.mark.cluster
@pytest.mark.slow
def test_stopped_node_leaves_and_restarts_on_the_same_port(kafka_cluster: KafkaCluster) -> None:
    """A node stopped with SIGTERM drops out of the metadata, and starting it again brings it back on its port."""
    node = kafka_cluster.node(2)
    port = node.broker_port
    try:
        kafka_cluster.stop(2)
        assert not node.is_running()
        kafka_cluster.wait_ready(timeout=120)
        assert broker_ids(kafka_cluster.node(0).bootstrap_server) == frozenset({0, 1})

        kafka_cluster.start(2)
        assert node.broker_port == port
        assert broker_ids(node.bootstrap_server) == frozenset({0, 1, 2})

        old_pid = kafka_cluster.node(1).pid
        kafka_cluster.restart(1)
        assert kafka_cluster.node(1).pid not in (None, old_pid)
        assert broker_ids(kafka_cluster.node(1).bootstrap_server) == frozenset({0, 1, 2})
    finally:
        kafka_cluster.start()


@pytest.mark.slow
def test_cli_start_prints_bootstrap_servers_and_stop_ends_the_broker(tmp_path: Path) -> None:
    """`kafka start` returns with a ready broker and the bootstrap servers alone on its last stdout line;
    `kafka status` reports it; `kafka stop` ends the JVM it started."""
    data_dir = tmp_path / "kafka"
    try:
        started = subprocess.run(
            [_KARD_BRIDGE, "kafka", "start", "--data-dir", data_dir],
            capture_output=True,
            text=True,
            timeout=400,
            check=False,
        )
        assert started.returncode == 0, started.stderr
        bootstrap = started.stdout.strip().splitlines()[-1]
        assert re.fullmatch(r"127\.0\.0\.1:\d+", bootstrap)
        assert broker_ids(bootstrap) == frozenset({0})
        pids = [n["pid"] for n in json.loads((data_dir / STATE_FILE).read_text())["nodes"]]
        assert all(owns_pid(pid, str(data_dir)) for pid in pids)

        status = subprocess.run(
            [_KARD_BRIDGE, "kafka", "status", "--data-dir", data_dir],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert status.stdout.strip().splitlines()[-1] == bootstrap

        stopped = subprocess.run(
            [_KARD_BRIDGE, "kafka", "stop", "--data-dir", data_dir],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert not any(owns_pid(pid, str(data_dir)) for pid in pids)
    finally:
        if (data_dir / STATE_FILE).exists():
            KafkaCluster.load(data_dir).stop()


@pytest.mark.slow
def test_watchdog_stops_the_broker_when_its_owner_is_killed(tmp_path: Path) -> None:
    """When the process that started a broker dies by SIGKILL (no cleanup), the watchdog stops the JVM."""
    script = textwrap.dedent(
        f"""
        import time
        from bridge.devenv.kafka import KafkaCluster
        cluster = KafkaCluster.create({str(tmp_path)!r}, brokers=1)
        cluster.start()
        print(cluster.nodes[0].pid, flush=True)
        time.sleep(600)
        """
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert owns_pid(pid, str(tmp_path))
        owner.kill()
        owner.wait()
        deadline = time.monotonic() + 60
        while owns_pid(pid, str(tmp_path)) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not owns_pid(pid, str(tmp_path))
    finally:
        owner.kill()
        owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
        if (tmp_path / STATE_FILE).exists():
            KafkaCluster.load(tmp_path).stop()
