"""``kard-bridge replay``: republish dead-lettered records, selected by filters, safely and resumably.

Modules, each with one concern:

* :mod:`~bridge.replay.selection`: the filters and the loop guard, as a pure ``select(headers, filters)``.
* :mod:`~bridge.replay.replayer`: the loop (decide → send → ack → commit), provenance headers, ``--rate``.
* :mod:`~bridge.kafka.dlq_reader` (in the Kafka façade): the failures-topic reader (end offsets frozen at
  start, group commits).
* :mod:`~bridge.replay.report`: the table, JSON lines, progress bar or lines, and the summary.
* :mod:`~bridge.replay.cli`: argument parsing and exit codes.

Only the CLI entry point and the pure selection API are imported here, so ``kard-bridge --help`` does
not load aiokafka.
"""

from __future__ import annotations

from bridge.replay.cli import register
from bridge.replay.selection import Action, Filters, OffsetRange, Verdict, select

__all__ = ["Action", "Filters", "OffsetRange", "Verdict", "register", "select"]
