"""`runner plan`: parameter counts against hand computation, memory arithmetic, steps, batches,
the calibration's extrapolation, and the command's verdicts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from runner.commands import main
from runner.plan import (
    BatchShape,
    Calibration,
    batch_shape,
    calibrate,
    estimate_memory,
    model_shape,
    optimizer_steps,
    quantized_bytes_per_weight,
    trainable_parameters,
)
from runner.plan.calibration import _saved_bytes
from runner.spec.model import AdapterSection, JobSpec, ModelSection, ResourcesSection
from runner.train.model import apply_adapter, choose_device, count_parameters

# the tiny model of tests/train/tiny.py: hidden 64, MLP 128, 2 layers, 4 heads of 16, 2 KV heads, tied
H, I, L, KV = 64, 128, 2, 2 * 16  # noqa: E741 - hidden, intermediate, layers: the usual notation


def _vocab(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


def test_parameter_counts_match_a_hand_computation(tiny_model_dir: Path) -> None:
    shape = model_shape(tiny_model_dir)
    vocab = _vocab(tiny_model_dir)
    linear = H * H + H * KV + H * KV + H * H + 3 * H * I  # q, k, v, o, gate, up, down (no biases)
    expected = vocab * H + L * (linear + 2 * H) + H  # tied embedding once, 2 norms per layer, final norm
    assert shape.parameters == expected
    assert shape.checkpoint_parameters == expected  # the safetensors headers agree
    assert shape.checkpoint_bytes == 4 * expected and shape.checkpoint_dtypes == ("F32",)
    assert (shape.num_layers, shape.hidden_size, shape.vocab_size) == (L, H, vocab)
    assert len(shape.linears) == 7 * L + 1 and shape.output_head == "lm_head"

    lora = L * 16 * ((H + H) + 2 * (H + KV) + (H + H) + 3 * (H + I))  # r x (in + out) per adapted layer
    assert trainable_parameters(shape, "lora", r=16) == lora
    assert trainable_parameters(shape, "qlora", r=16) == lora
    assert trainable_parameters(shape, "full") == expected
    assert trainable_parameters(shape, "lora", r=4, target_modules=["q_proj", "v_proj"]) == L * 4 * ((H + H) + (H + KV))

    # and peft, on the real model, trains exactly that many
    from transformers import AutoModelForCausalLM

    real = apply_adapter(
        AutoModelForCausalLM.from_pretrained(str(tiny_model_dir)), AdapterSection(r=16), gradient_checkpointing=False
    )
    assert count_parameters(real) == (lora, expected + lora)


def test_memory_components_follow_from_the_counts(tiny_model_dir: Path) -> None:
    shape = model_shape(tiny_model_dir)
    n = shape.parameters
    packed = L * (H * H + H * KV + H * KV + H * H + 3 * H * I)
    lora = trainable_parameters(shape, "lora", r=16)
    calibration = Calibration(device="cuda", threads=1, saved_per_token={"full": 1000.0, "lora": 1500.0})
    batch = BatchShape(peak_tokens=200, peak_rows=4, peak_columns=50, mean_tokens=150.0, real_fraction=0.75)

    full = estimate_memory(shape, "full", device="cuda", batch=batch, calibration=calibration)
    assert (full.weights, full.gradients, full.optimizer) == (4 * n, 4 * n, 8 * n)  # fp32 AdamW: 2 states
    logits = 2 * 200 * shape.vocab_size * 4
    assert full.activations == int((200 * 1000.0 + logits) * 1.1)  # CUDA caching allocator retention

    qlora = estimate_memory(shape, "qlora", device="cuda", batch=batch, calibration=calibration, double_quant=True)
    assert quantized_bytes_per_weight(True) == 0.5 + 1 / 64 + 4 / (64 * 256)
    assert qlora.weights == int(packed * quantized_bytes_per_weight(True) + (n - packed) * 4) + 4 * lora
    assert (qlora.gradients, qlora.optimizer) == (4 * lora, 8 * lora)
    assert qlora.activations == int((200 * 1500.0 + logits) * 1.1)
    assert qlora.peak == qlora.runtime + qlora.weights + qlora.gradients + qlora.optimizer + qlora.activations
    sgd = estimate_memory(shape, "full", device="cuda", batch=batch, calibration=calibration, optimizer="sgd")
    assert sgd.optimizer == 0


def test_steps_and_batches_are_counted_like_the_trainer() -> None:
    assert optimizer_steps(36, batch_size=4, nproc=1, grad_accum=1, epochs=1.5, max_steps=None) == (14, 9)
    assert optimizer_steps(36, batch_size=4, nproc=2, grad_accum=1, epochs=1.0, max_steps=None) == (5, 5)
    assert optimizer_steps(36, batch_size=4, nproc=1, grad_accum=2, epochs=2.0, max_steps=None) == (10, 5)
    assert optimizer_steps(36, batch_size=4, nproc=1, grad_accum=1, epochs=1.0, max_steps=7) == (7, 9)

    padded = batch_shape([3, 5, 7, 9], 2, packing=False)
    assert (padded.peak_rows, padded.peak_columns, padded.peak_tokens) == (2, 9, 18)
    assert 12 <= padded.mean_tokens <= 16 and padded.real_fraction < 1
    packed = batch_shape([3, 5, 7, 9], 2, packing=True)
    assert (packed.peak_rows, packed.peak_columns, packed.real_fraction) == (1, 16, 1.0)


def test_sizes_parse(write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    """--memory reads sizes as every command does (runner.units): GB = 10^9 bytes, GiB = G = 2^30."""
    job = write_job("tiny")
    for memory, budget in (("8GiB", 8 * 2**30), ("8G", 8 * 2**30), ("8 GB", 8 * 10**9), ("512MiB", 512 * 2**20)):
        assert main(["plan", str(job), "--json", "--no-calibrate", "--memory", memory]) in (0, 4)
        assert json.loads(capsys.readouterr().out)["budget"]["bytes"] == budget
    with pytest.raises(SystemExit) as usage:
        main(["plan", str(job), "--memory", "lots"])
    assert usage.value.code == 2 and "'lots' is not a size" in capsys.readouterr().err


def test_the_calibration_extrapolates_activation_memory_to_the_full_depth(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=5,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    folder = tmp_path / "deep"
    AutoModelForCausalLM.from_config(config).save_pretrained(str(folder))
    spec = JobSpec.model_validate(
        {"model": {"source": "local:x"}, "data": {"train": "t.jsonl"}, "resources": {"device": "cpu"}}
    )
    choice = choose_device(spec.model, spec.resources, spec.adapter)
    calibration = calibrate(folder, spec, choice, rows=3, columns=40, time_it=False)
    for method in ("full", "lora"):
        model = AutoModelForCausalLM.from_pretrained(str(folder), attn_implementation="sdpa")
        model.config.use_cache = False
        model = apply_adapter(model, AdapterSection(method=method), gradient_checkpointing=False).train()
        measured = _saved_bytes(model, "cpu", 3, 40)
        assert calibration.saved_bytes(method, 3, 40) == pytest.approx(measured, rel=0.05), method


def test_runner_plan_reports_and_judges_a_budget(
    write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job("tiny", data={"eval_fraction": 0.25})
    assert main(["plan", str(job), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["model"]["parameters"] == plan["model"]["checkpoint_parameters"]
    assert plan["data"]["train_examples"] == 36 and plan["data"]["eval_examples"] == 12
    assert plan["data"]["cached"] is False
    assert plan["steps"]["total"] == 6
    methods = plan["memory"]["methods"]
    assert set(methods) == {"full", "lora", "qlora"}
    assert methods["full"]["trainable"] == plan["model"]["parameters"]
    assert methods["lora"]["optimizer"] < methods["full"]["optimizer"]
    assert plan["time"]["total_seconds"] > 0 and plan["fits"] is True

    assert main(["plan", str(job), "--memory", "1MiB"]) == 4  # does not fit
    text = capsys.readouterr().out
    assert "does NOT fit" in text and "change " in text and "[cached]" in text


def test_plan_refuses_what_cannot_run_here(write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    job = write_job("fsdp", resources={"device": "auto", "nproc": 2, "strategy": "fsdp"})
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["plan", str(job), "--no-calibrate"]) == 1
    assert "does not shard on the CPU" in capsys.readouterr().err


def test_choose_device_resolves_and_refuses_with_reasons() -> None:
    if torch.cuda.is_available():
        pytest.skip("CPU-only expectations")
    model, cpu = ModelSection(source="local:x"), ResourcesSection()
    choice = choose_device(model, cpu)
    assert (choice.device, choice.dtype, choice.precision, choice.attn_implementation) == (
        "cpu",
        "float32",
        "fp32",
        "sdpa",
    )
    qlora = AdapterSection(method="qlora", allow_cpu=True)
    assert choose_device(model, ResourcesSection(precision="bf16"), qlora).compute_dtype == "bfloat16"
    from runner.train.model import ModelSetupError

    with pytest.raises(ModelSetupError, match=r"fp16.*needs a CUDA device"):
        choose_device(model, ResourcesSection(precision="fp16"))
    with pytest.raises(ModelSetupError, match=r"flash_attention_2.*cannot run here: flash-attn needs a CUDA GPU"):
        choose_device(ModelSection(source="local:x", attn_implementation="flash_attention_2"), cpu)
    with pytest.raises(ModelSetupError, match="no CUDA device is visible"):
        choose_device(model, ResourcesSection(device="cuda"))
