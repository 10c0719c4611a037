"""Each loss against a hand-written float64 reference (plain Python loops, no torch)."""

from __future__ import annotations

import math

import pytest
import torch

from runner.spec.model import LossSection
from runner.train.losses import ContrastiveLoss, CoSENTLoss, MatryoshkaLoss, MultiTaskLoss, build_loss

Vector = list[float]


def _unit(v: Vector) -> Vector:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: Vector, b: Vector) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def _cross_entropy(logits: list[float], target: int) -> float:
    top = max(logits)
    return top + math.log(sum(math.exp(x - top) for x in logits)) - logits[target]


def info_nce_reference(q: list[Vector], p: list[Vector], n: list[Vector], t: float, symmetric: bool) -> float:
    queries, positives, negatives = [_unit(v) for v in q], [_unit(v) for v in p], [_unit(v) for v in n]
    documents = positives + negatives
    forward = sum(_cross_entropy([_dot(qi, d) / t for d in documents], i) for i, qi in enumerate(queries)) / len(q)
    if not symmetric:
        return forward
    backward = sum(_cross_entropy([_dot(pi, qj) / t for qj in queries], i) for i, pi in enumerate(positives)) / len(p)
    return (forward + backward) / 2


def cosent_reference(a: list[Vector], b: list[Vector], scores: list[float], t: float) -> float:
    cos = [_dot(_unit(x), _unit(y)) for x, y in zip(a, b, strict=True)]
    terms = [0.0] + [(cos[j] - cos[i]) / t for i in range(len(cos)) for j in range(len(cos)) if scores[i] > scores[j]]
    top = max(terms)
    return top + math.log(sum(math.exp(x - top) for x in terms))


def _batch(seed: int, b: int, n: int, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g)
    p = q + 0.8 * torch.randn(b, d, generator=g)  # related, so the loss is neither 0 nor log(b)
    return q, p, torch.randn(n, d, generator=g)


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize(("seed", "b", "n", "d", "t"), [(0, 8, 0, 16, 0.05), (1, 5, 7, 12, 0.05), (2, 16, 3, 32, 0.2)])
def test_info_nce_with_hard_negatives_matches_float64_reference(seed, b, n, d, t, symmetric) -> None:
    q, p, negatives = _batch(seed, b, n, d)
    loss = ContrastiveLoss(temperature=t, symmetric=symmetric)(q, p, negatives if n else None)
    expected = info_nce_reference(q.tolist(), p.tolist(), negatives.tolist(), t, symmetric)
    assert abs(float(loss) - expected) < 1e-5


def test_hard_negatives_change_the_loss_and_scale_does_not() -> None:
    q, p, negatives = _batch(3, 6, 4, 8)
    loss = ContrastiveLoss()
    assert float(loss(q, p, negatives)) > float(loss(q, p)) + 1e-3  # extra wrong answers to rank below
    assert abs(float(loss(3 * q, 0.5 * p, 2 * negatives)) - float(loss(q, p, negatives))) < 1e-5  # cosine


@pytest.mark.parametrize("seed", [0, 1])
def test_cosent_matches_float64_reference(seed: int) -> None:
    a, b, _ = _batch(seed, 9, 0, 16)
    scores = torch.tensor([1.0, 0.4, 0.0, 1.0, 0.4, 0.0, 0.7, 0.7, 0.2])  # ties are never compared
    loss = CoSENTLoss(temperature=0.05)(a, b, None, scores)
    assert abs(float(loss) - cosent_reference(a.tolist(), b.tolist(), scores.tolist(), 0.05)) < 1e-5


def test_cosent_rewards_the_right_order() -> None:
    a = torch.eye(3)
    b = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, -1.0]])  # cosines 1, 0.707, -1
    right, wrong = torch.tensor([2.0, 1.0, 0.0]), torch.tensor([0.0, 1.0, 2.0])
    cosent = CoSENTLoss()
    assert float(cosent(a, b, None, right)) < 0.01 and float(cosent(a, b, None, wrong)) > 30


@pytest.mark.parametrize("base", ["contrastive", "cosent"])
def test_matryoshka_is_the_weighted_sum_of_base_losses_at_each_dim(base: str) -> None:
    q, p, negatives = _batch(4, 8, 5, 32)
    dims, weights = [32, 16, 8, 4], [1.0, 0.5, 0.25, 2.0]
    scores = torch.linspace(0, 1, 8)
    inner = ContrastiveLoss(symmetric=True) if base == "contrastive" else CoSENTLoss()
    loss = MatryoshkaLoss(inner, dims, weights)(q, p, negatives if base == "contrastive" else None, scores)
    if base == "contrastive":
        parts = [
            info_nce_reference(q[:, :d].tolist(), p[:, :d].tolist(), negatives[:, :d].tolist(), 0.05, True)
            for d in dims
        ]
    else:
        parts = [cosent_reference(q[:, :d].tolist(), p[:, :d].tolist(), scores.tolist(), 0.05) for d in dims]
    assert abs(float(loss) - sum(w * x for w, x in zip(weights, parts, strict=True))) < 1e-4
    assert abs(parts[0] - parts[-1]) > 1e-3  # the dims really differ, so a wrong slice would show


def test_multi_task_loss_uses_the_batch_task_loss() -> None:
    q, p, _ = _batch(5, 6, 0, 8)
    multi = MultiTaskLoss({"sharp": ContrastiveLoss(temperature=0.05), "soft": ContrastiveLoss(temperature=1.0)})
    assert float(multi(q, p, task="sharp")) == pytest.approx(float(ContrastiveLoss(temperature=0.05)(q, p)))
    assert float(multi(q, p, task="soft")) == pytest.approx(float(ContrastiveLoss(temperature=1.0)(q, p)))
    with pytest.raises(KeyError, match="no loss for task 'other'"):
        multi(q, p, task="other")


def test_build_loss_follows_the_spec() -> None:
    loss = build_loss(LossSection(type="matryoshka", base="cosent", dims=[8, 4], temperature=0.1), "matryoshka")
    assert isinstance(loss, MatryoshkaLoss) and isinstance(loss.base, CoSENTLoss) and loss.weights == [1.0, 1.0]
    assert loss.base.temperature == 0.1
    multi = build_loss(
        LossSection(type="multi-task", tasks={"a": {"type": "cosent"}, "b": {"symmetric": True}}), "multi-task"
    )
    assert isinstance(multi, MultiTaskLoss) and multi.tasks == ["a", "b"]
    assert isinstance(multi.losses["b"], ContrastiveLoss) and multi.losses["b"].symmetric
