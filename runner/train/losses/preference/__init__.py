"""Preference losses, one module each: DPO, IPO, ORPO, SimPO (paired) and KTO (unpaired).

They work on per-sequence log-probabilities of the reply tokens, never on logits: the recipe
computes `SequenceLogps` (the summed log-probability of each reply and its token count) for the
policy and, where the loss needs one, for the reference model, and the loss turns them into a
scalar plus the implicit rewards the metrics report. Which normalisation a loss uses (the sum,
as in DPO and KTO, or the per-token mean, as in IPO, ORPO and SimPO) is the loss's own business.

`build_preference_loss` turns a job's [loss] section into one of them.
"""

from __future__ import annotations

from typing import Any

from runner.train.losses.preference.base import BatchTotals, PairedLoss, PreferenceOutput, SequenceLogps, UnpairedLogps
from runner.train.losses.preference.dpo import DPOLoss
from runner.train.losses.preference.ipo import IPOLoss
from runner.train.losses.preference.kto import KTOLoss
from runner.train.losses.preference.orpo import ORPOLoss
from runner.train.losses.preference.simpo import SimPOLoss

__all__ = [
    "PREFERENCE_LOSSES",
    "REFERENCE_FREE",
    "BatchTotals",
    "DPOLoss",
    "IPOLoss",
    "KTOLoss",
    "ORPOLoss",
    "PairedLoss",
    "PreferenceOutput",
    "SequenceLogps",
    "SimPOLoss",
    "UnpairedLogps",
    "build_preference_loss",
]

PREFERENCE_LOSSES = ("dpo", "ipo", "orpo", "simpo", "kto")
REFERENCE_FREE = frozenset({"orpo", "simpo"})  # no reference model: no second pass, no frozen copy


def build_preference_loss(
    kind: str,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    gamma: float = 0.5,
    sft_weight: float = 1.0,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Any:
    """The loss module for `[loss] type = kind` with the section's settings."""
    if kind == "dpo":
        return DPOLoss(beta=beta, label_smoothing=label_smoothing)
    if kind == "ipo":
        return IPOLoss(beta=beta)
    if kind == "orpo":
        return ORPOLoss(beta=beta, sft_weight=sft_weight)
    if kind == "simpo":
        return SimPOLoss(beta=beta, gamma=gamma, label_smoothing=label_smoothing)
    if kind == "kto":
        return KTOLoss(beta=beta, desirable_weight=desirable_weight, undesirable_weight=undesirable_weight)
    raise ValueError(f"unknown preference loss {kind!r}; expected one of {', '.join(PREFERENCE_LOSSES)}")
