"""DPO: Direct Preference Optimization (Rafailov et al., 2023, arXiv:2305.18290), with the
conservative variant for noisy labels (Mitchell, 2023, "A note on DPO with noisy preferences").

When to use: the default for pairwise preference data after SFT. It needs a reference model (with
LoRA the base with the adapter switched off costs no extra memory). `beta` (0.1 is common) sets how
far the policy may move from the reference: lower lets it move further. `label_smoothing` > 0 (e.g.
0.1) assumes that share of the pairs is mislabelled and stops the loss from pushing margins to
infinity on them.

    h = beta * ((log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)))
    loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)
    reward(y) = beta * (log pi(y) - log ref(y))

with log-probabilities summed over the reply tokens (as in the paper and TRL's `sigmoid` loss).
"""

from __future__ import annotations

import torch.nn.functional as F

from runner.train.losses.preference.base import (
    BatchTotals,
    PairedLoss,
    PreferenceOutput,
    SequenceLogps,
    batch_mean,
    require_reference,
)


class DPOLoss(PairedLoss):
    def __init__(self, beta: float = 0.1, label_smoothing: float = 0.0) -> None:
        super().__init__()
        self.beta = beta
        self.label_smoothing = label_smoothing

    def forward(
        self, policy: SequenceLogps, reference: SequenceLogps | None = None, totals: BatchTotals | None = None
    ) -> PreferenceOutput:
        reference = require_reference("DPO", reference)
        chosen_ratio = policy.chosen - reference.chosen
        rejected_ratio = policy.rejected - reference.rejected
        h = self.beta * (chosen_ratio - rejected_ratio)
        losses = -F.logsigmoid(h) * (1 - self.label_smoothing) - F.logsigmoid(-h) * self.label_smoothing
        return PreferenceOutput(
            batch_mean(losses, totals), (self.beta * chosen_ratio).detach(), (self.beta * rejected_ratio).detach()
        )
