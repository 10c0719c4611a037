"""`runner run` with resources.nproc = 2 on the CPU: torchrun workers (gloo, DDP) train the job;
the replicas end identical, only rank 0 writes, and a SIGTERM ends in one checkpoint on every rank."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from runner.outputs.checkpoints import list_checkpoints
from runner.outputs.runs import list_runs
from runner.train.distributed import state_digest

from .conftest import start_run


def _run_dir(runs: Path, job: str = "ddp") -> Path:
    (run,) = list_runs(runs, job)
    return run


def _train_steps(run: Path) -> list[int]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [m["step"] for m in lines if "loss" in m]


def test_two_processes_train_with_ddp_identical_replicas_and_only_rank_0_writes(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = write_job("ddp", data={"eval_fraction": 0.25}, eval={"every": 3}, resources={"nproc": 2, "device": "cpu"})
    runs = tmp_path / "runs"
    proc = start_run(job, runs, audit_dir=tmp_path / "audit")
    out, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, out
    assert "launching 2 processes with torchrun (gloo, ddp" in out

    run = _run_dir(runs)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and status["step"] == 6
    assert status["extra"]["device"]["processes"] == 2 and status["extra"]["device"]["backend"] == "gloo"
    assert status["extra"]["eval_loss_after"] < status["extra"]["eval_loss_before"]
    # every rank ended with the same adapter, and it is the one that was saved
    digests = status["extra"]["replica_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert state_digest(load_file(str(run / "adapter" / "adapter_model.safetensors"))) == digests[0]

    # one writer: each step logged once, checkpoints hold both ranks' RNG states (written by rank 0)
    assert _train_steps(run) == [1, 2, 3, 4, 5, 6]
    checkpoints = list_checkpoints(run / "checkpoints", verify_hashes=True)
    assert [(c.step, c.complete) for c in checkpoints] == [(3, True), (6, True)]
    marker = json.loads((checkpoints[-1].path / "COMPLETE").read_text())
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(marker["files"])
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runtime"]["processes"] == 2 and manifest["runtime"]["strategy"] == "ddp"

    rank0 = (tmp_path / "audit" / "rank-0.log").read_text().splitlines()
    rank1 = (tmp_path / "audit" / "rank-1.log").read_text().splitlines()
    assert any("status.json" in line for line in rank0) and any("metrics.jsonl" in line for line in rank0)
    assert any("checkpoint" in line for line in rank0) and any("adapter" in line for line in rank0)
    assert rank1 == [], "rank 1 wrote into the run folder:\n" + "\n".join(rank1)


def _wait_for_step(runs: Path, proc: object, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read()  # type: ignore[attr-defined]
        try:
            if (json.loads((_run_dir(runs) / "status.json").read_text()).get("step") or 0) >= step:
                return
        except (ValueError, FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.05)
    proc.kill()  # type: ignore[attr-defined]
    raise AssertionError("timed out")


def test_sigterm_reaches_every_rank_and_ends_in_one_checkpoint_then_the_run_resumes(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    steps = 40
    job = write_job(
        "ddp",
        adapter={"dropout": 0.0},
        train={"max_steps": steps, "batch_size": 2, "save_every": 1000, "log_every": 1},
        resources={"nproc": 2, "device": "cpu"},
    )
    runs = tmp_path / "runs"
    proc = start_run(job, runs)
    _wait_for_step(runs, proc, 3)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 3, out  # interrupted (resumable), not failed
    run = _run_dir(runs)
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "interrupted", status
    stopped = status["step"]
    assert 3 <= stopped < steps
    (only,) = list_checkpoints(run / "checkpoints")  # no periodic save: the one the SIGTERM asked for
    assert only.complete and only.step == stopped
    assert {p.name for p in only.path.iterdir()} >= {"rng_state_0.pth", "rng_state_1.pth", "optimizer.pt"}

    resumed = start_run(job, runs)
    out, _ = resumed.communicate(timeout=500)
    assert resumed.returncode == 0, out
    assert f"from step-{stopped}" in out
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "succeeded" and status["attempt"] == 2
    assert _train_steps(run) == list(range(1, steps + 1))  # continuous, nothing twice
    digests = status["extra"]["replica_sha256"]
    assert digests[0] == digests[1]


def test_worker_reports_become_the_outcome_a_single_process_run_would_have(tmp_path: Path) -> None:
    from runner.data.report import DataError
    from runner.train.launch import OUTCOME_FILE, WorkerCrashed, _collect
    from runner.train.model import DeviceChoice, ModelSetupError

    choice = DeviceChoice(device="cpu", dtype="float32", precision="fp32", attn_implementation="sdpa")

    def report(rank: int, kind: str, at: float) -> None:
        (tmp_path / f"rank-{rank}.error.json").write_text(
            json.dumps(
                {"rank": rank, "kind": kind, "type": "X", "message": f"{kind} on {rank}", "traceback": "tb", "time": at}
            )
        )

    report(1, "crash", 1.0)  # the peer of the failing rank loses its connection: not the cause
    report(0, "data", 2.0)
    with pytest.raises(DataError, match="rank 0: data on 0") as caught:
        _collect(tmp_path, 1, False)
    assert any("traceback of rank 0" in note for note in caught.value.__notes__)
    report(0, "config", 2.0)
    with pytest.raises(ModelSetupError):
        _collect(tmp_path, 1, False)
    for path in tmp_path.glob("rank-*.error.json"):
        path.unlink()
    with pytest.raises(KeyboardInterrupt):  # stopped by us before anything was reported
        _collect(tmp_path, 1, True)
    with pytest.raises(WorkerCrashed, match="no worker reported why"):
        _collect(tmp_path, 1, False)
    (tmp_path / OUTCOME_FILE).write_text(
        json.dumps(
            {
                "interrupted": True,
                "global_step": 4,
                "total_steps": 9,
                "eval_loss_before": None,
                "eval_loss_after": None,
                "trainable_params": 1,
                "total_params": 2,
                "device": choice.to_dict(),
                "data": {},
                "seconds": 1.0,
                "extra": {},
            }
        )
    )
    outcome = _collect(tmp_path, 1, True)  # torchrun's exit code does not matter: rank 0 reported
    assert outcome.interrupted and outcome.global_step == 4 and outcome.device == choice
