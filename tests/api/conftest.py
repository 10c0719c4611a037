"""Fixtures for the API tests: a project folder (jobs/, data/, runs/) whose runs are written the way
the daemon and the trainer write them, and a TestClient on the API of that folder.

Most tests need no training: a run is a status.json moved through the real transition function
plus a metrics.jsonl, which is all the API reads. tests/api/test_e2e.py runs a real daemon.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from runner.api.app import create_app
from runner.api.settings import ApiSettings
from runner.outputs.metrics import MetricsLog
from runner.outputs.runs import new_run_dir, run_paths
from runner.outputs.status import JobState, StatusFile, new_status
from runner.watch.store import SPEC_SNAPSHOT

KEY = "test-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
BASE_URL = "http://127.0.0.1:8200"
ROWS = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}."} for i in range(8)]


def spec_text(name: str | None = "a", *, train: str = "../data/train.jsonl", extra: str = "") -> str:
    """A valid job file (the model need not exist: validation does not load it)."""
    head = f'name = "{name}"\n' if name else ""
    return (
        head + '[model]\nsource = "local:../models/tiny"\n'
        f'[data]\ntrain = "{train}"\nmax_length = 128\n'
        "[adapter]\nr = 8\nalpha = 16\n[train]\nmax_steps = 4\nbatch_size = 4\n" + extra
    )


@dataclass
class ApiProject:
    root: Path
    settings: ApiSettings
    client: TestClient

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def state_dir(self) -> Path:
        return self.root / ".runner" / "watch-jobs"

    def add_run(
        self,
        job: str,
        state: JobState = JobState.SUCCEEDED,
        *,
        steps: int = 6,
        done: int | None = None,
        losses: list[float] | None = None,
        eval_every: int = 2,
        reason: str | None = None,
        error: str | None = None,
        attempt: int = 1,
        spec: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """A run as the daemon and the trainer leave it: status through the transition function,
        metrics.jsonl, the queued spec snapshot."""
        run = new_run_dir(self.runs, job)
        text = spec if spec is not None else spec_text(job)
        (run / SPEC_SNAPSHOT).write_text(text, encoding="utf-8")
        watch = {
            "state_dir": str(self.state_dir),
            "jobs_dir": str(self.jobs),
            "spec": f"{job}.toml",
            "seq": 1,
            "priority": 0,
            "depends_on": [],
        }
        status_file = StatusFile(run_paths(run).status)
        if state is JobState.INVALID:
            status_file.create(
                new_status(job, run.name, state=JobState.INVALID, error=error, extra={"watch": watch, **(extra or {})})
            )
            return run
        status_file.create(new_status(job, run.name, spec_sha256="0" * 64, extra={"watch": watch, **(extra or {})}))
        for _ in range(attempt - 1):
            status_file.transition(JobState.RUNNING, pid=1)
            status_file.transition(JobState.INTERRUPTED)
            status_file.transition(JobState.QUEUED)
        if state is JobState.QUEUED:
            return run
        losses = losses if losses is not None else [2.0 - 0.1 * i for i in range(steps)]
        step = done if done is not None else (steps if state is JobState.SUCCEEDED else steps // 2)
        status_file.transition(
            JobState.RUNNING,
            pid=2**22 + 7,
            total_steps=steps,
            trainable_params=32768,
            total_params=132416,
            adapter={"method": "lora", "r": 8, "alpha": 16, "dropout": 0.05, "target_modules": ["all-linear"]},
        )
        with MetricsLog(run_paths(run).metrics) as log:
            for i in range(step):
                log.append({"step": i + 1, "loss": losses[i], "learning_rate": 1e-3})
                if (i + 1) % eval_every == 0:
                    log.append({"step": i + 1, "eval_loss": losses[i] + 0.05, "eval_runtime": 0.01})
        status_file.update(
            step=step,
            loss=losses[step - 1] if step else None,
            eta_seconds=42.0,
            extra={"eval_loss": losses[step - 1] + 0.05 if step else None},
        )
        if state is not JobState.RUNNING:
            status_file.transition(state, reason=reason, error=error)
        return run


def make_settings(root: Path, **overrides: Any) -> ApiSettings:
    options: dict[str, Any] = dict(
        jobs_dir=root / "jobs",
        runs_root=root / "runs",
        state_dir=root / ".runner" / "watch-jobs",
        env={"RUNNER_API_KEY": KEY},
    )
    options.update(overrides)
    return ApiSettings.build(**options)


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiProject]:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    settings = make_settings(tmp_path)
    with TestClient(create_app(settings), base_url=BASE_URL) as client:
        yield ApiProject(tmp_path, settings, client)
