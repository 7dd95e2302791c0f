"""Shared pytest configuration: fixtures for the real counterparts are plugins in ``tests/fixtures``."""

from __future__ import annotations

import pytest

from tests.event_strategies import LONG

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.sandbox",
    "tests.fixtures.bridge",
]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In long property-test mode (``KARD_BRIDGE_HYPOTHESIS_LONG=1``) no test has a timeout: 1M examples take hours."""
    if LONG:
        for item in items:
            item.add_marker(pytest.mark.timeout(0), append=False)
