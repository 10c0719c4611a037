"""What preference losses take and give: per-sequence log-probabilities in, a loss and rewards out."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass(frozen=True)
class SequenceLogps:
    """Log-probabilities of the chosen and rejected replies of a batch of pairs.

    `chosen`, `rejected`: [B], the sum over each reply's tokens of log p(token | everything before);
    `chosen_tokens`, `rejected_tokens`: [B], how many reply tokens each sum covers.
    """

    chosen: torch.Tensor
    rejected: torch.Tensor
    chosen_tokens: torch.Tensor
    rejected_tokens: torch.Tensor

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token average log-probabilities (chosen, rejected): the length-normalised score."""
        return self.chosen / self.chosen_tokens.clamp(min=1), self.rejected / self.rejected_tokens.clamp(min=1)


@dataclass(frozen=True)
class UnpairedLogps:
    """Log-probabilities of single completions, each labelled desirable or not (KTO's data).

    `logps`, `tokens`: [B] summed log-probability and token count of each completion;
    `desirable`: [B] bool.
    """

    logps: torch.Tensor
    tokens: torch.Tensor
    desirable: torch.Tensor


@dataclass(frozen=True)
class BatchTotals:
    """What a loss averages over when a batch is computed in parts (to bound memory): the whole
    batch's number of pairs (KTO: completions) and of chosen reply tokens. Each part's loss, given
    the batch's totals, is its share of the batch's loss: the parts' losses, and their gradients,
    add up to those of the whole batch. Without totals a loss averages over what it is given."""

    items: int
    chosen_tokens: int | torch.Tensor = 0


def batch_mean(losses: torch.Tensor, totals: BatchTotals | None) -> torch.Tensor:
    """The mean of per-item losses, or their share of the batch's mean when `totals` is given."""
    return losses.mean() if totals is None else losses.sum() / totals.items


@dataclass(frozen=True)
class PreferenceOutput:
    """The loss (a scalar to backpropagate) and the implicit rewards, detached, for the metrics.

    Paired losses give one chosen and one rejected reward per pair; KTO gives the rewards of its
    desirable and of its undesirable completions (the two may differ in length, either may be empty).
    `extra`: loss-specific scalars worth logging (ORPO's NLL and log-odds ratio, KTO's KL estimate).
    """

    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)


class PairedLoss(nn.Module):
    """A loss over (chosen, rejected) pairs. `needs_reference` tells the recipe whether to compute
    the reference model's log-probabilities (reference-free losses skip that pass entirely)."""

    needs_reference: bool = True

    def forward(
        self, policy: SequenceLogps, reference: SequenceLogps | None = None, totals: BatchTotals | None = None
    ) -> PreferenceOutput:
        raise NotImplementedError


def require_reference(name: str, reference: SequenceLogps | None) -> SequenceLogps:
    if reference is None:
        raise ValueError(f"{name} compares the policy with a reference model: pass the reference log-probabilities")
    return reference
