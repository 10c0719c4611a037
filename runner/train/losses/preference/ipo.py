"""IPO: Identity Preference Optimisation (Azar et al., 2023, "A General Theoretical Paradigm to
Understand Learning from Human Preferences", arXiv:2310.12036).

When to use: instead of DPO when the preferences are near-deterministic (one reply always wins),
where DPO over-fits by pushing the margin without bound; IPO regresses the margin to a finite
target 1 / (2 beta) instead. Needs a reference model. Larger `beta` means a smaller target margin,
so a policy closer to the reference.

    h = (mean log pi(y_w) - mean log ref(y_w)) - (mean log pi(y_l) - mean log ref(y_l))
    loss = (h - 1 / (2 beta))^2
    reward(y) = beta * (mean log pi(y) - mean log ref(y))

with per-token *average* log-probabilities, as TRL's `ipo` loss does (the margin is then in
per-token units, so the target does not depend on reply lengths).
"""

from __future__ import annotations

from runner.train.losses.preference.base import (
    BatchTotals,
    PairedLoss,
    PreferenceOutput,
    SequenceLogps,
    batch_mean,
    require_reference,
)


class IPOLoss(PairedLoss):
    def __init__(self, beta: float = 0.1) -> None:
        super().__init__()
        self.beta = beta

    def forward(
        self, policy: SequenceLogps, reference: SequenceLogps | None = None, totals: BatchTotals | None = None
    ) -> PreferenceOutput:
        reference = require_reference("IPO", reference)
        policy_chosen, policy_rejected = policy.mean()
        ref_chosen, ref_rejected = reference.mean()
        chosen_ratio, rejected_ratio = policy_chosen - ref_chosen, policy_rejected - ref_rejected
        losses = (chosen_ratio - rejected_ratio - 1 / (2 * self.beta)) ** 2
        return PreferenceOutput(
            batch_mean(losses, totals), (self.beta * chosen_ratio).detach(), (self.beta * rejected_ratio).detach()
        )
