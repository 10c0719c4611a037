"""CoSENT for scored pairs (sentence-transformers' CoSENTLoss, Su 2022).

For every two pairs (i, j) of the (global) batch whose gold scores say i is more similar than j,
the loss penalises cos(j) > cos(i):  log(1 + sum over s_i > s_j of exp((cos_j - cos_i) / t)).
Only the order of the scores matters, so any scale works (0-1, 0-5, labels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runner.train.losses.gather import distributed, gather_rows


class CoSENTLoss(nn.Module):
    def __init__(self, temperature: float = 0.05, gather: bool = True) -> None:
        super().__init__()
        self.temperature = temperature
        self.gather = gather

    def forward(
        self,
        query: torch.Tensor,
        positive: torch.Tensor,
        negatives: torch.Tensor | None = None,
        scores: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """query, positive: [B, D] (sentence1, sentence2); scores: [B] gold similarities."""
        if scores is None:
            raise ValueError("CoSENT needs a score per pair (scored-pairs data)")
        cosine = (F.normalize(query, dim=-1) * F.normalize(positive, dim=-1)).sum(-1)
        scores = scores.to(cosine.dtype)
        if self.gather and distributed():
            cosine = gather_rows(cosine[:, None])[0][:, 0]
            scores = gather_rows(scores[:, None])[0][:, 0].detach()
        # difference[i, j] = cos_j - cos_i, counted where pair i should be the more similar one
        difference = (cosine[None, :] - cosine[:, None]) / self.temperature
        ordered = scores[:, None] > scores[None, :]
        terms = torch.cat([difference.new_zeros(1), difference[ordered]])
        return torch.logsumexp(terms, dim=0)
