"""SimPO: Simple Preference Optimization with a reference-free reward (Meng, Xia and Chen, 2024,
arXiv:2405.14734).

When to use: like DPO but without a reference model (half the forward passes, no frozen copy),
with the length-normalised log-probability as the reward, which keeps the policy from favouring
long replies. `beta` scales the reward (the paper uses 2.0-2.5; larger than DPO's because the
reward is per token); `gamma` is the target reward margin (0.5-1.5 in the paper);
`label_smoothing` as in conservative DPO.

    h = beta * (mean log pi(y_w) - mean log pi(y_l)) - gamma
    loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)
    reward(y) = beta * mean log pi(y)
"""

from __future__ import annotations

import torch.nn.functional as F

from runner.train.losses.preference.base import BatchTotals, PairedLoss, PreferenceOutput, SequenceLogps, batch_mean


class SimPOLoss(PairedLoss):
    needs_reference = False

    def __init__(self, beta: float = 2.0, gamma: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.beta = beta
        self.gamma = gamma
        self.label_smoothing = label_smoothing

    def forward(
        self, policy: SequenceLogps, reference: SequenceLogps | None = None, totals: BatchTotals | None = None
    ) -> PreferenceOutput:
        chosen, rejected = policy.mean()
        h = self.beta * (chosen - rejected) - self.gamma
        losses = -F.logsigmoid(h) * (1 - self.label_smoothing) - F.logsigmoid(-h) * self.label_smoothing
        return PreferenceOutput(
            batch_mean(losses, totals), (self.beta * chosen).detach(), (self.beta * rejected).detach()
        )
