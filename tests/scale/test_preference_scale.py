"""Preference jobs scale like SFT jobs: two torchrun processes (DDP, gloo) end with identical
replicas and log each step once (KTO's reference point averaged over both; a precomputed reference
written once and read by the other rank), and QLoRA's 4-bit base is its own reference with the
adapter switched off."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.commands import main
from runner.outputs.runs import list_runs

from .conftest import start_run

PAIRS = [
    {
        "instruction": f"What is {i} + {i}?",
        "input": "",
        "chosen": f"{i} + {i} = {2 * i}.",
        "rejected": f"I cannot answer questions about {i}.",
    }
    for i in range(32)
]


def _run(runs: Path, job: str) -> Path:
    (run,) = list_runs(runs, job)
    return run


def _lines(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    ("name", "loss", "adapter"),
    [
        ("ddp-kto", {"type": "kto"}, {"method": "lora"}),
        ("ddp-dpo-full", {"type": "dpo", "reference": "precompute"}, {"method": "full"}),
    ],
    ids=["kto-lora", "dpo-full-precompute"],
)
def test_two_processes_train_a_preference_job_with_identical_replicas(
    write_job: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    loss: dict[str, Any],
    adapter: dict[str, Any],
) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "home"))
    job = write_job(
        name,
        rows=PAIRS,
        loss=loss,
        adapter=adapter,
        data={"eval_fraction": 0.25},
        train={"max_steps": 4, "save_every": 2, "learning_rate": 1e-4 if adapter["method"] == "full" else 1e-3},
        resources={"nproc": 2, "device": "cpu"},
    )
    runs = tmp_path / "runs"
    proc = start_run(job, runs)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    run = _run(runs, name)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 4
    digests = status["extra"]["replica_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    lines = _lines(run)
    steps = [m for m in lines if "loss" in m]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and all("reward_margin" in m for m in steps)
    assert [m["step"] for m in lines if "eval_loss" in m] == [0, 4]
    if loss["type"] == "kto":
        assert all("kl" in m for m in steps)
    else:
        assert out.count("reference log-probabilities of") == 1  # printed by rank 0 only
        assert len(list((tmp_path / "home" / "reference-logps").glob("*.npz"))) == 1


def test_qlora_dpo_uses_the_4bit_base_with_its_adapter_off_as_the_reference(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    pytest.importorskip("bitsandbytes")
    job = write_job(
        "qlora-dpo",
        rows=PAIRS,
        loss={"type": "dpo"},
        data={"eval_fraction": 0.25},
        adapter={"method": "qlora", "allow_cpu": True, "dropout": 0.0},
        train={"max_steps": 3},
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = _run(runs, "qlora-dpo")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runtime"]["quantization"]["quant_type"] == "nf4"
    lines = _lines(run)
    baseline = next(m for m in lines if m.get("step") == 0 and "eval_loss" in m)
    # before any update the policy is exactly its reference: every reward 0, the loss log 2
    assert baseline["eval_reward_margin"] == 0.0 and baseline["eval_loss"] == pytest.approx(0.693147, abs=1e-6)
    steps = [m for m in lines if "loss" in m]
    assert len(steps) == 3 and steps[-1]["loss"] < steps[0]["loss"]
    assert (run / "adapter" / "runner_adapter.json").is_file()
    assert "quantization" in json.loads((run / "adapter" / "runner_adapter.json").read_text())
