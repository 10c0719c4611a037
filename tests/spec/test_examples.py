"""The example jobs are documentation and fixtures: they must all validate, with defaults applied."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.spec import find_job_files, load_job

ROOT = Path(__file__).resolve().parents[2]
JOBS = find_job_files([ROOT / "jobs"])


def test_there_is_an_example_per_format_and_loss() -> None:
    specs = [load_job(path).spec for path in JOBS]
    assert {s.data.format for s in specs} >= {
        "alpaca",
        "sharegpt",
        "messages",
        "text",
        "segments",
        "pairs",
        "triplets",
        "scored-pairs",
        "image-text",
        "auto",
        "preference",
        "sharegpt-preference",
        "alpaca-preference",
        "unpaired-preference",
    }
    assert {s.loss_type for s in specs} >= {
        "causal-lm",
        "contrastive",
        "matryoshka",
        "cosent",
        "multi-task",
        "dpo",
        "ipo",
        "orpo",
        "simpo",
        "kto",
    }
    assert {s.adapter.method for s in specs} == {"lora", "qlora", "full"}


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_example_job_validates(path: Path) -> None:
    job = load_job(path)
    assert job.name == (job.raw.get("name") or path.stem)
    assert job.path == path
    assert len(job.sha256) == 64
    for data_file in job.spec.data.train:
        if "image-text" not in path.name:
            assert job.resolve_path(data_file).is_file(), data_file


def test_defaults_are_applied() -> None:
    spec = load_job(ROOT / "jobs" / "sft-sharegpt.toml").spec
    assert spec.name == "sft-sharegpt"
    assert spec.adapter.method == "lora" and spec.adapter.r == 16 and spec.adapter.target_modules == ["all-linear"]
    assert spec.train.learning_rate == 2e-4 and spec.train.seed == 42
    assert spec.loss_type == "causal-lm"
    assert spec.data.train == ["../examples/data/sft/sharegpt.json"]  # a single path becomes a list
