"""Shared pytest configuration: fixtures for the real counterparts are plugins in ``tests/fixtures``."""

from __future__ import annotations

pytest_plugins = [
    "tests.fixtures.kafka",
    "tests.fixtures.sandbox",
    "tests.fixtures.bridge",
]
