"""The fused AdamW switch (train.speed.fused_optimizer): the Trainer's optimizer is torch's fused
AdamW over the trainable tensors only, and it moves the weights as the per-tensor loop does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments

from runner.spec import load_job
from runner.train.common import optimizer_name, training_arguments
from runner.train.model import DeviceChoice
from runner.train.trainers.causal import CausalTrainer

CPU = DeviceChoice(device="cpu", dtype="float32", precision="fp32", attn_implementation="sdpa")


def test_adamw_becomes_the_fused_kernel_only_when_the_switch_is_on(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    assert optimizer_name("adamw_torch", fused=True) == "adamw_torch_fused"
    assert optimizer_name("adamw_torch", fused=False) == "adamw_torch"
    assert optimizer_name("sgd", fused=True) == "sgd" and optimizer_name("adafactor", fused=True) == "adafactor"
    on = load_job(write_job(name="on"))
    off = load_job(write_job(name="off", train={"speed": {"fused_optimizer": False}}))
    assert training_arguments(on, tmp_path, CPU, has_eval=False, plain_logs=True).optim == "adamw_torch_fused"
    assert training_arguments(off, tmp_path, CPU, has_eval=False, plain_logs=True).optim == "adamw_torch"


def _lora_model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    return get_peft_model(
        LlamaForCausalLM._from_config(config),
        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"),
    )


def test_fused_adamw_moves_the_trainable_weights_as_the_loop_does(tmp_path: Path) -> None:
    weights = {}
    for optim in ("adamw_torch", "adamw_torch_fused"):
        model = _lora_model()
        args = TrainingArguments(
            output_dir=str(tmp_path / optim),
            optim=optim,
            learning_rate=1e-2,
            weight_decay=0.01,
            report_to="none",
            use_cpu=True,
        )
        trainer = CausalTrainer(model=model, args=args)
        optimizer = trainer.create_optimizer()
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
        assert optimized == {id(p) for p in trainable}  # the frozen base is not in the optimizer
        assert bool(optimizer.defaults.get("fused")) is (optim == "adamw_torch_fused")
        generator = torch.Generator().manual_seed(1)
        for _ in range(3):
            for p in trainable:
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        weights[optim] = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loop, fused = weights["adamw_torch"], weights["adamw_torch_fused"]
    for name in loop:
        assert torch.allclose(fused[name], loop[name], atol=1e-6), name
    assert any(not torch.equal(loop[name], _lora_model().state_dict()[name]) for name in loop)  # they moved


@pytest.mark.parametrize("optim", ["sgd"])
def test_other_optimizers_are_left_as_the_job_names_them(
    write_job: Callable[..., Path], tmp_path: Path, optim: str
) -> None:
    job = load_job(write_job(train={"optimizer": optim}))
    assert training_arguments(job, tmp_path, CPU, has_eval=False, plain_logs=True).optim == optim
