"""The package layout is the architecture: spec -> registry -> data -> train -> outputs, with the
commands and shells (CLI, watcher, Slurm executor, HTTP API) on top. A module may import from its
own layer or below, never from a layer above it; this test reads every import (lazy ones included)
so that a shortcut upwards fails here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import runner

PACKAGE = Path(runner.__file__).parent

# Lower number = lower layer. Modules of one layer may use each other.
LAYERS: dict[str, int] = {
    "paths": 0, "fsutil": 0, "allocator": 0, "machine": 0, "units": 0,
    "spec": 1, "outputs": 1, "registry": 1,
    "data": 2,
    "train": 3, "lineage": 3,
    "pipeline": 4, "results": 4,
    "plan": 5, "scaffold": 5,
    "watch": 6, "slurm": 6,
    "api": 7,
    "commands": 8,
    "__main__": 9, "cli": 9,
}


def _part(module: str) -> str:
    """`runner.train.model` -> `train`; `runner` itself -> `runner`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("runner."):
            found.add(_part(node.module))
        elif isinstance(node, ast.Import):
            found.update(_part(a.name) for a in node.names if a.name.startswith("runner."))
    return found


def _modules() -> dict[str, list[Path]]:
    by_part: dict[str, list[Path]] = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if rel == Path("__init__.py"):
            continue
        by_part.setdefault(rel.parts[0].removesuffix(".py"), []).append(path)
    return by_part


def test_every_part_of_the_package_has_a_layer() -> None:
    assert sorted(set(_modules()) - set(LAYERS)) == []


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = []
    for part, paths in _modules().items():
        for path in paths:
            for target in _imports(path):
                if target in LAYERS and LAYERS[target] > LAYERS[part]:
                    upward.append(f"{path.relative_to(PACKAGE.parent)} imports runner.{target}")
    assert upward == []
