"""docs/configuration.md is generated from the settings models and kept in sync with them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import SecretStr

from bridge.config_doc import DEFAULT_PATH, SECTIONS, env_name, main, render_markdown


def rows() -> dict[str, list[str]]:
    """The reference's table rows by variable: ``{"KAFKA_CLIENT_ID": [type, default, description]}``."""
    out: dict[str, list[str]] = {}
    for line in render_markdown().splitlines():
        match = re.match(r"\| `((?:KAFKA|KARD|BRIDGE)_[A-Z0-9_]+)` \| (.*) \|$", line)
        if match:
            assert match.group(1) not in out, f"{match.group(1)} twice"
            out[match.group(1)] = re.split(r"(?<!\\) \| ", match.group(2))
    return out


def test_the_committed_reference_is_the_rendered_one() -> None:
    """Regenerate with `python -m bridge.config_doc` after changing bridge/config.py."""
    assert DEFAULT_PATH.read_text(encoding="utf-8") == render_markdown()


def test_every_field_of_every_section_appears_once_with_a_description() -> None:
    table = rows()
    expected = [env_name(model, field) for _, model in SECTIONS for field in model.model_fields]
    assert list(table) == expected
    assert {name.split("_")[0] for name in table} == {"KAFKA", "KARD", "BRIDGE"}
    for name, cells in table.items():
        assert len(cells) == 3, (name, cells)
        assert all(cell.strip() for cell in cells), name


def test_defaults_are_shown_and_secrets_are_not() -> None:
    table = rows()
    assert table["BRIDGE_METRICS_PORT"][1] == "`9400`"
    assert table["KAFKA_BOOTSTRAP_SERVERS"][1] == "`127.0.0.1:9092`"
    assert table["BRIDGE_BATCH_MAX_BYTES"][1] == "`4194304` (4 MiB)"
    assert table["KAFKA_SASL_USERNAME"][1] == "unset"
    for _, model in SECTIONS:
        for field, info in model.model_fields.items():
            if isinstance(info.default, SecretStr):
                assert table[env_name(model, field)][1] == "(secret)"
                assert info.default.get_secret_value() not in render_markdown()
    assert table["KARD_CLIENT_SECRET"][1] == "(secret)"


def test_check_mode_reports_a_stale_file(tmp_path: Path) -> None:
    target = tmp_path / "configuration.md"
    assert main(["--check", "--path", str(target)]) == 1
    assert main(["--path", str(target)]) == 0
    assert target.read_text(encoding="utf-8") == render_markdown()
    assert main(["--check", "--path", str(target)]) == 0
    target.write_text(render_markdown() + "edited\n", encoding="utf-8")
    assert main(["--check", "--path", str(target)]) == 1


def test_module_entry_point_checks_the_committed_file() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bridge.config_doc", "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
