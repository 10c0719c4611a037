"""`runner run` end to end on a tiny model: outputs, failure classes, and what a user sees."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.commands import main
from runner.outputs.checkpoints import list_checkpoints
from runner.outputs.runs import list_runs


def _only_run(runs: Path, job: str = "tiny") -> Path:
    (run,) = list_runs(runs, job)
    return run


def test_a_run_leaves_status_metrics_manifest_checkpoints_and_adapter(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(eval={"every": 3})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = _only_run(runs)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 6 and status["total_steps"] == 6
    assert status["trainable_params"] > 0 and status["adapter"]["method"] == "lora"
    assert status["extra"]["eval_loss_before"] > status["extra"]["eval_loss_after"]

    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_lines = [m for m in lines if "loss" in m]
    assert [m["step"] for m in train_lines] == [1, 2, 3, 4, 5, 6]
    assert all(m["tokens_per_second"] > 0 and m["grad_norm"] is not None for m in train_lines)
    assert [m["step"] for m in lines if "eval_loss" in m] == [0, 3, 6]

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["spec_sha256"] == status["spec_sha256"]
    assert manifest["spec"]["adapter"]["r"] == 16  # the resolved spec, defaults included
    assert manifest["model"]["files"] and manifest["packages"]["transformers"]

    steps = [(c.step, c.complete) for c in list_checkpoints(run / "checkpoints")]
    assert steps == [(3, True), (6, True)]
    adapter = run / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "tokenizer.json").is_file()
    out = capsys.readouterr().out
    assert "held-out loss before training" in out and "succeeded" in out


def test_bad_records_stop_the_run_before_training_with_every_location(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"instruction": "hi", "output": "hello"}] * 8 + [{"instruction": "no answer"}, {"text": 3}]
    job = write_job(rows=rows, data={"format": "alpaca", "eval_fraction": 0.0})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 1
    status = json.loads((_only_run(runs) / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "data"
    assert "train.jsonl:9" in status["error"] and "train.jsonl:10" in status["error"]
    assert not (_only_run(runs) / "checkpoints").exists() or not any((_only_run(runs) / "checkpoints").iterdir())


def test_skipped_bad_records_are_counted(write_job: Callable[..., Path], tmp_path: Path) -> None:
    rows = [{"instruction": "hi", "output": "hello"}] * 8 + [{"instruction": "no answer"}]
    job = write_job(
        rows=rows, data={"format": "alpaca", "eval_fraction": 0.0, "on_bad_record": "skip"}, train={"max_steps": 1}
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    status = json.loads((_only_run(runs) / "status.json").read_text())
    assert status["extra"]["data"]["bad_records_skipped"] == 1


def test_an_invalid_spec_is_refused_before_anything_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = tmp_path / "broken.toml"
    job.write_text('[model]\nsource = "local:x"\n[data]\ntrain = "t.jsonl"\n[adapter]\nrnak = 4\n')
    assert main(["run", str(job), "--runs-dir", str(tmp_path / "runs")]) == 1
    assert "broken.toml:6:1: adapter.rnak: unknown key 'rnak'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def test_a_missing_model_folder_is_named_before_a_run_and_fails_a_started_run_as_a_config_error(
    tmp_path: Path, write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.pipeline import run_job
    from runner.spec import load_job

    job = write_job(model={"source": f"local:{tmp_path / 'nowhere'}"})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 1  # checked as runner validate checks it
    err = capsys.readouterr().err
    assert f"{job}:" in err and "model.source" in err and "nowhere" in err and not runs.exists()
    run_job(load_job(job), runs)  # a daemon's run (its scan checks the spec alone) finds it when it resolves the model
    status = json.loads((_only_run(runs) / "status.json").read_text())
    assert status["state"] == "failed" and status["reason"] == "config"
    assert "nowhere" in status["error"]


def test_a_missing_tracker_package_is_a_config_error(write_job: Callable[..., Path], tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("mlflow") is not None:
        pytest.skip("mlflow is installed here")
    job = write_job(tracking={"report_to": ["mlflow"]})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 1
    status = json.loads((_only_run(runs) / "status.json").read_text())
    assert status["reason"] == "config" and "pip install mlflow" in status["error"]


def test_generate_and_export_use_the_latest_successful_run(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoModelForCausalLM

    job = write_job(train={"max_steps": 2})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    assert (
        main(["generate", str(job), "--runs-dir", str(runs), "--prompt", "What is 1 + 1?", "--max-new-tokens", "5"])
        == 0
    )
    assert capsys.readouterr().out.endswith("\n")  # a random tiny model may well answer in whitespace

    merged = tmp_path / "merged"
    assert main(["export", "tiny", "--runs-dir", str(runs), "--out", str(merged), "--merge"]) == 0
    model = AutoModelForCausalLM.from_pretrained(str(merged))  # a plain model: no peft needed to load it
    assert not any("lora" in name for name, _ in model.named_parameters())
    assert (merged / "tokenizer.json").is_file()
    # the merged weights compute what base + adapter compute
    import torch

    from runner.results import find_result, load_result

    adapted, _ = load_result(find_result("tiny", runs))
    ids = torch.tensor([[1, 5, 9, 12, 40]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-4, rtol=1e-4)
    assert main(["generate", "never-ran", "--runs-dir", str(runs), "--prompt", "x"]) == 1
    assert "no successful run of job 'never-ran'" in capsys.readouterr().err


def test_data_validate_with_a_job_uses_its_tokenizer_for_length_statistics(
    write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job()
    assert main(["data", "validate", "--job", str(job)]) == 0
    out = capsys.readouterr().out
    assert "format: alpaca" in out and "48 read, 48 usable, 0 bad" in out
    assert "tokens per example: min" in out and "truncated at max_length=128" in out
