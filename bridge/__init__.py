"""kard-bridge: a long-lived Kafka-to-REST bridge for the Kard rewards API.

A record's path, by module name: ``kafka/consumer`` fetches it, ``mapping/`` turns it into a Kard item,
``pipeline/batcher`` groups items per route, ``dispatch`` sends batches through ``kard/client`` with
retries from ``pipeline/retry``, ``outputs`` publishes its result or failure record, and
``pipeline/offsets`` decides when its offset may be committed. ``app`` wires them together.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
