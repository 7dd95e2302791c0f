"""Local development environment: a real Apache Kafka (pinned Maven jars, KRaft, 1 or 3 nodes on free ports).

Modules: ``kafka_dist`` fetches the jars into a per-user cache; ``kafka_node`` runs one broker JVM;
``kafka`` orchestrates a cluster (readiness, fault control, state file); ``kafka_admin`` holds the client-side
probes and topic helpers; ``commands`` is the ``kard-bridge kafka`` CLI. Runtime code never imports this
package (only ``bridge.cli`` and the tests do), so nothing is imported here eagerly.
"""

from __future__ import annotations

__all__: list[str] = []
