"""The runner depends on transformers' Trainer in one audited place (runner.train.trainers.base).

Every private Trainer method the runner overrides is listed there with the parameters it had in
the transformers version it was checked against; these tests fail loudly when transformers changes
one of them, stops calling it, or when a trainer anywhere else overrides a private method.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import transformers
from transformers import Trainer, TrainingArguments

import runner
import runner.train
from runner.train.trainers import base
from runner.train.trainers.base import CHECKED_AGAINST, PRIVATE_OVERRIDES, RunTrainer

PACKAGE = Path(runner.__file__).parent
ROOT = PACKAGE.parent


def _runner_trainers() -> list[type]:
    """Every Trainer subclass defined in runner.train (its modules imported)."""
    for module in pkgutil.walk_packages(runner.train.__path__, "runner.train."):
        importlib.import_module(module.name)
    found, todo = [], [Trainer]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("runner."):
                found.append(sub)
    return found


def _overrides(cls: type) -> dict[str, object]:
    """Methods `cls` defines itself that the Trainer also has (constructors aside)."""
    return {
        name: member
        for name, member in vars(cls).items()
        if callable(member) and name != "__init__" and hasattr(Trainer, name)
    }


def test_the_runner_has_a_trainer_for_each_model_kind() -> None:
    names = {cls.__name__ for cls in _runner_trainers()}
    assert {"RunTrainer", "CausalTrainer", "EmbeddingTrainer"} <= names


def test_every_private_trainer_method_overridden_is_listed_and_only_in_the_base_trainer() -> None:
    unlisted = []
    for cls in _runner_trainers():
        for name in _overrides(cls):
            if (
                name.startswith("_")
                and not name.startswith("__")
                and (cls is not RunTrainer or name not in PRIVATE_OVERRIDES)
            ):
                unlisted.append(f"{cls.__module__}.{cls.__qualname__}.{name}")
    assert unlisted == [], (
        "private Trainer methods may be overridden only in runner.train.trainers.base, "
        "listed in PRIVATE_OVERRIDES and its docstring"
    )
    assert set(PRIVATE_OVERRIDES) == {n for n in _overrides(RunTrainer) if n.startswith("_")}


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_each_private_method_overridden_keeps_the_signature_it_was_checked_against(name: str) -> None:
    expected, _caller = PRIVATE_OVERRIDES[name]
    found = tuple(inspect.signature(getattr(Trainer, name)).parameters)
    assert found == expected, (
        f"Trainer.{name} takes {found} in transformers {transformers.__version__}, but the override in "
        f"runner.train.trainers.base was written for {expected} (transformers {CHECKED_AGAINST}): "
        "read the new Trainer code, adapt the override, then update PRIVATE_OVERRIDES and CHECKED_AGAINST"
    )
    assert tuple(inspect.signature(getattr(RunTrainer, name)).parameters) == expected
    assert name in (base.__doc__ or ""), f"{name} is not described in the module docstring"


@pytest.mark.parametrize("name", sorted(PRIVATE_OVERRIDES))
def test_the_trainer_still_calls_each_private_method_overridden(name: str) -> None:
    _params, caller = PRIVATE_OVERRIDES[name]
    source = inspect.getsource(getattr(Trainer, caller))
    assert f"self.{name}(" in source, (
        f"Trainer.{caller} no longer calls self.{name}(...) in transformers {transformers.__version__}: "
        f"the override in runner.train.trainers.base would be dead code (checked against {CHECKED_AGAINST})"
    )


def test_every_public_trainer_method_overridden_takes_the_trainers_parameters() -> None:
    differing = []
    for cls in _runner_trainers():
        for name, member in _overrides(cls).items():
            ours = tuple(inspect.signature(member).parameters)  # type: ignore[arg-type]
            theirs = tuple(inspect.signature(getattr(Trainer, name)).parameters)
            if ours != theirs:
                differing.append(f"{cls.__qualname__}.{name}{ours} vs Trainer.{name}{theirs}")
    assert differing == []


def test_only_the_base_trainer_imports_the_trainer_class() -> None:
    importers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("transformers")
                and any(alias.name == "Trainer" for alias in node.names)
            ) or (isinstance(node, ast.Attribute) and node.attr == "Trainer"):
                importers.append(str(path.relative_to(ROOT)))
    assert importers == ["runner/train/trainers/base.py"]


def test_no_setting_is_assigned_onto_a_trainer_after_it_is_built() -> None:
    """Settings come in through the constructor; `trainer.x = ...` outside a trainer's own code is a patch."""
    patched = []
    for path in (PACKAGE / "train").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else ([node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
            )
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and "trainer" in target.value.id.lower()
                ):
                    patched.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert patched == []


def test_the_stop_request_and_the_run_context_load_without_the_trainer() -> None:
    code = (
        "import sys, runner.train.stop, runner.train.context, runner.train.recipes; "
        "print('transformers.trainer' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def _train_imports() -> dict[str, set[str]]:
    """runner.train module -> the runner.train modules it imports (lazy and TYPE_CHECKING ones too)."""
    graph: dict[str, set[str]] = {}
    for path in (PACKAGE / "train").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runner.train"):
                found.add(node.module)
                found.update(f"{node.module}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("runner.train"))
    return {name: {t for t in targets if t in graph and t != name} for name, targets in graph.items()}


def test_no_two_modules_of_the_training_package_import_each_other() -> None:
    graph = _train_imports()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for target in sorted(graph[node]):
            if target in path:
                cycles.append(" -> ".join([*path[path.index(target) :], target]))
            elif len(path) < 12:
                visit(target, [*path, target])

    for start in sorted(graph):
        visit(start, [start])
    # a package's __init__ importing its own modules is not a cycle
    cycles = [
        c
        for c in cycles
        if not any(
            c.startswith(p + " ->") and f"-> {p}." in c
            for p in ("runner.train", "runner.train.trainers", "runner.train.losses")
        )
    ]
    assert cycles == []


def test_a_job_that_asks_for_fsdp_stops_at_its_first_step_when_the_model_is_only_replicated(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from runner.train.model import ModelSetupError
    from runner.train.trainers.causal import CausalTrainer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    trainer = CausalTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
        require_sharded=True,
    )
    batch = {"input_ids": torch.tensor([[1, 2, 3]]), "labels": torch.tensor([[1, 2, 3]])}
    with pytest.raises(ModelSetupError, match="it is not sharded here"):
        trainer.training_step(model, batch)


def test_a_trainers_own_step_metrics_reach_the_metrics_log(
    write_job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """How a new kind of trainer reports what it measures per step (say, preference rewards): it
    adds them to the logs in `log`, a public method, and they land in metrics.jsonl."""
    import json

    import runner.train.causal_lm as recipe
    from runner.commands import main
    from runner.outputs.runs import list_runs

    class Measuring(recipe.CausalTrainer):  # type: ignore[misc]
        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs:
                logs = {**logs, "rewards/margin": 0.25 * self.state.global_step}
            super().log(logs, start_time)

    monkeypatch.setattr(recipe, "CausalTrainer", Measuring)
    job = write_job(train={"max_steps": 2})
    assert main(["run", str(job), "--runs-dir", str(tmp_path / "runs")]) == 0
    (run,) = list_runs(tmp_path / "runs", "tiny")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [(m["step"], m["rewards/margin"]) for m in lines if "loss" in m] == [(1, 0.25), (2, 0.5)]
