"""`runner run` of preference jobs on a tiny model: every loss trains and reports its metrics; the
speed switches change nothing learned; the reference computed once is cached and reused; bad
records stop the run before training; the result works with generate, export and the registry."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from runner.commands import main
from runner.outputs.runs import list_runs

# a preference the tiny model can pick up in a few steps: the chosen reply answers, the rejected one refuses
PAIRS = [
    {
        "instruction": f"What is {i} + {i}?",
        "input": "",
        "chosen": f"{i} + {i} = {2 * i}.",
        "rejected": f"I cannot answer questions about {i}.",
    }
    for i in range(40)
]


@pytest.fixture
def write_pref_job(write_job: Callable[..., Path]) -> Callable[..., Path]:
    def write(loss: dict[str, Any] | None = None, name: str = "tiny", **sections: dict[str, Any]) -> Path:
        sections.setdefault("data", {})
        sections["data"] = {"format": "auto", **sections["data"]}
        return write_job(rows=PAIRS, name=name, loss=loss or {"type": "dpo"}, **sections)

    return write


def _run(runs: Path, job: str = "tiny") -> Path:
    (run,) = list_runs(runs, job)
    return run


def _metrics(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_dpo_run_logs_rewards_and_raises_held_out_reward_accuracy(
    write_pref_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_pref_job(eval={"every": 3}, adapter={"dropout": 0.0})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = _run(runs)
    lines = _metrics(run)
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5, 6]
    for key in (
        "reward_chosen",
        "reward_rejected",
        "reward_accuracy",
        "reward_margin",
        "logp_chosen",
        "logp_rejected",
        "tokens_per_second",
    ):
        assert all(key in m for m in steps), key
    assert steps[0]["loss"] == pytest.approx(0.6931, abs=1e-3)  # the policy starts as its reference
    assert steps[-1]["loss"] < steps[0]["loss"]
    evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 3, 6]
    assert evals[0]["eval_reward_accuracy"] == 0.0 and evals[0]["eval_reward_margin"] == 0.0
    assert evals[-1]["eval_reward_accuracy"] > 0.8 and evals[-1]["eval_reward_margin"] > 0
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded"
    extra = status["extra"]
    assert extra["eval_metric"] == "reward_accuracy"
    assert extra["eval_after"]["reward_accuracy"] > extra["eval_before"]["reward_accuracy"]
    assert extra["preference"]["step"] == 6 and "reward_margin" in extra["preference"]
    assert extra["data"]["format"] == "alpaca-preference" and set(extra["data"]["lengths"]) == {
        "prompt",
        "chosen",
        "rejected",
    }
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runtime"]["shared_prompt"] is True
    assert (run / "adapter" / "adapter_model.safetensors").is_file()
    assert "held-out reward_accuracy 0.0000 ->" in capsys.readouterr().out


@pytest.mark.parametrize(
    "loss",
    [
        {"type": "ipo"},
        {"type": "orpo", "sft_weight": 0.5},
        {"type": "simpo", "gamma": 1.0},
        {"type": "kto", "undesirable_weight": 1.2},
        {"type": "dpo", "label_smoothing": 0.1},
    ],
    ids=["ipo", "orpo", "simpo", "kto", "conservative-dpo"],
)
def test_each_preference_loss_trains_and_reports(
    write_pref_job: Callable[..., Path], tmp_path: Path, loss: dict[str, Any]
) -> None:
    job = write_pref_job(loss=loss, train={"max_steps": 3})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    lines = _metrics(_run(runs))
    steps = [m for m in lines if "loss" in m]
    assert len(steps) == 3 and all(m["reward_margin"] is not None for m in steps)
    if loss["type"] == "orpo":
        assert all("nll" in m and "log_odds_ratio" in m for m in steps)
    if loss["type"] == "kto":
        assert all("kl" in m and "reward_accuracy" not in m for m in steps)
    evals = [m for m in lines if "eval_loss" in m]
    assert [m["step"] for m in evals] == [0, 3]


def test_speed_switches_off_learn_the_same(write_pref_job: Callable[..., Path], tmp_path: Path) -> None:
    """The prompt shared or repeated, the batch whole or in parts, LoRA folded into the weight or not:
    the same losses and adapter."""
    results = []
    for name, speed in (
        ("on", {"token_budget": 64}),
        ("off", {"shared_prompt": False, "token_budget": 0, "lora_fold": False}),
    ):
        job = write_pref_job(
            train={"speed": speed, "max_steps": 4}, adapter={"dropout": 0.0}, data={"eval_fraction": 0.0}
        )
        runs = tmp_path / name
        assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
        run = _run(runs)
        manifest = json.loads((run / "manifest.json").read_text())
        assert manifest["runtime"]["shared_prompt"] is (name == "on")
        assert manifest["runtime"].get("lora_fold", 0) == (2 * 7 if name == "on" else 0)  # every linear layer
        steps = [m for m in _metrics(run) if "loss" in m]
        results.append(
            (
                [m["loss"] for m in steps],
                [m["tokens_seen"] for m in steps],
                load_file(run / "adapter" / "adapter_model.safetensors"),
            )
        )
    (losses_on, tokens_on, adapter_on), (losses_off, tokens_off, adapter_off) = results
    assert losses_on == pytest.approx(losses_off, rel=1e-4)
    assert tokens_on == tokens_off  # throughput counts the same tokens whatever the layout
    for key in adapter_on:
        assert torch.allclose(adapter_on[key], adapter_off[key], atol=1e-5), key


def test_full_fine_tuning_with_a_precomputed_reference_caches_it_and_equals_a_frozen_copy(
    write_pref_job: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    losses = {}
    for name, reference in (("first", "precompute"), ("again", "precompute"), ("copy", "copy")):
        job = write_pref_job(
            loss={"type": "dpo", "reference": reference},
            adapter={"method": "full"},
            train={"max_steps": 3, "learning_rate": 1e-4},
            data={"eval_fraction": 0.0},
        )
        runs = tmp_path / name
        assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
        run = _run(runs)
        status = json.loads((run / "status.json").read_text())
        losses[name] = [m["loss"] for m in _metrics(run) if "loss" in m]
        if reference == "precompute":
            assert status["extra"]["reference"]["cache_hit"] is (name == "again")
    out = capsys.readouterr().out
    assert "examples computed in" in out and "examples read from the cache" in out
    assert len(list((tmp_path / "home" / "reference-logps").glob("*.npz"))) == 1
    assert losses["first"] == losses["again"]
    assert losses["copy"] == pytest.approx(losses["first"], rel=1e-4)


def test_bad_preference_records_stop_the_run_before_training_with_every_location(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [*PAIRS[:8], {**PAIRS[0], "rejected": PAIRS[0]["chosen"]}, {"instruction": "no replies"}]
    job = write_job(rows=rows, loss={"type": "dpo"}, data={"format": "alpaca-preference", "eval_fraction": 0.0})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 1
    status = json.loads((_run(runs) / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "data"
    assert "train.jsonl:9: the chosen and rejected replies are identical" in status["error"]
    assert "train.jsonl:10: missing 'chosen'" in status["error"]


def test_a_preference_result_generates_exports_and_registers(
    write_pref_job: Callable[..., Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    registry = tmp_path / "registry.toml"
    job = write_pref_job(train={"max_steps": 2}, output={"register_as": "tiny-dpo"})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs), "--registry", str(registry)]) == 0
    capsys.readouterr()
    assert (
        main(["generate", str(job), "--runs-dir", str(runs), "--prompt", "What is 1 + 1?", "--max-new-tokens", "4"])
        == 0
    )
    merged = tmp_path / "merged"
    assert main(["export", "tiny", "--runs-dir", str(runs), "--out", str(merged), "--merge"]) == 0
    assert not any("lora" in n for n, _ in AutoModelForCausalLM.from_pretrained(str(merged)).named_parameters())
    assert "tiny-dpo" in registry.read_text()
