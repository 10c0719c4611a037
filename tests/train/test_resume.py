"""Stopping and resuming a real `runner run` process: nothing trained is lost or trained twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from runner.outputs.checkpoints import COMPLETE_MARKER, list_checkpoints
from runner.outputs.runs import list_runs

ROOT = Path(__file__).resolve().parents[2]
STEPS = 24


def _start(job: Path, runs: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
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


def _wait_for(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"process ended early ({proc.returncode}):\n{proc.stdout.read() if proc.stdout else ''}"
            )
        try:
            if predicate():
                return
        except (ValueError, FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("timed out")


def _train_steps(runs: Path) -> list[int]:
    (run,) = list_runs(runs, "tiny")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m["step"] for m in lines if "loss" in m]


def _adapter(runs: Path) -> dict[str, torch.Tensor]:
    (run,) = list_runs(runs, "tiny")
    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.fixture
def long_job(write_job: Callable[..., Path]) -> Path:
    return write_job(
        data={"eval_fraction": 0.0},
        adapter={"dropout": 0.0},
        train={"max_steps": STEPS, "save_every": 4, "log_every": 1, "batch_size": 2, "keep_checkpoints": 3},
    )


def _run_to_end(job: Path, runs: Path) -> subprocess.CompletedProcess[str]:
    proc = _start(job, runs)
    out, _ = proc.communicate(timeout=300)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out)


def test_sigterm_checkpoints_and_a_rerun_resumes_to_the_same_weights(long_job: Path, tmp_path: Path) -> None:
    reference = _run_to_end(long_job, tmp_path / "reference")
    assert reference.returncode == 0, reference.stdout

    runs = tmp_path / "runs"
    proc = _start(long_job, runs)
    _wait_for(lambda: (_status(runs).get("step") or 0) >= 6, proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, out
    status = _status(runs)
    assert status["state"] == "interrupted"
    stopped_at = status["step"]
    assert stopped_at < STEPS
    (run,) = list_runs(runs, "tiny")
    assert [c.step for c in list_checkpoints(run / "checkpoints") if c.complete][-1] == stopped_at

    resumed = _run_to_end(long_job, runs)
    assert resumed.returncode == 0, resumed.stdout
    assert f"from step-{stopped_at}" in resumed.stdout
    status = _status(runs)
    assert status["state"] == "succeeded" and status["attempt"] == 2
    assert _train_steps(runs) == list(range(1, STEPS + 1))  # continuous, nothing twice
    # same data order, optimizer and scheduler state: the weights match an uninterrupted run
    expected, got = _adapter(tmp_path / "reference"), _adapter(runs)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4)


def test_sigkill_leaves_a_dead_running_run_that_the_next_run_resumes(long_job: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = _start(long_job, runs)

    def has_checkpoint() -> bool:
        (run,) = list_runs(runs, "tiny")
        return any(c.complete and c.step >= 8 for c in list_checkpoints(run / "checkpoints"))

    _wait_for(has_checkpoint, proc)
    proc.kill()
    proc.wait()
    assert _status(runs)["state"] == "running"  # nobody could write anything else

    resumed = _run_to_end(long_job, runs)
    assert resumed.returncode == 0, resumed.stdout
    status = _status(runs)
    assert status["state"] == "succeeded" and status["attempt"] == 2
    assert status["resumed_from"].rsplit("step-", 1)[1].isdigit()
    assert _train_steps(runs) == list(range(1, STEPS + 1))


def test_an_incomplete_checkpoint_is_skipped_with_a_message(long_job: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    proc = _start(long_job, runs)
    _wait_for(lambda: (_status(runs).get("step") or 0) >= 9, proc)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=120)
    (run,) = list_runs(runs, "tiny")
    complete = [c for c in list_checkpoints(run / "checkpoints") if c.complete]
    newest, previous = complete[-1], complete[-2]
    (newest.path / COMPLETE_MARKER).unlink()  # as if the process died while writing it

    resumed = _run_to_end(long_job, runs)
    assert resumed.returncode == 0, resumed.stdout
    assert f"skipping incomplete checkpoint {newest.path.name}" in resumed.stdout
    assert f"from {previous.path.name}" in resumed.stdout
    assert _train_steps(runs) == list(range(1, STEPS + 1))
