"""LoRA folded into the weight for the forward pass: the same loss and the same gradients as peft's
own LoRA forward (and as a float64 loop), on packed and padded batches, step after step; peft's
forward wherever the fold does not apply."""

from __future__ import annotations

import importlib.metadata

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lora.layer import Linear as LoraLinear
from transformers import LlamaConfig, LlamaForCausalLM

from runner.train import lora_fold
from runner.train.lora_fold import FoldedLoraFunction, fold_applies, fold_lora_layers, foldable

LENGTHS = [5, 17, 1, 9]


def lora_model(dropout: float = 0.0, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    model.config.use_cache = False
    peft_model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, lora_dropout=dropout, target_modules="all-linear", task_type="CAUSAL_LM")
    )
    with torch.no_grad():  # B starts at zero in peft; a non-zero B makes every term of the fold count
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.05)
    return peft_model


def packed_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (1, sum(LENGTHS)))
    labels = ids.clone()
    labels[0, 0] = -100
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return {"input_ids": ids, "position_ids": positions, "labels": labels}


def padded_batch() -> dict[str, torch.Tensor]:
    torch.manual_seed(2)
    ids = torch.randint(0, 300, (3, 12))
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 3:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return float(loss.detach()), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fused", [False, True], ids=["adamw", "fused-adamw"])
@pytest.mark.parametrize("batch", [packed_batch, padded_batch], ids=["packed", "padded"])
def test_folded_loss_and_gradients_equal_peft_over_several_optimizer_steps(batch, fused: bool) -> None:
    """Fused AdamW changes the weights in place without bumping their version counters: the fold
    must follow it all the same."""
    plain, folded = lora_model(), lora_model()
    assert fold_lora_layers(folded) == 2 * 7
    optimizers = [
        torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2, fused=fused) for m in (plain, folded)
    ]
    for _ in range(3):  # the fold must follow the adapter as the optimizer moves it
        loss_plain, grads_plain = loss_and_grads(plain, batch())
        loss_folded, grads_folded = loss_and_grads(folded, batch())
        assert loss_folded == pytest.approx(loss_plain, abs=1e-5)
        assert grads_plain.keys() == grads_folded.keys() and len(grads_plain) == 2 * 2 * 7
        for name in grads_plain:
            assert torch.allclose(grads_folded[name], grads_plain[name], atol=1e-6, rtol=1e-4), name
        for optimizer in optimizers:
            optimizer.step()


def test_the_function_equals_a_float64_lora_linear_with_its_gradients() -> None:
    torch.manual_seed(3)
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    weight, lora_a, lora_b = (
        torch.randn(24, 16, dtype=torch.float64),
        torch.randn(4, 16, dtype=torch.float64),
        torch.randn(24, 4, dtype=torch.float64),
    )
    lora_a.requires_grad_(True)
    lora_b.requires_grad_(True)
    bias = torch.randn(24, dtype=torch.float64)
    scaling = 0.5
    reference = x @ weight.t() + bias + scaling * (x @ lora_a.t()) @ lora_b.t()
    folded = FoldedLoraFunction.apply(x, weight + scaling * lora_b @ lora_a, bias, lora_a, lora_b, scaling)
    assert torch.allclose(folded, reference)
    upstream = torch.randn_like(reference)
    expected = torch.autograd.grad(reference, (x, lora_a, lora_b), upstream)
    got = torch.autograd.grad(folded, (x, lora_a, lora_b), upstream)
    for e, g in zip(expected, got, strict=True):
        assert torch.allclose(g, e)


def test_the_fold_is_formed_once_per_change_of_the_weights() -> None:
    model = lora_model()
    fold_lora_layers(model)
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    x = torch.randn(3, layer.in_features)
    layer(x)
    first = layer.__dict__["_runner_fold"][1]
    layer(x)
    assert layer.__dict__["_runner_fold"][1] is first  # unchanged weights: the same fold
    with torch.no_grad():
        layer.lora_B["default"].weight.add_(1.0)
    layer(x)
    assert layer.__dict__["_runner_fold"][1] is not first


def test_peft_forward_runs_where_the_fold_does_not_apply() -> None:
    with_dropout = lora_model(dropout=0.1)
    fold_lora_layers(with_dropout)
    layer = next(m for m in with_dropout.modules() if isinstance(m, LoraLinear))
    x = torch.randn(3, layer.in_features)
    assert foldable(layer, x, (), {}) is None
    model = lora_model()
    fold_lora_layers(model)
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    assert foldable(layer, x, (), {}) == "default"
    with model.disable_adapter():
        assert foldable(layer, x, (), {}) is None
        assert torch.allclose(layer(x), layer.base_layer(x))
    assert foldable(layer, x.double(), (), {}) is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert foldable(layer, x, (), {}) is None
    assert foldable(layer, x, (), {"adapter_names": ["default"] * 3}) is None
    assert not fold_applies("qlora", 0.0) and not fold_applies("lora", 0.05) and fold_applies("lora", 0.0)


def test_a_folded_model_saves_the_same_adapter_and_eval_uses_the_fold_without_autograd(tmp_path) -> None:
    plain, folded = lora_model(), lora_model()
    fold_lora_layers(folded)
    plain.save_pretrained(str(tmp_path / "plain"))
    folded.save_pretrained(str(tmp_path / "folded"))
    from safetensors.torch import load_file

    a, b = (
        load_file(tmp_path / "plain" / "adapter_model.safetensors"),
        load_file(tmp_path / "folded" / "adapter_model.safetensors"),
    )
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        batch = packed_batch()
        assert torch.allclose(plain(**batch).logits, folded(**batch).logits, atol=1e-5)


def test_the_peft_internals_read_are_where_the_module_expects_them() -> None:
    """The fold reads peft's LoRA Linear by attribute; a peft that renames them fails here first."""
    model = lora_model()
    layer = next(m for m in model.modules() if isinstance(m, LoraLinear))
    for attribute in (
        "base_layer",
        "lora_A",
        "lora_B",
        "lora_dropout",
        "scaling",
        "lora_variant",
        "active_adapters",
        "merged",
        "disable_adapters",
    ):
        assert hasattr(layer, attribute), f"peft {importlib.metadata.version('peft')} LoRA Linear has no {attribute}"
    assert isinstance(layer.base_layer, torch.nn.Linear)
    assert lora_fold.CHECKED_AGAINST.split(".")[:2] == importlib.metadata.version("peft").split(".")[:2], (
        "peft changed its minor version: read peft.tuners.lora.layer.Linear.forward, check the fold still "
        "computes the same function, then update runner.train.lora_fold.CHECKED_AGAINST"
    )
