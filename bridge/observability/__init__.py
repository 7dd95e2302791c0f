"""Logs, metrics and health: how operators see the bridge."""

from __future__ import annotations

__all__: list[str] = []
