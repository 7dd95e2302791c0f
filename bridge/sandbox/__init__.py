"""A Kard rewards API emulator (a real aiohttp server) with fault injection and inspection.

Used by the integration tests, the demo and the benchmarks; runtime code never imports it. Start it with
``kard-bridge sandbox`` (:mod:`.commands`) or :func:`bridge.sandbox.process.start_sandbox`, drive it with
:class:`bridge.sandbox.control.SandboxControl`. The wire behaviour and its documented choices are in
:mod:`bridge.sandbox.app`; faults in :mod:`bridge.sandbox.faults`; inspection in :mod:`bridge.sandbox.control_api`.
"""

from __future__ import annotations

__all__: list[str] = []
