"""LoRA folded into the weight under a preference loss: the policy pass folds, the reference pass
(the same model with its adapter switched off) runs the base weight alone, and the DPO loss and the
adapter's gradients equal peft's own forward step after step; the fold is formed once per step."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear

from runner.data.preference_collate import pack_groups
from runner.train.lora_fold import fold_lora_layers
from runner.train.losses.preference import DPOLoss, SequenceLogps
from runner.train.reference import AdapterOff, reply_logps
from runner.train.shared_prompt import use_shared_prompt_sdpa

from .test_shared_prompt import PAIRS, tiny


def lora_model() -> torch.nn.Module:
    model = tiny("llama")
    use_shared_prompt_sdpa(model)
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
    )  # B != 0: the policy differs from the base
    return peft.train()


def dpo_step(model: torch.nn.Module, row: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    """One DPO loss and its gradients, as the trainer computes them: the policy, then the reference."""
    model.zero_grad()
    policy = reply_logps(model, row)
    reference = AdapterOff()(model, row)
    tokens = row["reply_tokens"]
    out = DPOLoss(beta=0.5)(
        SequenceLogps(policy[0::2], policy[1::2], tokens[0::2], tokens[1::2]),
        SequenceLogps(reference[0::2], reference[1::2], tokens[0::2], tokens[1::2]),
    )
    out.loss.backward()
    return float(out.loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("shared", [True, False], ids=["shared-prompt", "plain-rows"])
def test_dpo_with_the_adapter_off_reference_has_the_same_loss_and_gradients_folded_as_in_peft(shared: bool) -> None:
    row = pack_groups([(p, (c, r)) for p, c, r in PAIRS], shared_prompt=shared)
    plain, folded = lora_model(), lora_model()
    assert fold_lora_layers(folded) == 2 * 7
    optimizers = [torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2) for m in (plain, folded)]
    for _ in range(3):  # the fold follows the adapter as the optimizer moves it
        loss_plain, grads_plain = dpo_step(plain, row)
        loss_folded, grads_folded = dpo_step(folded, row)
        assert abs(loss_plain - math.log(2)) > 1e-4  # the adapter moves the policy away from the reference
        assert loss_folded == pytest.approx(loss_plain, abs=1e-5)
        assert grads_plain.keys() == grads_folded.keys() and len(grads_plain) == 2 * 2 * 7
        for name in grads_plain:
            scale = grads_plain[name].abs().max().clamp(min=1e-3)
            assert (grads_folded[name] - grads_plain[name]).abs().max() / scale < 1e-4, name
        for optimizer in optimizers:
            optimizer.step()


def test_the_reference_pass_runs_the_base_weight_and_keeps_the_fold_for_the_next_pass() -> None:
    row = pack_groups([(p, (c, r)) for p, c, r in PAIRS], shared_prompt=True)
    model = lora_model()
    with torch.no_grad(), model.disable_adapter():
        base = reply_logps(model, row)
    fold_lora_layers(model)
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    reply_logps(model, row)
    fold = layer.__dict__["_runner_fold"][1]
    assert torch.equal(AdapterOff()(model, row), base)  # the reference is the base model exactly
    assert layer.__dict__["_runner_fold"][1] is fold  # not formed again by the next adapted pass
    reply_logps(model, row)
    assert layer.__dict__["_runner_fold"][1] is fold
