"""ORPO: Odds Ratio Preference Optimization (Hong, Lee and Thorne, 2024, "ORPO: Monolithic
Preference Optimization without Reference Model", arXiv:2403.07691).

When to use: preference tuning straight from a base or SFT model in one stage, with no reference
model (one forward pass per pair, no frozen copy): the SFT loss on the chosen reply plus a term that
raises the odds of the chosen reply over the rejected one. `beta` is the paper's lambda, the weight
of the odds-ratio term (0.1 in the paper); `sft_weight` scales the SFT term (1 in the paper).

    p(y) = exp(mean log pi(y))            (per-token average, as in the paper)
    log odds(y) = log p(y) - log(1 - p(y))
    loss = sft_weight * NLL(y_w) - beta * log sigmoid(log odds(y_w) - log odds(y_l))
    reward(y) = beta * mean log pi(y)

NLL(y_w) is the mean token cross-entropy over all chosen reply tokens of the batch (as TRL does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from runner.train.losses.preference.base import BatchTotals, PairedLoss, PreferenceOutput, SequenceLogps, batch_mean


class ORPOLoss(PairedLoss):
    needs_reference = False

    def __init__(self, beta: float = 0.1, sft_weight: float = 1.0) -> None:
        super().__init__()
        self.beta = beta
        self.sft_weight = sft_weight

    def forward(
        self, policy: SequenceLogps, reference: SequenceLogps | None = None, totals: BatchTotals | None = None
    ) -> PreferenceOutput:
        chosen, rejected = policy.mean()
        # log(1 - p) with p = exp(mean log-prob) < 1; log1p(-exp(x)) is the stable spelling
        log_odds = (chosen - rejected) - (torch.log1p(-torch.exp(chosen)) - torch.log1p(-torch.exp(rejected)))
        odds_term = F.logsigmoid(log_odds)
        own_tokens = policy.chosen_tokens.sum().clamp(min=1)
        tokens = own_tokens if totals is None else totals.chosen_tokens  # a part's share of the batch's NLL
        nll = -policy.chosen.sum() / (tokens.clamp(min=1) if isinstance(tokens, torch.Tensor) else max(tokens, 1))
        loss = self.sft_weight * nll - self.beta * batch_mean(odds_term, totals)
        return PreferenceOutput(
            loss,
            (self.beta * chosen).detach(),
            (self.beta * rejected).detach(),
            extra={"nll": (-policy.chosen.sum() / own_tokens).detach(), "log_odds_ratio": odds_term.mean().detach()},
        )
