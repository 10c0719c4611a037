"""The pipeline picks a job's recipe from one table, keyed by model kind and loss family."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from runner.spec.model import JobSpec
from runner.train.model import ModelSetupError
from runner.train.recipes import CAUSAL_LM, EMBEDDING, LOSS_FAMILIES, RECIPES, Recipe, recipe_for


def _spec(kind: str, loss: str = "auto") -> JobSpec:
    return JobSpec.model_validate(
        {"model": {"source": "local:m", "kind": kind}, "data": {"train": "t.jsonl"}, "loss": {"type": loss}}
    )


@pytest.mark.parametrize(
    ("kind", "loss", "recipe"),
    [
        ("causal-lm", "auto", CAUSAL_LM),
        ("causal-lm", "causal-lm", CAUSAL_LM),
        ("embedding", "auto", EMBEDDING),
        ("embedding", "matryoshka", EMBEDDING),
        ("embedding", "cosent", EMBEDDING),
        ("image-text-embedding", "contrastive", EMBEDDING),
        ("embedding", "multi-task", EMBEDDING),
    ],
)
def test_each_model_kind_and_loss_trains_with_its_recipe(kind: str, loss: str, recipe: Recipe) -> None:
    assert recipe_for(_spec(kind, loss)) is recipe


def test_a_combination_without_a_recipe_is_a_config_error_naming_it() -> None:
    with pytest.raises(
        ModelSetupError, match=r"no training recipe for model.kind 'causal-lm' with loss.type 'contrastive'"
    ):
        recipe_for(_spec("causal-lm", "contrastive"))


def test_every_recipe_in_the_table_loads_and_every_loss_type_has_a_family() -> None:
    from typing import get_args

    from runner.spec.model import LossType

    assert set(get_args(LossType)) - {"auto"} == set(LOSS_FAMILIES)
    for recipe in set(RECIPES.values()):
        assert callable(recipe.load()) and recipe.load().__name__ == recipe.function


def test_a_recipe_that_cannot_be_imported_is_a_config_error() -> None:
    broken = Recipe("future", "runner.train.no_such_recipe", "train")
    with pytest.raises(ModelSetupError, match="future jobs cannot be trained here: No module named"):
        broken.load()


def test_several_processes_need_a_rank_aware_recipe(tmp_path: Path) -> None:
    from runner.train.launch import launch_workers

    spec = _spec("causal-lm")
    ctx = SimpleNamespace(job=SimpleNamespace(spec=spec), run_dir=tmp_path)
    single = Recipe("single", CAUSAL_LM.module, CAUSAL_LM.function, distributed=False)
    with pytest.raises(ModelSetupError, match=r"resources.nproc > 1 is not supported for model.kind 'causal-lm'"):
        launch_workers(ctx, single)  # type: ignore[arg-type]
    assert not (tmp_path / ".workers").exists()
