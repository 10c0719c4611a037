"""Generate the public JSON Schema (Draft 2020-12) of a job file from the typed spec.

Pydantic's raw output is tuned for JSON APIs; a TOML job file has no null and users write a single
path as a string, so the output is rewritten into the plainer schema editors and users read:
no `anyOf` with null, string-or-list as a type list, map keys constrained with `propertyNames`.
`python -m runner.spec.schema` rewrites `schemas/job.schema.json`; a test fails when it is stale.
"""

from __future__ import annotations

import json
import sys
from functools import lru_cache
from pathlib import Path
from typing import Any

from runner.spec.model import JobSpec

SCHEMA_ID = "https://runner.dev/schemas/job.schema.json"
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "job.schema.json"


def _simplify(node: Any) -> Any:
    if isinstance(node, list):
        return [_simplify(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _simplify(value) for key, value in node.items()}
    node.pop("title", None)
    any_of = node.get("anyOf")
    if isinstance(any_of, list) and {"type": "null"} in any_of:
        rest = [branch for branch in any_of if branch != {"type": "null"}]
        if len(rest) == 1:
            del node["anyOf"]
            node = {**rest[0], **node}
            if node.get("default", ...) is None:
                del node["default"]
    if node.pop("x-one-or-many", False):
        node["type"] = ["string", "array"]
        # a single string is checked like an item (string keywords ignore arrays)
        for key in ("minLength", "pattern", "x-hint"):
            if key in node.get("items", {}):
                node.setdefault(key, node["items"][key])
    pattern_properties = node.pop("patternProperties", None)
    if pattern_properties:
        ((pattern, value_schema),) = pattern_properties.items()
        node["propertyNames"] = {"pattern": pattern}
        node["additionalProperties"] = value_schema
    if node.get("type") == "object" and "properties" in node:
        node.setdefault("additionalProperties", False)
    return node


@lru_cache(maxsize=1)
def job_schema() -> dict[str, Any]:
    """The job-file schema as a dict; cached because validation of many files reuses it."""
    raw = JobSpec.model_json_schema()
    schema = _simplify(raw)
    header = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "Fine-tuning job",
        "description": (
            "A fine-tuning job for the runner: the base model, the data, what is trained, the loss, "
            "optimisation settings and outputs. Generated from runner/spec/model.py; do not edit by hand."
        ),
    }
    schema.pop("description", None)
    return {**header, **schema}


def render_schema() -> str:
    return json.dumps(job_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    target = Path(argv[0]) if argv else SCHEMA_PATH
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(render_schema(), encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
