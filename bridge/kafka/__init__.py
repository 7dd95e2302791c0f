"""The only package that imports aiokafka: a typed façade in seconds, returning ``bridge.records`` types."""

from __future__ import annotations

from aiokafka.errors import KafkaConnectionError as KafkaUnreachable

from bridge.kafka.consumer import BridgeConsumer, RebalanceHandler
from bridge.kafka.producer import OutputProducer

__all__ = ["BridgeConsumer", "KafkaUnreachable", "OutputProducer", "RebalanceHandler"]
