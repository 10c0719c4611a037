"""Fixtures for the scaling tests: one thread, a tiny saved causal LM, a job-file writer, and a
subprocess runner for `runner run` jobs that launch torchrun workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ..train.tiny import save_tiny_causal_lm

ROOT = Path(__file__).resolve().parents[2]
AUDIT = Path(__file__).resolve().parent / "audit"

ROWS = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}."} for i in range(48)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny-scale") / "model")


@pytest.fixture
def write_job(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Path]:
    """Write data + a job file into tmp_path; keyword sections override the defaults."""

    def write(name: str = "tiny", rows: list[Any] | None = None, **sections: dict[str, Any]) -> Path:
        import tomli_w

        (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (rows or ROWS)), encoding="utf-8")
        spec: dict[str, dict[str, Any]] = {
            "model": {"source": f"local:{tiny_model_dir}"},
            "data": {"train": "train.jsonl", "max_length": 128},
            "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3, "log_every": 1, "save_every": 3},
            "resources": {"device": "cpu"},
        }
        for section, values in sections.items():
            spec.setdefault(section, {}).update(values)
        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(spec), encoding="utf-8")
        return path

    return write


def runner_env(**extra: str) -> dict[str, str]:
    """The environment of a `runner run` subprocess: this checkout first, one thread, offline."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def start_run(job: Path, runs: Path, *, audit_dir: Path | None = None) -> subprocess.Popen[str]:
    """`runner run JOB` in a subprocess. With `audit_dir`, every torchrun worker logs the files it
    writes under `runs` to audit_dir/rank-N.log (tests/scale/audit/sitecustomize.py)."""
    extra: dict[str, str] = {}
    if audit_dir is not None:
        audit_dir.mkdir(parents=True, exist_ok=True)
        extra = {"RUNNER_AUDIT_ROOT": str(runs), "RUNNER_AUDIT_LOG_DIR": str(audit_dir)}
    env = runner_env(**extra)
    if audit_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(AUDIT), env["PYTHONPATH"]])
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(job), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )
