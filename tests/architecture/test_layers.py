"""The package layout is the architecture: spec -> registry -> data -> train -> outputs, with the
commands and shells on top: the executors that run attempts (a local child process, then Slurm),
the watcher that drives them, the HTTP API, the CLI. A module may import from its own layer or
below, never from a layer above it, and no module depends on itself through others (an import
cycle); this test reads every import (lazy ones included) so that a shortcut upwards or around
fails here rather than in a review."""

from __future__ import annotations

import ast
from pathlib import Path

import runner

PACKAGE = Path(runner.__file__).parent

# Lower number = lower layer. Modules of one layer may use each other.
LAYERS: dict[str, int] = {
    "paths": 0,
    "fsutil": 0,
    "allocator": 0,
    "machine": 0,
    "units": 0,
    "spec": 1,
    "outputs": 1,
    "registry": 1,
    "data": 2,
    "train": 3,
    "lineage": 3,
    "pipeline": 4,
    "results": 4,
    "plan": 5,
    "scaffold": 5,
    "executors": 6,  # the executor interface, the local executor and the process that runs one attempt
    "slurm": 7,  # the Slurm executor and `runner run --executor slurm`
    "watch": 8,  # the daemon: it drives an executor (never the other way round)
    "api": 9,
    "commands": 10,
    "__main__": 11,
}


def _module_name(path: Path) -> str:
    parts = list(path.with_suffix("").relative_to(PACKAGE.parent).parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


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


def _module_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from runner.x import y` counts runner.x.y when y is a
    module, else runner.x), lazy imports included."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.level == 0
                and node.module.startswith("runner")
            ):
                found.update(
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                    for a in node.names
                )
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("runner"))
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph[target]))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"watch": {"slurm"}, "slurm": {"executors"}, "executors": set()}) == []


def test_no_module_imports_itself_through_others() -> None:
    assert _cycles(_module_graph()) == []


def test_the_watcher_and_slurm_do_not_import_each_other_both_ways() -> None:
    parts: dict[str, set[str]] = {}
    for module, targets in _module_graph().items():
        parts.setdefault(_part(module), set()).update(_part(t) for t in targets)
    assert "slurm" in parts["watch"] and "watch" not in parts["slurm"], "slurm is below the watcher"
    assert "watch" not in parts["executors"] and "slurm" not in parts["executors"]
