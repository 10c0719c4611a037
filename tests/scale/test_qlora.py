"""QLoRA on the CPU (bitsandbytes >= 0.49): a 4-bit base trains a LoRA adapter, and the adapter goes
back onto a freshly quantised base with the same outputs; where 4-bit cannot run, the job is
refused before any weights load."""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from runner.commands import main
from runner.fsutil import atomic_write_json
from runner.outputs.runs import list_runs
from runner.spec.model import AdapterSection, ModelSection, ResourcesSection
from runner.train import model as model_module
from runner.train.model import (
    apply_adapter,
    choose_device,
    count_parameters,
    load_causal_lm,
    load_for_inference,
    quantization_record,
)

bnb = pytest.importorskip("bitsandbytes")


def _setup(method: str = "qlora") -> tuple[ModelSection, AdapterSection, object]:
    model = ModelSection(source="local:x")
    adapter = AdapterSection(method=method, allow_cpu=True, r=8, alpha=16, dropout=0.0)
    return model, adapter, choose_device(model, ResourcesSection(device="cpu"), adapter)


def test_a_4bit_base_trains_lora_and_the_adapter_reloads_onto_a_fresh_4bit_base(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    spec_model, adapter, choice = _setup()
    assert choice.compute_dtype == "float32"
    model = load_causal_lm(tiny_model_dir, spec_model, adapter, choice)
    q_proj = model.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, bnb.nn.Linear4bit) and q_proj.weight.dtype == torch.uint8
    assert q_proj.weight.quant_state.quant_type == "nf4"
    _, base_total = count_parameters(model)  # packed weights count as the weights they stand for
    model = apply_adapter(model, adapter, gradient_checkpointing=False)
    trainable, total = count_parameters(model)
    assert trainable == 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)  # r x (in + out), 7 layers x 2 blocks
    assert total == base_total + trainable == 99_648 + trainable

    torch.manual_seed(0)
    ids = torch.randint(5, 300, (4, 24))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(8):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses  # the adapter learns on the 4-bit base
    model.eval()
    with torch.no_grad():
        in_memory = model(input_ids=ids).logits

    saved = tmp_path / "adapter"
    model.save_pretrained(str(saved))
    atomic_write_json(
        saved / "runner_adapter.json",
        {
            "method": "qlora",
            "base_model": {"path": str(tiny_model_dir)},
            "quantization": quantization_record(adapter, choice),
        },
    )
    reloaded = load_for_inference(saved, device="cpu")
    base_q = reloaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base_q, bnb.nn.Linear4bit)
    with torch.no_grad():
        again = reloaded(input_ids=ids).logits
    torch.testing.assert_close(again, in_memory, atol=1e-5, rtol=1e-5)

    # the 4-bit base matters: the same adapter on the full-precision base gives other logits
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), str(saved)).eval()
    with torch.no_grad():
        assert (plain(input_ids=ids).logits - in_memory).abs().max() > 1e-3


def test_runner_run_qlora_on_the_cpu_records_the_4bit_setup(write_job: Callable[..., Path], tmp_path: Path) -> None:
    job = write_job(
        "qlora",
        adapter={"method": "qlora", "allow_cpu": True, "quant_type": "fp4", "double_quant": False},
        train={"max_steps": 3, "save_every": 3},
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    (run,) = list_runs(runs, "qlora")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and status["adapter"]["method"] == "qlora"
    quant = {"bits": 4, "quant_type": "fp4", "double_quant": False, "compute_dtype": "float32"}
    assert status["extra"]["device"]["quantization"] == quant
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runtime"]["device"] == "cpu" and manifest["runtime"]["attn_implementation"] == "sdpa"
    assert manifest["runtime"]["quantization"] == quant
    saved = json.loads((run / "adapter" / "runner_adapter.json").read_text())
    assert saved["quantization"] == quant
    reloaded = load_for_inference(run / "adapter", device="cpu")
    layer = reloaded.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(layer, bnb.nn.Linear4bit) and layer.weight.quant_state.quant_type == "fp4"


@pytest.mark.parametrize("installed", [None, "0.45.3"])
def test_qlora_is_refused_before_any_weights_load_where_4bit_cannot_run(
    write_job: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    installed: str | None,
) -> None:
    real_version = importlib.metadata.version

    def version(name: str) -> str:
        if name == "bitsandbytes":
            if installed is None:
                raise importlib.metadata.PackageNotFoundError(name)
            return installed
        return real_version(name)

    monkeypatch.setattr(importlib.metadata, "version", version)

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(model_module, "load_pretrained", no_loading)
    job = write_job("qlora", adapter={"method": "qlora", "allow_cpu": True})
    expected = "not installed" if installed is None else "needs bitsandbytes >= 0.49"

    assert main(["plan", str(job), "--no-calibrate"]) == 1
    assert expected in capsys.readouterr().err

    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 1
    (run,) = list_runs(runs, "qlora")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "config"
    assert expected in status["error"]


def test_an_eval_pass_does_not_change_the_gradients_of_the_next_training_step(tiny_model_dir: Path) -> None:
    """bitsandbytes repacks 4-bit CPU weights for inference on the first eval pass, after which its
    kernel passes no gradient to the layers below; the runner keeps the training layout."""
    spec_model, adapter, choice = _setup()
    model = apply_adapter(
        load_causal_lm(tiny_model_dir, spec_model, adapter, choice), adapter, gradient_checkpointing=False
    )
    ids = torch.randint(5, 300, (2, 12), generator=torch.Generator().manual_seed(0))

    def gradients() -> dict[str, torch.Tensor]:
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    before = gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)  # the baseline evaluation a run does before training
    after = gradients()
    for name in before:
        torch.testing.assert_close(after[name], before[name], atol=0, rtol=0)
