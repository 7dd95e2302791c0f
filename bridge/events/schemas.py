"""Generate the JSON Schemas in ``topics/schemas/`` from the pydantic models (the source of truth).

Run ``python -m bridge.events.schemas`` after changing a model; ``--check`` only compares and exits 1
when a file is stale (``tests/unit/test_schemas_in_sync.py`` does the same). Schemas are JSON Schema
draft 2020-12, pretty-printed with sorted keys so that diffs stay readable.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from bridge.events.attribution import AttributionEvent
from bridge.events.card_transaction import CardTransactionEvent
from bridge.events.eligibility import EligibilityEvent
from bridge.events.outcomes import BatchResultValue, FailureHeaders, ResultValue

__all__ = ["DEFAULT_SCHEMA_DIR", "SCHEMA_FILES", "generate", "main", "render", "write"]

DEFAULT_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "topics" / "schemas"
_BASE_ID = "https://github.com/kard-bridge/kard-bridge/topics/schemas/"


def _union(annotation: Any, title: str, description: str) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        schema = TypeAdapter(annotation).json_schema(mode="validation")
        schema["title"] = title
        schema.setdefault("description", description)
        return schema

    return build


def _failure() -> dict[str, Any]:
    schema = FailureHeaders.model_json_schema(by_alias=True, mode="validation")
    schema["title"] = "Failure record headers"
    schema["description"] = (
        "A failure record keeps the input record's key, value and headers byte for byte and adds these "
        "Kafka headers (UTF-8 text values; integers in decimal, times RFC 3339 UTC). When a name occurs "
        "more than once (a replayed record that failed again), the last occurrence is current."
    )
    return schema


def _result() -> dict[str, Any]:
    schema = ResultValue.model_json_schema(mode="validation")
    schema["title"] = "Result record value"
    return schema


def _batch_result() -> dict[str, Any]:
    schema = BatchResultValue.model_json_schema(mode="validation")
    schema["title"] = "Batch result record value (BRIDGE_RESULT_MODE=batch)"
    return schema


#: File name → schema builder.
SCHEMA_FILES: dict[str, Callable[[], dict[str, Any]]] = {
    "card-transaction.json": _union(
        CardTransactionEvent,
        "Card-transaction topic event",
        "transaction, matched_transaction or fraud_marker, discriminated by event_type (schema_version 1).",
    ),
    "eligibility.json": _union(EligibilityEvent, "Eligibility topic event", "segment_user events (schema_version 1)."),
    "attribution.json": _union(
        AttributionEvent,
        "Attribution topic event",
        "offer_attribution or notification_attribution, discriminated by event_type (schema_version 1).",
    ),
    "result.json": _result,
    "result-batch.json": _batch_result,
    "failure.json": _failure,
}


def render(name: str) -> str:
    """The exact text of one schema file."""
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": _BASE_ID + name}
    schema.update(SCHEMA_FILES[name]())
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """Every schema file's name and text."""
    return {name: render(name) for name in SCHEMA_FILES}


def write(directory: Path = DEFAULT_SCHEMA_DIR) -> list[Path]:
    """Write all schema files into ``directory``; returns the paths whose content changed."""
    directory.mkdir(parents=True, exist_ok=True)
    changed: list[Path] = []
    for name, text in generate().items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bridge.events.schemas [--check] [--dir DIR]``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m bridge.events.schemas", description=__doc__)
    parser.add_argument("--dir", type=Path, default=DEFAULT_SCHEMA_DIR, help="output directory")
    parser.add_argument("--check", action="store_true", help="only report stale files; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = [
            name
            for name, text in generate().items()
            if not (args.dir / name).exists() or (args.dir / name).read_text(encoding="utf-8") != text
        ]
        for name in stale:
            sys.stderr.write(f"stale: {args.dir / name}\n")
        return 1 if stale else 0
    for path in write(args.dir):
        sys.stdout.write(f"wrote {path}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
