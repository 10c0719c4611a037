"""Fixtures for the daemon tests: a project folder (jobs/, data/, runs/), spec writers, and a
handle on a real `runner watch` process whose children train a tiny saved model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

from runner.outputs.runs import is_pid_alive, list_runs, read_status
from runner.outputs.status import JobState, Status

from ..train.tiny import save_tiny_causal_lm

REPO = Path(__file__).resolve().parents[2]
ALPACA_ROWS = [  # the rows of tests/train/conftest.py
    {"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}."} for i in range(48)
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    torch.set_num_threads(1)
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")


@dataclass
class Project:
    root: Path
    model: Path
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def jobs(self) -> Path:
        return self.root / "jobs"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def spec(self, *, steps: int = 4, save_every: int = 10, priority: int | None = None, source: str | None = None,
             seed: int = 42, **sections: dict[str, Any]) -> str:
        """A small causal-LM job on the tiny model, one thread; `seed` makes distinct versions,
        keyword sections (data={...}) override or add keys."""
        import tomli_w

        spec: dict[str, Any] = {} if priority is None else {"priority": priority}
        spec |= {
            "model": {"source": source or f"local:{self.model}"},
            "data": {"train": "../data/train.jsonl", "max_length": 128},
            "train": {"max_steps": steps, "batch_size": 4, "learning_rate": 1e-3, "log_every": 1,
                      "save_every": save_every, "seed": seed},
            "resources": {"threads": 1},
        }
        for section, values in sections.items():
            spec.setdefault(section, {}).update(values)
        return tomli_w.dumps(spec)

    def write(self, name: str, text: str) -> Path:
        path = self.jobs / name
        path.write_text(text, encoding="utf-8")
        return path

    def save_like_an_editor(self, name: str, text: str) -> None:
        """Write a temp file next to the target, then rename over it (vim, VS Code, atomic savers)."""
        tmp = self.jobs / f".{name}.swp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, self.jobs / name)

    def runs_of(self, job: str) -> list[Status]:
        return [s for run in list_runs(self.runs, job) if (s := read_status(run)) is not None]

    def run_dirs(self, job: str) -> list[Path]:
        return list_runs(self.runs, job)

    def state(self, job: str) -> JobState | None:
        runs = self.runs_of(job)
        return runs[-1].state if runs else None

    def latest(self, job: str) -> Status:
        runs = self.runs_of(job)
        assert runs, f"no run of {job}"
        return runs[-1]

    def metrics_steps(self, job: str) -> list[int]:
        path = self.run_dirs(job)[-1] / "metrics.jsonl"
        return [r["step"] for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]

    def start(self, *args: str) -> Daemon:
        daemon = Daemon.start(self, list(args))
        self.daemons.append(daemon)
        return daemon

    def wait_for(self, what: Callable[[], Any], timeout: float = 60.0, why: str = "") -> Any:
        """Poll until `what()` is truthy; on timeout fail with the daemons' logs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(0.05)
        logs = "\n".join(d.log() for d in self.daemons)
        pytest.fail(f"timed out after {timeout} s waiting for {why or what}\n--- daemon logs ---\n{logs}")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "runner", *args, "--runs-dir", str(self.runs)],
                              capture_output=True, text=True, cwd=self.root, env=_env(), timeout=60)


def _env() -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RUNNER_RUNS", None)
    return env


@dataclass
class Daemon:
    project: Project
    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(cls, project: Project, args: list[str]) -> Daemon:
        log_path = project.root / f"daemon-{len(project.daemons)}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "watch", str(project.jobs), "--runs-dir", str(project.runs), *args],
                cwd=project.root, env=_env(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a service: tests signal the group
            )
        return cls(project, proc, log_path)

    def log(self) -> str:
        return f"[{self.log_path.name}]\n" + self.log_path.read_text(errors="replace")

    def wait_ready(self) -> Daemon:
        self.project.wait_for(lambda: "watching" in self.log_path.read_text() or self.proc.poll() is not None,
                              timeout=30, why="the daemon to start")
        assert self.proc.poll() is None, self.log()
        return self

    def signal_group(self, sig: int) -> None:
        os.killpg(self.proc.pid, sig)

    def wait(self, timeout: float = 60.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the daemon did not exit within {timeout} s\n{self.log()}")


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Any:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS))
    proj = Project(tmp_path, tiny_model_dir)
    yield proj
    # Leave nothing running: daemons first (their children then get SIGTERM from the kernel),
    # then any job process a status still names.
    for daemon in proj.daemons:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
    for job_dir in proj.runs.glob("*"):
        for run in list_runs(proj.runs, job_dir.name):
            status = read_status(run)
            if status is not None and status.pid and is_pid_alive(status.pid):
                try:
                    os.kill(status.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
