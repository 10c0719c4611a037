"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al., 2024, "KTO: Model Alignment as Prospect
Theoretic Optimization", arXiv:2402.01306).

When to use: the data says only whether each reply is good or bad (thumbs up/down), with no pairs,
or the two kinds are unbalanced. Needs a reference model. `desirable_weight` and
`undesirable_weight` balance the two kinds: the paper keeps
desirable_weight * n_desirable / (undesirable_weight * n_undesirable) between 1 and 4/3.

    r(y) = log pi(y) - log ref(y)                     (summed over the reply tokens)
    z = max(0, mean over mismatched (x, y') of r)     (the KL reference point, no gradient)
    loss(desirable y)   = desirable_weight   * (1 - sigmoid(beta * (r(y) - z)))
    loss(undesirable y) = undesirable_weight * (1 - sigmoid(beta * (z - r(y))))
    loss = mean over the batch;  reward(y) = beta * r(y)

`z` is estimated, as in the paper and TRL, from completions paired with the prompt of another
example in the batch; the recipe computes those log-probabilities and passes their ratio here.
"""

from __future__ import annotations

import torch
from torch import nn

from runner.train.losses.preference.base import BatchTotals, PreferenceOutput, UnpairedLogps, batch_mean


class KTOLoss(nn.Module):
    needs_reference = True

    def __init__(self, beta: float = 0.1, desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.desirable_weight = desirable_weight
        self.undesirable_weight = undesirable_weight

    def forward(
        self, policy: UnpairedLogps, reference: UnpairedLogps, kl_ratio: torch.Tensor, totals: BatchTotals | None = None
    ) -> PreferenceOutput:
        """`kl_ratio`: [M] policy minus reference log-probabilities of mismatched completions (of the
        whole batch, also when this is one part of it)."""
        z = kl_ratio.mean().clamp(min=0).detach()
        ratio = policy.logps - reference.logps
        desirable = policy.desirable.bool()
        losses = torch.where(
            desirable,
            self.desirable_weight * (1 - torch.sigmoid(self.beta * (ratio - z))),
            self.undesirable_weight * (1 - torch.sigmoid(self.beta * (z - ratio))),
        )
        rewards = (self.beta * ratio).detach()
        return PreferenceOutput(batch_mean(losses, totals), rewards[desirable], rewards[~desirable], extra={"kl": z})
