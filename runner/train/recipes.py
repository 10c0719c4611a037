"""Which recipe trains a job: one table, keyed by model kind and loss family.

A recipe is a function `RunContext -> TrainOutcome` in its own module, imported only when a job
needs it. A new kind of training is one more recipe module (and its trainer in
runner.train.trainers), its loss types in `LOSS_FAMILIES` and one row in `RECIPES`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from runner.spec.model import JobSpec
from runner.train.model import ModelSetupError

if TYPE_CHECKING:
    from runner.train.context import RunContext, TrainOutcome


@dataclass(frozen=True)
class Recipe:
    """`module`:`function` trains a job; `distributed`: it is rank-aware (runs in torchrun workers,
    resources.nproc or resources.nodes above 1)."""

    name: str
    module: str
    function: str
    distributed: bool = False

    @property
    def target(self) -> str:
        """`module:function`, as the torchrun workers find it again (runner.train.launch)."""
        return f"{self.module}:{self.function}"

    def load(self) -> Callable[[RunContext], TrainOutcome]:
        """The recipe's function; a ModelSetupError when its module cannot be imported here (an
        optional dependency of this kind of training is missing)."""
        try:
            return getattr(importlib.import_module(self.module), self.function)
        except ImportError as exc:
            raise ModelSetupError(f"{self.name} jobs cannot be trained here: {exc}") from exc

    def __call__(self, ctx: RunContext) -> TrainOutcome:
        return self.load()(ctx)


CAUSAL_LM = Recipe("causal-lm", "runner.train.causal_lm", "train_causal_lm", distributed=True)
EMBEDDING = Recipe("embedding", "runner.train.embedding", "train_embedding", distributed=True)
PREFERENCE = Recipe("preference", "runner.train.preference", "train_preference", distributed=True)

# loss type (after 'auto' is resolved) -> the family of training it belongs to
LOSS_FAMILIES: dict[str, str] = {
    "causal-lm": "causal-lm",
    "contrastive": "embedding",
    "matryoshka": "embedding",
    "cosent": "embedding",
    "multi-task": "embedding",
    "dpo": "preference",
    "ipo": "preference",
    "orpo": "preference",
    "simpo": "preference",
    "kto": "preference",
}

RECIPES: dict[tuple[str, str], Recipe] = {
    ("causal-lm", "causal-lm"): CAUSAL_LM,
    ("causal-lm", "preference"): PREFERENCE,
    ("embedding", "embedding"): EMBEDDING,
    ("image-text-embedding", "embedding"): EMBEDDING,
}


def recipe_for(spec: JobSpec) -> Recipe:
    """The recipe that trains `spec`, or a ModelSetupError naming the combination that has none."""
    loss = spec.loss_type
    recipe = RECIPES.get((spec.model.kind, LOSS_FAMILIES.get(loss, loss)))
    if recipe is None:
        raise ModelSetupError(f"no training recipe for model.kind '{spec.model.kind}' with loss.type '{loss}'")
    return recipe
