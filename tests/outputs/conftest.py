from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from runner.outputs.runs import new_run_dir, run_paths
from runner.outputs.status import JobState, StatusFile, new_status

from ._support import T0

# How to reach each state from a fresh run (through legal transitions only).
PATHS: dict[JobState, list[JobState]] = {
    JobState.QUEUED: [],
    JobState.INVALID: [JobState.INVALID],
    JobState.RUNNING: [JobState.RUNNING],
    JobState.SUCCEEDED: [JobState.RUNNING, JobState.SUCCEEDED],
    JobState.FAILED: [JobState.RUNNING, JobState.FAILED],
    JobState.CANCELLED: [JobState.CANCELLED],
    JobState.INTERRUPTED: [JobState.RUNNING, JobState.INTERRUPTED],
}

MakeRun = Callable[..., Path]


@pytest.fixture
def make_run(tmp_path: Path) -> MakeRun:
    """Create a run of ``job`` in ``state`` under tmp_path/runs, the way the runner would."""
    counter = iter(range(10_000))

    def make(
        job: str = "demo",
        state: JobState = JobState.QUEUED,
        *,
        spec_sha256: str = "a" * 64,
        pid: int | None = None,
        root: Path | None = None,
    ) -> Path:
        when = T0 + timedelta(minutes=next(counter))
        run_dir = new_run_dir(root or tmp_path / "runs", job, now=when)
        sf = StatusFile(run_paths(run_dir).status)
        sf.create(new_status(job, run_dir.name, spec_sha256=spec_sha256, now=when))
        for to in PATHS[state]:
            sf.transition(to, now=when, **({"pid": pid} if to is JobState.RUNNING else {}))
        return run_dir

    return make
