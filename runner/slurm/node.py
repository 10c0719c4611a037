"""`runner run JOB --run-dir RUN` on a Slurm node: the attempt its submitter set up, once it is sure
that this allocation is the one the run's status records.

The batch script runs it with the submitter's interpreter (`runner.slurm.sbatch.node_command`);
the attempt itself is the same supervised run a local child process does
(`runner.executors.child.run_supervised`): it reports its end, the submitter writes it.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from runner.executors.child import run_supervised
from runner.outputs.runs import read_status, run_paths
from runner.slurm.states import SLURM_KEY

__all__ = ["check_allocation", "run_allocation"]


def run_allocation(
    run_dir: Path,
    spec_path: Path,
    runs_root: Path,
    *,
    registry: Path | None = None,
    allow_remote_code: bool = False,
    command: list[str] | None = None,
) -> int:
    """Run the attempt in `run_dir`; 1 without running it if this Slurm job is not the run's submission."""
    status = read_status(run_dir)
    slurm_job = os.environ.get("SLURM_JOB_ID")
    if status is not None and slurm_job and isinstance(status.extra.get(SLURM_KEY), dict):
        problem = check_allocation(run_dir, slurm_job)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 1
    return run_supervised(
        run_dir, spec_path, runs_root, registry=registry, allow_remote_code=allow_remote_code, command=command
    )


def check_allocation(run_dir: Path, job_id: str, *, wait: float = 30.0) -> str | None:
    """On the node: None if this Slurm job is the submission the run's status records, else why it
    must not run (a duplicate: its submitter died between sbatch and recording the job id, and the
    run was submitted again). The submitter records the id right after sbatch returns: wait for it."""
    deadline = time.monotonic() + wait
    while True:
        status = read_status(run_dir)
        record = status.extra.get(SLURM_KEY) if status is not None else None
        current = str(record.get("job_id")) if isinstance(record, dict) and record.get("job_id") else None
        if current == job_id:
            return None
        if time.monotonic() >= deadline:
            return (
                f"Slurm job {job_id} is not the submission that {run_paths(run_dir).status} records "
                f"({current or 'none'}); not running the same run twice"
            )
        time.sleep(1.0)
