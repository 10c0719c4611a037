"""InfoNCE with in-batch negatives and hard negatives (sentence-transformers'
MultipleNegativesRankingLoss; with `symmetric`, MultipleNegativesSymmetricRankingLoss).

Each query is scored against every positive of the (global) batch and every hard negative:
its own positive is the right answer, everything else a negative. Similarities are cosine,
divided by the temperature. Symmetric adds the document -> query direction: each positive
against every query of the batch; the loss is the mean of both directions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.train.losses.gather import distributed, gather_rows


class ContrastiveLoss(nn.Module):
    def __init__(self, temperature: float = 0.05, symmetric: bool = False, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.symmetric = symmetric
        self.gather = gather

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query, positive: [B, D]; negatives: [N, D] (any number, shared by every query)."""
        query, positive = F.normalize(query, dim=-1), F.normalize(positive, dim=-1)
        across = self.gather and distributed()
        if negatives is None and across:  # every process joins every gather, with or without negatives
            negatives = positive.new_zeros(0, positive.shape[-1])
        all_positives, offset = gather_rows(positive) if across else (positive, 0)
        documents = all_positives
        if negatives is not None:
            negatives = F.normalize(negatives, dim=-1)
            all_negatives = gather_rows(negatives)[0] if across else negatives
            documents = torch.cat([all_positives, all_negatives])
        labels = torch.arange(query.shape[0], device=query.device) + offset
        loss = F.cross_entropy(query @ documents.T / self.temperature, labels)
        if self.symmetric:
            all_queries = gather_rows(query)[0] if across else query
            loss = (loss + F.cross_entropy(positive @ all_queries.T / self.temperature, labels)) / 2
        return loss
