"""Multi-task training (as in Jina Embeddings V4): every batch holds examples of one task, and
that task's loss scores it. The model side of the routing (one LoRA adapter per task, chosen
per batch with peft's `set_adapter`) is `Embedder.set_task`; the trainer calls both.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn


class MultiTaskLoss(nn.Module):
    def __init__(self, losses: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))

    @property
    def tasks(self) -> list[str]:
        return list(self.losses.keys())

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
        *,
        task: str,
    ) -> torch.Tensor:
        if task not in self.losses:
            raise KeyError(f"no loss for task {task!r}; tasks: {', '.join(self.tasks)}")
        return self.losses[task](query, positive, negatives, scores)
