"""Each preference loss against a float64 reference written as plain Python loops (no torch), on a
fixed batch: the loss within 1e-6 and its gradient with respect to every log-probability within
1e-5 (central differences of the reference)."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from runner.train.losses.preference import (
    DPOLoss,
    IPOLoss,
    KTOLoss,
    ORPOLoss,
    SequenceLogps,
    SimPOLoss,
    UnpairedLogps,
    build_preference_loss,
)

# one fixed batch of 5 pairs: summed reply log-probabilities and reply lengths
POLICY_CHOSEN = [-12.5, -30.25, -7.0, -55.5, -18.0]
POLICY_REJECTED = [-14.0, -28.5, -9.75, -60.0, -17.25]
REF_CHOSEN = [-13.0, -29.0, -8.5, -56.0, -18.5]
REF_REJECTED = [-13.5, -29.5, -9.0, -58.0, -18.0]
CHOSEN_TOKENS = [10, 25, 4, 40, 12]
REJECTED_TOKENS = [12, 20, 6, 44, 11]


def _logsigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


def _sigmoid(x: float) -> float:
    return math.exp(_logsigmoid(x))


def dpo_ref(pc, pr, rc, rr, beta=0.1, eps=0.0) -> float:
    total = 0.0
    for i in range(len(pc)):
        h = beta * ((pc[i] - rc[i]) - (pr[i] - rr[i]))
        total += -(1 - eps) * _logsigmoid(h) - eps * _logsigmoid(-h)
    return total / len(pc)


def ipo_ref(pc, pr, rc, rr, beta=0.1) -> float:
    total = 0.0
    for i in range(len(pc)):
        h = (pc[i] / CHOSEN_TOKENS[i] - rc[i] / CHOSEN_TOKENS[i]) - (
            pr[i] / REJECTED_TOKENS[i] - rr[i] / REJECTED_TOKENS[i]
        )
        total += (h - 1 / (2 * beta)) ** 2
    return total / len(pc)


def orpo_ref(pc, pr, rc, rr, beta=0.1, sft_weight=1.0) -> float:
    odds = 0.0
    for i in range(len(pc)):
        mc, mr = pc[i] / CHOSEN_TOKENS[i], pr[i] / REJECTED_TOKENS[i]
        log_odds_c = mc - math.log(1 - math.exp(mc))
        log_odds_r = mr - math.log(1 - math.exp(mr))
        odds += _logsigmoid(log_odds_c - log_odds_r)
    nll = -sum(pc) / sum(CHOSEN_TOKENS)
    return sft_weight * nll - beta * odds / len(pc)


def simpo_ref(pc, pr, rc, rr, beta=2.0, gamma=0.5, eps=0.0) -> float:
    total = 0.0
    for i in range(len(pc)):
        h = beta * (pc[i] / CHOSEN_TOKENS[i] - pr[i] / REJECTED_TOKENS[i]) - gamma
        total += -(1 - eps) * _logsigmoid(h) - eps * _logsigmoid(-h)
    return total / len(pc)


def _paired(values: list[list[float]]) -> tuple[SequenceLogps, SequenceLogps]:
    pc, pr = (torch.tensor(v, dtype=torch.float32, requires_grad=True) for v in values[:2])
    rc, rr = (torch.tensor(v, dtype=torch.float32) for v in values[2:])  # computed without gradient
    ct, rt = torch.tensor(CHOSEN_TOKENS), torch.tensor(REJECTED_TOKENS)
    return SequenceLogps(pc, pr, ct, rt), SequenceLogps(rc, rr, ct, rt)


def _numeric_gradient(reference: Callable[..., float], values: list[list[float]], h: float = 1e-6) -> list[list[float]]:
    grads = []
    for a in range(len(values)):
        row = []
        for i in range(len(values[a])):
            up = [list(v) for v in values]
            down = [list(v) for v in values]
            up[a][i] += h
            down[a][i] -= h
            row.append((reference(*up) - reference(*down)) / (2 * h))
        grads.append(row)
    return grads


CASES = [
    ("dpo", DPOLoss(beta=0.1), dpo_ref),
    ("dpo-conservative", DPOLoss(beta=0.3, label_smoothing=0.1), lambda *v: dpo_ref(*v, beta=0.3, eps=0.1)),
    ("ipo", IPOLoss(beta=0.1), ipo_ref),
    ("ipo-beta-1", IPOLoss(beta=1.0), lambda *v: ipo_ref(*v, beta=1.0)),
    ("orpo", ORPOLoss(beta=0.1), orpo_ref),
    ("orpo-weighted", ORPOLoss(beta=0.25, sft_weight=0.5), lambda *v: orpo_ref(*v, beta=0.25, sft_weight=0.5)),
    ("simpo", SimPOLoss(beta=2.0, gamma=0.5), simpo_ref),
    (
        "simpo-smoothed",
        SimPOLoss(beta=2.5, gamma=1.0, label_smoothing=0.1),
        lambda *v: simpo_ref(*v, beta=2.5, gamma=1.0, eps=0.1),
    ),
]


@pytest.mark.parametrize(("name", "loss", "reference"), CASES, ids=[c[0] for c in CASES])
def test_each_paired_loss_and_its_gradient_match_a_float64_reference(name, loss, reference) -> None:
    values = [POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED]
    policy, ref = _paired(values)
    out = loss(policy, ref if loss.needs_reference else None)
    assert abs(float(out.loss.detach()) - reference(*values)) < 1e-6
    out.loss.backward()
    expected = _numeric_gradient(reference, values)
    for got, want in zip([policy.chosen, policy.rejected], expected[:2], strict=True):
        assert max(abs(g - w) for g, w in zip(got.grad.tolist(), want, strict=True)) < 1e-5
    if not loss.needs_reference:  # a reference-free loss does not depend on the reference at all
        assert all(abs(g) < 1e-12 for row in expected[2:] for g in row)


def test_dpo_rewards_and_margins_are_beta_times_the_log_ratio() -> None:
    policy, ref = _paired([POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED])
    out = DPOLoss(beta=0.2)(policy, ref)
    for i in range(5):
        assert abs(float(out.chosen_rewards[i]) - 0.2 * (POLICY_CHOSEN[i] - REF_CHOSEN[i])) < 1e-5
        assert abs(float(out.rejected_rewards[i]) - 0.2 * (POLICY_REJECTED[i] - REF_REJECTED[i])) < 1e-5
    assert not out.chosen_rewards.requires_grad


def test_a_policy_equal_to_its_reference_has_dpo_loss_log_2_and_zero_rewards() -> None:
    policy, _ = _paired([POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED])
    out = DPOLoss(beta=0.1)(policy, policy)
    assert abs(float(out.loss.detach()) - math.log(2)) < 1e-6
    assert float(out.chosen_rewards.abs().max()) == 0.0


def test_losses_that_need_a_reference_refuse_to_run_without_one() -> None:
    policy, _ = _paired([POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED])
    for loss in (DPOLoss(), IPOLoss()):
        with pytest.raises(ValueError, match="reference"):
            loss(policy, None)


# KTO: 6 completions, desirable or not, and the mismatched completions behind the KL estimate
KTO_POLICY = [-10.0, -22.5, -8.25, -31.0, -15.5, -12.0]
KTO_REF = [-11.0, -22.0, -9.0, -30.0, -15.0, -12.5]
KTO_DESIRABLE = [True, False, True, False, True, False]
KL_POLICY = [-40.0, -35.5, -50.25, -41.0]
KL_REF = [-41.5, -35.0, -50.0, -42.0]


def kto_ref(policy, ref, kl_policy, kl_ref, beta=0.1, wd=1.0, wu=1.0) -> float:
    z = max(0.0, sum(p - r for p, r in zip(kl_policy, kl_ref, strict=True)) / len(kl_policy))
    total = 0.0
    for p, r, good in zip(policy, ref, KTO_DESIRABLE, strict=True):
        ratio = p - r
        total += wd * (1 - _sigmoid(beta * (ratio - z))) if good else wu * (1 - _sigmoid(beta * (z - ratio)))
    return total / len(policy)


@pytest.mark.parametrize(("beta", "wd", "wu"), [(0.1, 1.0, 1.0), (0.5, 1.0, 1.33)])
def test_kto_and_its_gradient_match_a_float64_reference(beta, wd, wu) -> None:
    policy = torch.tensor(KTO_POLICY, requires_grad=True)
    desirable = torch.tensor(KTO_DESIRABLE)
    tokens = torch.ones(6, dtype=torch.long)
    kl_ratio = torch.tensor(KL_POLICY, requires_grad=True) - torch.tensor(KL_REF)
    out = KTOLoss(beta=beta, desirable_weight=wd, undesirable_weight=wu)(
        UnpairedLogps(policy, tokens, desirable), UnpairedLogps(torch.tensor(KTO_REF), tokens, desirable), kl_ratio
    )

    def reference(p: list[float]) -> float:
        return kto_ref(p, KTO_REF, KL_POLICY, KL_REF, beta, wd, wu)

    assert abs(float(out.loss.detach()) - reference(KTO_POLICY)) < 1e-6
    out.loss.backward()
    expected = _numeric_gradient(lambda p: reference(p), [KTO_POLICY])[0]
    assert max(abs(g - w) for g, w in zip(policy.grad.tolist(), expected, strict=True)) < 1e-5
    assert float(out.extra["kl"]) == pytest.approx(
        max(0.0, sum(p - r for p, r in zip(KL_POLICY, KL_REF, strict=True)) / 4)
    )
    assert out.chosen_rewards.shape == (3,) and out.rejected_rewards.shape == (3,)


def test_kto_kl_reference_point_is_never_negative_and_carries_no_gradient() -> None:
    policy = torch.tensor(KTO_POLICY, requires_grad=True)
    desirable, tokens = torch.tensor(KTO_DESIRABLE), torch.ones(6, dtype=torch.long)
    kl_ratio = torch.tensor([-3.0, -1.0], requires_grad=True)
    out = KTOLoss()(
        UnpairedLogps(policy, tokens, desirable), UnpairedLogps(torch.tensor(KTO_REF), tokens, desirable), kl_ratio
    )
    assert float(out.extra["kl"]) == 0.0
    out.loss.backward()
    assert kl_ratio.grad is None


@pytest.mark.parametrize("kind", ["dpo", "ipo", "orpo", "simpo", "kto"])
def test_build_preference_loss_names_each_loss(kind: str) -> None:
    loss = build_preference_loss(kind, beta=0.1)
    assert type(loss).__name__.lower().startswith(kind.removesuffix("o") if kind == "kto" else kind[:3])
    with pytest.raises(ValueError, match="expected one of"):
        build_preference_loss("rlhf", beta=0.1)


@pytest.mark.parametrize(("name", "loss", "reference"), CASES, ids=[c[0] for c in CASES])
def test_a_batch_in_parts_with_its_totals_adds_up_to_the_whole_batch(name, loss, reference) -> None:
    from runner.train.losses.preference import BatchTotals

    values = [POLICY_CHOSEN, POLICY_REJECTED, REF_CHOSEN, REF_REJECTED]
    policy, ref = _paired(values)
    whole = loss(policy, ref if loss.needs_reference else None)
    whole.loss.backward()
    totals = BatchTotals(items=5, chosen_tokens=sum(CHOSEN_TOKENS))
    parted, _ = _paired(values)
    total = 0.0
    for part in (slice(0, 2), slice(2, 5)):
        sub = SequenceLogps(
            parted.chosen[part], parted.rejected[part], parted.chosen_tokens[part], parted.rejected_tokens[part]
        )
        sub_ref = SequenceLogps(
            ref.chosen[part], ref.rejected[part], ref.chosen_tokens[part], ref.rejected_tokens[part]
        )
        out = loss(sub, sub_ref if loss.needs_reference else None, totals=totals)
        out.loss.backward()
        total += float(out.loss.detach())
    assert abs(total - float(whole.loss.detach())) < 1e-6
    for got, want in ((parted.chosen, policy.chosen), (parted.rejected, policy.rejected)):
        assert torch.allclose(got.grad, want.grad, atol=1e-7)


def test_kto_in_parts_with_the_whole_batchs_reference_point_adds_up_to_the_whole_batch() -> None:
    from runner.train.losses.preference import BatchTotals

    desirable, tokens = torch.tensor(KTO_DESIRABLE), torch.ones(6, dtype=torch.long)
    kl_ratio = torch.tensor(KL_POLICY) - torch.tensor(KL_REF)
    loss = KTOLoss(beta=0.5)
    whole_policy = torch.tensor(KTO_POLICY, requires_grad=True)
    whole = loss(
        UnpairedLogps(whole_policy, tokens, desirable),
        UnpairedLogps(torch.tensor(KTO_REF), tokens, desirable),
        kl_ratio,
    )
    whole.loss.backward()
    parted = torch.tensor(KTO_POLICY, requires_grad=True)
    total = 0.0
    for part in (slice(0, 4), slice(4, 6)):
        out = loss(
            UnpairedLogps(parted[part], tokens[part], desirable[part]),
            UnpairedLogps(torch.tensor(KTO_REF)[part], tokens[part], desirable[part]),
            kl_ratio,
            totals=BatchTotals(items=6),
        )
        out.loss.backward()
        total += float(out.loss.detach())
    assert abs(total - float(whole.loss.detach())) < 1e-6
    assert torch.allclose(parted.grad, whole_policy.grad, atol=1e-7)
