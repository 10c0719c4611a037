"""A preference run stopped with SIGTERM resumes to the weights of an uninterrupted run, and its
precomputed reference log-probabilities are read from the cache, not computed again."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from runner.outputs.runs import list_runs

ROOT = Path(__file__).resolve().parents[2]
STEPS = 16
PAIRS = [
    {
        "instruction": f"What is {i} + {i}?",
        "input": "",
        "chosen": f"{i} + {i} = {2 * i}.",
        "rejected": f"I cannot answer questions about {i}.",
    }
    for i in range(32)
]


def _start(job: Path, runs: Path, home: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "RUNNER_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(job), "--runs-dir", str(runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=ROOT,
    )


def _status(runs: Path) -> dict:
    (run,) = list_runs(runs, "tiny")
    return json.loads((run / "status.json").read_text())


def _wait_for_step(runs: Path, proc: subprocess.Popen[str], step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        try:
            if (_status(runs).get("step") or 0) >= step:
                return
        except (ValueError, FileNotFoundError):  # no run folder or status yet
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"the run did not reach step {step}")


def _finish(job: Path, runs: Path, home: Path) -> str:
    proc = _start(job, runs, home)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    return out


def _weights(runs: Path) -> dict[str, torch.Tensor]:
    (run,) = list_runs(runs, "tiny")
    return load_file(str(run / "adapter" / "model.safetensors"))


def test_a_stopped_preference_run_resumes_to_the_same_weights_without_recomputing_its_reference(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = write_job(
        rows=PAIRS,
        loss={"type": "dpo", "reference": "precompute"},
        adapter={"method": "full"},
        data={"eval_fraction": 0.0},
        train={"max_steps": STEPS, "save_every": 4, "batch_size": 2, "learning_rate": 1e-4},
    )
    _finish(job, tmp_path / "reference", tmp_path / "home-a")

    runs, home = tmp_path / "runs", tmp_path / "home-b"
    proc = _start(job, runs, home)
    _wait_for_step(runs, proc, 6)
    proc.send_signal(signal.SIGTERM)
    first, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, first
    assert "examples computed in" in first
    stopped = _status(runs)
    assert stopped["state"] == "interrupted" and stopped["step"] < STEPS

    resumed = _finish(job, runs, home)
    assert "examples read from the cache" in resumed and "examples computed in" not in resumed
    status = _status(runs)
    assert status["state"] == "succeeded" and status["attempt"] == 2
    assert status["extra"]["reference"]["cache_hit"] is True
    (run,) = list_runs(runs, "tiny")
    steps = [
        json.loads(line)["step"]
        for line in (run / "metrics.jsonl").read_text().splitlines()
        if "loss" in json.loads(line)
    ]
    assert steps == list(range(1, STEPS + 1))
    expected, got = _weights(tmp_path / "reference"), _weights(runs)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)
