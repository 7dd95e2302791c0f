"""Project rules that a grep can check: small modules, declared public surface, tasks only from TaskGroups."""

from __future__ import annotations

import re
from pathlib import Path

BRIDGE = Path(__file__).resolve().parents[2] / "bridge"
MODULES = sorted(p for p in BRIDGE.rglob("*.py") if "__pycache__" not in p.parts)


def test_no_module_is_over_600_lines() -> None:
    """Every module under bridge/ stays small enough to read (aim ≤ 400, hard limit 600)."""
    too_long = {str(p.relative_to(BRIDGE)): n for p in MODULES if (n := len(p.read_text().splitlines())) > 600}
    assert not too_long


def test_every_module_declares_its_public_surface() -> None:
    """Each module (except the ``python -m bridge`` entry point) lists its public names in ``__all__``."""
    missing = [
        str(p.relative_to(BRIDGE)) for p in MODULES if p.name != "__main__.py" and "__all__" not in p.read_text()
    ]
    assert not missing


def test_tasks_start_only_from_task_groups() -> None:
    """No bare asyncio.create_task/ensure_future (except marked tracked tasks) and no unbounded queues."""
    bare = re.compile(r"asyncio\.(create_task|ensure_future)\(|\.create_task\(|Queue\(\)|maxsize=0")
    # "# tracked task:" marks the one deliberate exception: a task kept in a set the owner awaits on close,
    # because it must survive the cancellation of the task that started it (kard/client.py's response close).
    allowed = re.compile(r"(tg|tasks|self\._tg)\.create_task\(|# tracked task:")
    offenders = [
        f"{p.relative_to(BRIDGE)}:{i}"
        for p in MODULES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if bare.search(line) and not allowed.search(line)
    ]
    assert not offenders


def test_only_the_kafka_facade_imports_aiokafka() -> None:
    """aiokafka is imported only by bridge/kafka, bridge/config (TLS context) and the dev/bench tooling."""
    allowed_dirs = {"kafka", "devenv"}
    offenders = [
        str(p.relative_to(BRIDGE))
        for p in MODULES
        if re.search(r"^\s*(from|import) aiokafka", p.read_text(), re.M)
        and p.relative_to(BRIDGE).parts[0] not in allowed_dirs
        and p.name != "config.py"
    ]
    assert not offenders
