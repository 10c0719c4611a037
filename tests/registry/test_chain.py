"""Jobs feeding jobs: registry: and job: sources, register_as with lineage, and resume on the same base."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from runner.commands import main
from runner.outputs.checkpoints import BASE_RECORD, list_checkpoints
from runner.outputs.runs import latest_run, list_runs
from runner.registry import Registry, resolve_source

from ..train.tiny import save_tiny_causal_lm

ROWS = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}."} for i in range(16)]


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("chain-base") / "model")


@pytest.fixture
def project(tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch, _private_registry: Path) -> Path:
    monkeypatch.setenv("RUNNER_HOME", str(home))
    monkeypatch.setenv("RUNNER_RUNS", str(tmp_path / "project" / "runs"))
    jobs = tmp_path / "project" / "jobs"
    jobs.mkdir(parents=True)
    (jobs / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    return tmp_path / "project"


@pytest.fixture
def write_job(project: Path) -> Callable[..., Path]:
    def write(name: str, source: str, **sections: dict[str, Any]) -> Path:
        import tomli_w

        spec: dict[str, dict[str, Any]] = {
            "model": {"source": source},
            "data": {"train": "train.jsonl", "max_length": 64},
            "adapter": {"r": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "log_every": 1, "save_every": 2},
        }
        for section, values in sections.items():
            spec.setdefault(section, {}).update(values)
        path = project / "jobs" / f"{name}.toml"
        path.write_text(tomli_w.dumps(spec), encoding="utf-8")
        return path

    return write


def _status(project: Path, job: str) -> dict[str, Any]:
    run = list_runs(project / "runs", job)[-1]
    return json.loads((run / "status.json").read_text())


def test_three_job_chain_registers_each_result_with_its_lineage(
    project: Path,
    base_model: Path,
    write_job: Callable[..., Path],
    home: Path,
    _private_registry: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from transformers import AutoModelForCausalLM

    assert main(["models", "import", f"local:{base_model}", "--as", "tiny-base", "-q", "--license", "mit"]) == 0
    jobs = [
        write_job("sft-a", "registry:tiny-base", output={"register_as": "tiny-a"}),
        write_job("sft-b", "job:sft-a", output={"register_as": "tiny-b"}),
        write_job("sft-c", "job:sft-b", output={"register_as": "tiny-c", "merge": True}),
    ]
    for job in jobs:
        assert main(["run", str(job)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "registered as 'tiny-b'" in out and "fine-tuned from tiny-a" in out

    registry = Registry(_private_registry, home=home)
    a, b, c = (registry.get(x) for x in ("tiny-a", "tiny-b", "tiny-c"))
    run_a, run_b, run_c = (latest_run(project / "runs", j).name for j in ("sft-a", "sft-b", "sft-c"))  # type: ignore[union-attr]
    assert (a.lineage.fine_tuned_from, b.lineage.fine_tuned_from, c.lineage.fine_tuned_from) == (
        "tiny-base",
        "tiny-a",
        "tiny-b",
    )  # type: ignore[union-attr]
    assert (a.lineage.run_id, b.lineage.run_id, c.lineage.run_id) == (run_a, run_b, run_c)  # type: ignore[union-attr]
    assert (a.lineage.form, c.lineage.form) == ("adapter", "merged")  # type: ignore[union-attr]
    assert b.lineage.base_source == "job:sft-a" and b.lineage.job == "sft-b"  # type: ignore[union-attr]
    assert b.lineage.spec_sha256 == _status(project, "sft-b")["spec_sha256"]  # type: ignore[union-attr]
    assert a.license == "mit" and a.store == f"adapters/sft-a/{run_a}" and "adapter_model.safetensors" in a.files
    assert c.store == f"merged/sft-c/{run_c}" and "model.safetensors" in c.files

    # each job trained on the previous job's merged result, and recorded exactly that
    manifest_b = json.loads((latest_run(project / "runs", "sft-b") / "manifest.json").read_text())  # type: ignore[operator]
    assert manifest_b["model"]["path"] == str(home / "merged" / "sft-a" / run_a)
    assert manifest_b["model"]["alias"] == "tiny-a" and manifest_b["model"]["fine_tuned_from"] == "tiny-base"
    checkpoint = list_checkpoints(latest_run(project / "runs", "sft-c") / "checkpoints")[-1]  # type: ignore[operator]
    record = json.loads((checkpoint.path / BASE_RECORD).read_text())
    assert record["source"] == "job:sft-b" and record["revision"] == run_b and record["alias"] == "tiny-b"
    manifest_c = json.loads((latest_run(project / "runs", "sft-c") / "manifest.json").read_text())  # type: ignore[operator]
    assert record["fine_tuned_from"] == "tiny-a" and record["files"] == manifest_c["model"]["files"]
    assert record["files"] == dict(resolve_source("job:sft-b", progress=False).files)

    # the merged C equals C's adapter on B's merged snapshot
    from peft import PeftModel

    merged_c = AutoModelForCausalLM.from_pretrained(resolve_source("registry:tiny-c", progress=False).path)
    on_b = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(home / "merged" / "sft-b" / run_b),
        str(latest_run(project / "runs", "sft-c") / "adapter"),
    )  # type: ignore[operator]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(merged_c(ids).logits, on_b(ids).logits, atol=1e-5, rtol=1e-4)
        assert not torch.allclose(merged_c(ids).logits, AutoModelForCausalLM.from_pretrained(base_model)(ids).logits)
    # a registered adapter resolves to the same cached merge as its job: source
    assert resolve_source("registry:tiny-a", progress=False).path == home / "merged" / "sft-a" / run_a

    capsys.readouterr()
    assert main(["models", "info", "tiny-c"]) == 0
    info = capsys.readouterr().out
    assert "lineage: tiny-c <- tiny-b <- tiny-a <- tiny-base" in info
    assert f"tiny-b: job sft-b run {run_b} (lora, adapter)" in info
    assert f"tiny-base: local:{base_model}" in info
    assert "fine-tuned from: tiny-b" in info and "method:          lora (merged)" in info

    # the chain holds the base in place
    assert main(["models", "delete", "tiny-a"]) == 1
    assert "entry 'tiny-b' (fine-tuned from it)" in capsys.readouterr().err


def test_chain_through_an_unregistered_job(
    project: Path, base_model: Path, write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    write_job("first", f"local:{base_model}")
    second = write_job("second", "job:first", output={"register_as": "second"})
    assert main(["run", str(second)]) == 1  # first has never run
    assert "job 'first' has no runs" in _status(project, "second")["error"]
    assert main(["run", str(project / "jobs" / "first.toml")]) == 0
    assert main(["run", str(second)]) == 0
    capsys.readouterr()
    assert main(["models", "info", "second"]) == 0
    out = capsys.readouterr().out
    assert "lineage: second <- job:first <- " in out and "fine-tuned from: job:first (not registered)" in out
    assert f"(not registered): local:{base_model}" in out


def test_register_as_must_not_take_another_models_alias(
    project: Path, base_model: Path, write_job: Callable[..., Path]
) -> None:
    assert main(["models", "import", f"local:{base_model}", "--as", "tiny-base", "-q"]) == 0
    job = write_job("oops", "registry:tiny-base", output={"register_as": "tiny-base"})
    assert main(["run", str(job)]) == 1
    status = _status(project, "oops")
    assert status["state"] == "failed" and status["reason"] == "config" and status.get("step") in (None, 0)
    assert "output.register_as = 'tiny-base' is already the registry alias of local:" in status["error"]


def test_remote_code_needs_the_job_and_the_runner_to_allow_it(
    project: Path, base_model: Path, write_job: Callable[..., Path]
) -> None:
    job = write_job("remote", f"local:{base_model}", model={"trust_remote_code": True})
    assert main(["run", str(job)]) == 1
    status = _status(project, "remote")
    assert status["reason"] == "config" and "--allow-remote-code" in status["error"]
    assert main(["run", str(job), "--allow-remote-code"]) == 0


def _interrupt_at(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the next training stop (with a checkpoint) after `step`, as a SIGTERM would."""
    from runner.train.trainers.base import ProgressReporter

    real = ProgressReporter.on_step_end

    def on_step_end(self: Any, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == step:
            self.stop.requested, self.stop.signal_name = True, "SIGTERM"
        real(self, args, state, control, **kwargs)

    monkeypatch.setattr(ProgressReporter, "on_step_end", on_step_end)


def test_resume_uses_the_recorded_base_and_refuses_a_changed_one(
    project: Path,
    base_model: Path,
    write_job: Callable[..., Path],
    home: Path,
    tmp_path: Path,
    _private_registry: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    assert main(["models", "import", f"local:{base_model}", "--as", "tiny-base", "-q"]) == 0
    registry = Registry(_private_registry, home=home)
    first_store = registry.store_path(registry.get("tiny-base"))
    job = write_job("resumable", "registry:tiny-base", train={"max_steps": 4, "save_every": 2})

    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        assert main(["run", str(job)]) == 3
    checkpoint = list_checkpoints(latest_run(project / "runs", "resumable") / "checkpoints")[-1]  # type: ignore[operator]
    record = json.loads((checkpoint.path / BASE_RECORD).read_text())
    assert (record["alias"], record["path"]) == ("tiny-base", str(first_store))

    # the alias now names another model: the resume still trains on the recorded one
    other = shutil.copytree(base_model, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (other / "config.json").write_text(json.dumps(config))
    assert main(["models", "import", f"local:{other}", "--as", "tiny-base", "--force", "-q"]) == 0
    assert registry.store_path(registry.get("tiny-base")) != first_store
    capsys.readouterr()
    assert main(["run", str(job)]) == 0
    assert "from step-2" in capsys.readouterr().out
    manifest = json.loads((latest_run(project / "runs", "resumable") / "manifest.json").read_text())  # type: ignore[operator]
    assert manifest["model"]["path"] == str(first_store) and manifest["model"]["files"] == record["files"]

    # a base whose bytes changed since the checkpoint: refused, with what changed
    with monkeypatch.context() as patch:
        _interrupt_at(patch, 2)
        assert main(["run", str(job), "--fresh"]) == 3
    checkpoint = list_checkpoints(latest_run(project / "runs", "resumable") / "checkpoints")[-1]  # type: ignore[operator]
    record = json.loads((checkpoint.path / BASE_RECORD).read_text())
    assert record["path"] == str(registry.store_path(registry.get("tiny-base"))) != str(first_store)
    weights = Path(record["path"]) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["run", str(job)]) == 1
    status = _status(project, "resumable")
    assert status["state"] == "failed" and status["reason"] == "model"
    assert "cannot resume" in status["error"] and "model.safetensors" in status["error"]
    assert "the base it was trained on, registry:tiny-base changed since it was recorded" in status["error"]
    assert status["step"] == 2  # nothing was trained on the wrong weights
