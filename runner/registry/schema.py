"""Generate ``schemas/registry.schema.json`` (Draft 2020-12) from :mod:`runner.registry.entries`.

``python -m runner.registry.schema`` rewrites it; a test fails when the committed file is stale.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from runner.registry.entries import RegistryFile

SCHEMA_ID = "https://runner.dev/schemas/registry.schema.json"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "registry.schema.json"


def _drop_titles(node: Any) -> Any:
    if isinstance(node, list):
        return [_drop_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    return {key: _drop_titles(value) for key, value in node.items() if key != "title"}


@lru_cache(maxsize=1)
def registry_schema() -> dict[str, Any]:
    schema = _drop_titles(RegistryFile.model_json_schema(by_alias=True))
    schema.pop("description", None)
    header = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Model registry",
        "description": (
            "The runner's model registry: alias -> pinned source, kind, architecture, parameters, license, "
            "size, per-file sha256, store folder (under RUNNER_HOME) and lineage of fine-tuned models. "
            "Generated from runner/registry/entries.py; do not edit by hand."
        ),
    }
    return {**header, **schema}


def render_schema() -> str:
    return json.dumps(registry_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else SCHEMA_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
