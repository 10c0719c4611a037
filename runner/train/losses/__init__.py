"""Embedding losses, one module each (sentence-transformers style: one class per loss).

Every loss takes ``(query, positive, negatives=None, scores=None)`` embeddings (not necessarily
normalised; cosine similarity is used) and returns a scalar; `MultiTaskLoss` also takes
``task=``. `build_loss` turns the job's [loss] section into one of them.
"""

from __future__ import annotations

from torch import nn

from runner.spec.model import LossSection
from runner.train.losses.contrastive import ContrastiveLoss
from runner.train.losses.cosent import CoSENTLoss
from runner.train.losses.gather import gather_rows
from runner.train.losses.matryoshka import MatryoshkaLoss
from runner.train.losses.multi_task import MultiTaskLoss

__all__ = ["CoSENTLoss", "ContrastiveLoss", "MatryoshkaLoss", "MultiTaskLoss", "build_loss", "gather_rows"]


def base_loss(kind: str, temperature: float, symmetric: bool, gather: bool = True) -> nn.Module:
    if kind == "contrastive":
        return ContrastiveLoss(temperature=temperature, symmetric=symmetric, gather=gather)
    if kind == "cosent":
        return CoSENTLoss(temperature=temperature, gather=gather)
    raise ValueError(f"unknown embedding loss {kind!r}")


def build_loss(loss: LossSection, loss_type: str, *, gather: bool = True) -> nn.Module:
    """The loss module of a job (`loss_type` is the spec's effective type, 'auto' resolved)."""
    if loss_type == "multi-task":
        return MultiTaskLoss(
            {task: base_loss(one.type, one.temperature, one.symmetric, gather) for task, one in loss.tasks.items()}
        )
    if loss_type == "matryoshka":
        return MatryoshkaLoss(
            base_loss(loss.base, loss.temperature, loss.symmetric, gather), loss.dims, loss.dim_weights or None
        )
    return base_loss(loss_type, loss.temperature, loss.symmetric, gather)
