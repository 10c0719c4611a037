"""Matryoshka representation learning (sentence-transformers' MatryoshkaLoss, Kusupati et al. 2022).

The base loss is applied to the embeddings truncated to each of `dims` (descending), and the
results are summed with `weights`, so that the first d coordinates of a vector are a good
embedding on their own. The model runs once; truncation is a slice (the base losses normalise).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class MatryoshkaLoss(nn.Module):
    def __init__(self, base: nn.Module, dims: Sequence[int], weights: Sequence[float] | None = None) -> None:
        super().__init__()
        if not dims:
            raise ValueError("matryoshka needs at least one dimension")
        if weights is not None and len(weights) != len(dims):
            raise ValueError(f"one weight per dimension: {len(dims)} dims, {len(weights)} weights")
        self.base = base
        self.dims = list(dims)
        self.weights = list(weights) if weights else [1.0] * len(dims)

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        total = query.new_zeros(())
        for dim, weight in zip(self.dims, self.weights, strict=True):
            truncated = None if negatives is None else negatives[..., :dim]
            total = total + weight * self.base(query[..., :dim], positive[..., :dim], truncated, scores)
        return total
