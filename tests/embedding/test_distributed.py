"""Negatives span the global batch: two processes (torchrun, gloo, CPU) give the loss and the
gradients of one process over the concatenated batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_two_ranks_match_one_process_over_the_global_batch(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "MASTER_ADDR": "127.0.0.1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "0",
            "--standalone",
            str(Path(__file__).with_name("dist_worker.py")),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert set(result) == {"contrastive_symmetric", "matryoshka", "cosent"}
    for name, numbers in result.items():
        assert abs(numbers["loss"] - numbers["reference_loss"]) < 1e-5, (name, numbers)
        assert numbers["max_grad_diff"] < 1e-5, (name, numbers)
        assert numbers["grad_norm"] > 1e-3, (name, numbers)  # gradients that could differ at all


def test_a_multi_task_job_trains_in_two_processes_with_identical_replicas(write_job, tmp_path: Path) -> None:
    from runner.commands import main

    from .helpers import metrics_of, only_run, pair_rows, status_of

    rows = [dict(row, task="search" if i % 2 else "match") for i, row in enumerate(pair_rows(32))]
    job = write_job(
        rows=rows,
        loss={"type": "multi-task", "tasks": {"search": {}, "match": {"symmetric": True}}},
        train={"max_steps": 3, "batch_size": 4, "save_every": 100},
        resources={"nproc": 2, "threads": 1},
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = only_run(runs)
    status = status_of(run)
    assert status["state"] == "succeeded" and status["extra"]["device"]["processes"] == 2
    first, second = status["extra"]["replica_sha256"]
    assert first == second  # DDP kept the ranks' adapters identical
    # a global batch is 2 processes x 4: 32 examples (16 per task) make 4 steps an epoch
    assert [m["epoch"] for m in metrics_of(run) if "loss" in m] == [0.25, 0.5, 0.75]
    assert {p.name for p in (run / "adapter").iterdir()} >= {"search", "match", "runner_adapter.json"}
