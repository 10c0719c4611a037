"""Helpers for the embedding tests: data rows and reading a run's outputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def pair_rows(n: int, start: int = 0) -> list[dict[str, str]]:
    """Distinct query/positive texts (no duplicates, so in-batch negatives are all true negatives)."""
    return [
        {"query": f"question {i} about item {i * 7}", "positive": f"item {i * 7} answers question {i}"}
        for i in range(start, start + n)
    ]


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def only_run(runs: Path, job: str = "tiny-embed") -> Path:
    from runner.outputs.runs import list_runs

    (run,) = list_runs(runs, job)
    return run


def metrics_of(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def status_of(run: Path) -> dict[str, Any]:
    return json.loads((run / "status.json").read_text())
