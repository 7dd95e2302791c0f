"""Kafka clients behind fault-injecting proxies: the PROXIED listener of the local broker and ``FaultProxy``.

A broker created with ``proxied_listener=True`` binds its PROXIED listener on one port and advertises another,
where one ``FaultProxy`` per node listens (``ProxyGroup.for_routes(cluster.proxied_routes)``). A client
bootstrapped on ``proxied_bootstrap_servers`` learns only proxy addresses from the metadata, so cutting the
proxies cuts it off completely, while clients on the normal ``bootstrap_servers`` carry on.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from bridge.devenv.kafka import KafkaCluster, ProxiedRoute
from bridge.devenv.kafka_dist import KafkaDevenvError, KafkaDist
from bridge.devenv.tcp_proxy import CutMode, ProxyGroup


def test_proxied_listener_config_ports_and_state(tmp_path: Path) -> None:
    """No JVM: each node binds one port and advertises another, all distinct, and the state file keeps them."""
    dist = KafkaDist("0", tmp_path, sys.executable)  # never run: only the configs are written
    cluster = KafkaCluster.create(tmp_path / "three", brokers=3, dist=dist, proxied_listener=True)
    routes = cluster.proxied_routes
    assert [type(r) for r in routes] == [ProxiedRoute] * 3
    ports = [p for n in cluster.nodes for p in (n.broker_port, n.controller_port, n.proxied_port)]
    ports += [r.advertised_port for r in routes]
    assert len(set(ports)) == len(ports) == 12
    assert cluster.proxied_bootstrap_servers == ",".join(f"127.0.0.1:{r.advertised_port}" for r in routes)
    for node, (advertised, bound) in zip(cluster.nodes, routes, strict=True):
        props = dict(line.split("=", 1) for line in node.config_path.read_text(encoding="utf-8").splitlines())
        assert f"PROXIED://127.0.0.1:{bound}" in props["listeners"].split(",")
        assert f"PROXIED://127.0.0.1:{advertised}" in props["advertised.listeners"].split(",")
        assert "PROXIED:PLAINTEXT" in props["listener.security.protocol.map"].split(",")
        assert props["inter.broker.listener.name"] == "PLAINTEXT"
        assert props["controller.listener.names"] == "CONTROLLER"
    loaded = KafkaCluster.load(tmp_path / "three")
    assert loaded.proxied_routes == routes
    assert loaded.proxied_bootstrap_servers == cluster.proxied_bootstrap_servers

    plain = KafkaCluster.create(tmp_path / "plain", dist=dist)
    assert plain.node(0).proxied_server is None
    with pytest.raises(KafkaDevenvError, match="proxied_listener=True"):
        _ = plain.proxied_routes
    with pytest.raises(KafkaDevenvError):
        _ = plain.proxied_bootstrap_servers


@pytest.fixture(scope="module")
def proxied_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A one-node local broker with a PROXIED listener; stopped when the module ends."""
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "").strip():
        pytest.skip("KAFKA_BOOTSTRAP_SERVERS points at an external broker; this needs its own PROXIED listener")
    with KafkaCluster.create(tmp_path_factory.mktemp("kafka-proxied"), brokers=1, proxied_listener=True) as cluster:
        yield cluster


async def _read_partition(servers: str, topic: str, count: int) -> list[bytes]:
    """The first ``count`` values of partition 0, read without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    await consumer.start()
    values: list[bytes] = []
    try:
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_beginning()
        async with asyncio.timeout(60):
            while len(values) < count:
                for records in (await consumer.getmany(timeout_ms=500)).values():
                    values.extend(r.value for r in records if r.value is not None)
    finally:
        await consumer.stop()
    return values


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("mode", ["reset", "blackhole"])
async def test_cut_isolates_proxied_clients_only_until_heal(proxied_kafka: KafkaCluster, mode: CutMode) -> None:
    """Through the proxies a producer and a group consumer work; while cut, proxied sends fail but the normal
    listener is unaffected; after heal the proxied clients carry on (the consumer can commit)."""
    cluster = proxied_kafka
    topic = f"proxied-{mode}-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(cluster.create_topics, [topic])
    async with ProxyGroup.for_routes(cluster.proxied_routes) as proxies:
        proxied = AIOKafkaProducer(bootstrap_servers=cluster.proxied_bootstrap_servers, request_timeout_ms=3000)
        direct = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap_servers)
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=cluster.proxied_bootstrap_servers,
            group_id=f"group-{topic}",
            auto_offset_reset="earliest",
            enable_auto_commit=False,
        )
        await proxied.start()
        await direct.start()
        await consumer.start()
        seen: set[bytes] = set()

        async def consume_until(wanted: set[bytes]) -> None:
            async with asyncio.timeout(90):
                while not wanted <= seen:
                    for records in (await consumer.getmany(timeout_ms=500)).values():
                        seen.update(r.value for r in records if r.value is not None)

        try:
            await proxied.send_and_wait(topic, b"before", partition=0)
            # Every broker address the proxied client knows is a proxy's.
            brokers = {(b.host, b.port) for b in proxied.client.cluster.brokers()}
            assert brokers == {("127.0.0.1", route.advertised_port) for route in cluster.proxied_routes}
            await consume_until({b"before"})
            assert proxies[0].stats.bytes_to_client > 0

            proxies.cut(mode)
            with pytest.raises((KafkaError, TimeoutError)):
                async with asyncio.timeout(30):
                    await proxied.send_and_wait(topic, b"lost", partition=0)
            await direct.send_and_wait(topic, b"direct", partition=0)  # the normal listener is unaffected
            assert await _read_partition(cluster.bootstrap_servers, topic, 2) == [b"before", b"direct"]
            await asyncio.sleep(1)  # the proxied consumer polls into the cut for a while
            assert b"direct" not in seen

            proxies.heal()
            async with asyncio.timeout(60):
                await proxied.send_and_wait(topic, b"after", partition=0)
            await consume_until({b"direct", b"after"})
            async with asyncio.timeout(60):
                await consumer.commit()
            assert await consumer.committed(TopicPartition(topic, 0)) == 3
        finally:
            await consumer.stop()
            await proxied.stop()
            await direct.stop()
        values = await _read_partition(cluster.bootstrap_servers, topic, 3)
        assert values == [b"before", b"direct", b"after"]  # nothing sent during the cut reached the broker
        stats = proxies[0].stats
        assert stats.resets >= 1
        assert stats.refused >= 1 if mode == "reset" else stats.bytes_dropped > 0


@pytest.mark.kafka
@pytest.mark.slow
async def test_restarted_node_keeps_its_proxied_ports(proxied_kafka: KafkaCluster) -> None:
    """A node restart keeps the bind and advertised ports (config and state file), so the proxies still fit."""
    cluster = proxied_kafka
    routes = cluster.proxied_routes
    topic = f"proxied-restart-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(cluster.create_topics, [topic])
    async with ProxyGroup.for_routes(routes):
        await asyncio.to_thread(cluster.restart, 0)
        assert cluster.proxied_routes == routes
        assert KafkaCluster.load(cluster.data_dir).proxied_routes == routes
        producer = AIOKafkaProducer(bootstrap_servers=cluster.proxied_bootstrap_servers)
        await producer.start()
        try:
            async with asyncio.timeout(60):
                await producer.send_and_wait(topic, b"after restart", partition=0)
        finally:
            await producer.stop()
    assert await _read_partition(cluster.bootstrap_servers, topic, 1) == [b"after restart"]
