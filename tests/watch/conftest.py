"""Fixtures for the daemon tests: a project folder (jobs/, data/, runs/), spec writers, and a
handle on a real `runner watch` process whose children train a tiny saved model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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

    def spec(
        self,
        *,
        steps: int = 4,
        save_every: int = 10,
        priority: int | None = None,
        source: str | None = None,
        seed: int = 42,
        **sections: dict[str, Any],
    ) -> str:
        """A small causal-LM job on the tiny model, one thread; `seed` makes distinct versions,
        keyword sections (data={...}) override or add keys."""
        import tomli_w

        spec: dict[str, Any] = {} if priority is None else {"priority": priority}
        spec |= {
            "model": {"source": source or f"local:{self.model}"},
            "data": {"train": "../data/train.jsonl", "max_length": 128},
            "train": {
                "max_steps": steps,
                "batch_size": 4,
                "learning_rate": 1e-3,
                "log_every": 1,
                "save_every": save_every,
                "seed": seed,
            },
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

    def start(
        self, *args: str, jobs: Path | None = None, env: dict[str, str] | None = None, prefix: list[str] | None = None
    ) -> Daemon:
        """`runner watch` on `jobs` (default: the project's jobs folder); `env` adds variables,
        `prefix` runs it through another command (`sh -c ...`)."""
        daemon = Daemon.start(self, list(args), jobs=jobs, env=env, prefix=prefix)
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
        return subprocess.run(
            [sys.executable, "-m", "runner", *args, "--runs-dir", str(self.runs)],
            capture_output=True,
            text=True,
            cwd=self.root,
            env=_env(),
            timeout=60,
        )


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
    def start(
        cls,
        project: Project,
        args: list[str],
        *,
        jobs: Path | None = None,
        env: dict[str, str] | None = None,
        prefix: list[str] | None = None,
    ) -> Daemon:
        log_path = project.root / f"daemon-{len(project.daemons)}.log"
        command = [
            sys.executable,
            "-m",
            "runner",
            "watch",
            str(jobs or project.jobs),
            "--runs-dir",
            str(project.runs),
            *args,
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [*(prefix or []), *command],
                cwd=project.root,
                env={**_env(), **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, like a service: tests signal the group
            )
        return cls(project, proc, log_path)

    def log(self) -> str:
        return f"[{self.log_path.name}]\n" + self.log_path.read_text(errors="replace")

    def wait_ready(self) -> Daemon:
        self.project.wait_for(
            lambda: "watching" in self.log_path.read_text() or self.proc.poll() is not None,
            timeout=30,
            why="the daemon to start",
        )
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


PAUSE_HOOK = '''"""Test hook (imported at start-up through PYTHONPATH): freeze this process with SIGSTOP in the
middle of writing a checkpoint or the final adapter, so that a test can kill it right there."""
import os
import signal

_AT, _, _NTH = os.environ.get("RUNNER_TEST_PAUSE_AT", "").partition(":")
if _AT:
    import runner.fsutil as _fsutil

    _seen = []

    def _pause(path):
        _seen.append(path)
        if len(_seen) != int(_NTH or 1):  # only the n-th write of its kind
            return
        marker = os.environ["RUNNER_TEST_PAUSED"]
        with open(marker + ".part", "w") as handle:
            handle.write(f"{os.getpid()}\\n{path}\\n")
        os.rename(marker + ".part", marker)
        os.kill(os.getpid(), signal.SIGSTOP)

    if _AT == "checkpoint":  # the first file we add to the Trainer's staging folder (before the marker)
        _write = _fsutil.atomic_write_bytes

        def atomic_write_bytes(path, data):
            folder = os.path.dirname(os.fspath(path))
            if os.path.basename(folder).startswith("checkpoint-") and \\
                    os.path.basename(os.path.dirname(folder)) == ".trainer" and folder not in _seen:
                _pause(folder)
            return _write(path, data)

        _fsutil.atomic_write_bytes = atomic_write_bytes
    elif _AT == "adapter":  # the adapter is written under its temp name, not yet renamed into place
        _sync = _fsutil.fsync_tree

        def fsync_tree(root):
            if os.path.basename(os.fspath(root)).startswith(".tmp-adapter-"):
                _pause(os.fspath(root))
            return _sync(root)

        _fsutil.fsync_tree = fsync_tree
'''


@dataclass
class Pause:
    """Freezes a job process mid-write (see PAUSE_HOOK): `env(...)` for the process, `wait()` for its pid."""

    folder: Path

    @property
    def marker(self) -> Path:
        return self.folder / "paused"

    def env(self, at: str) -> dict[str, str]:
        """`at`: "checkpoint" (the first), "checkpoint:2" (the second), "adapter"."""
        self.marker.unlink(missing_ok=True)
        return {
            "PYTHONPATH": f"{self.folder}{os.pathsep}{_env()['PYTHONPATH']}",
            "RUNNER_TEST_PAUSE_AT": at,
            "RUNNER_TEST_PAUSED": str(self.marker),
        }

    def wait(self, project: Project, timeout: float = 120) -> tuple[int, Path]:
        """The frozen process's pid and the folder it was writing, once it is stopped."""
        project.wait_for(self.marker.exists, timeout, why="the job to reach the write")
        pid_text, path = self.marker.read_text().splitlines()
        pid = int(pid_text)
        project.wait_for(lambda: _process_state(pid) == "T", 10, why=f"process {pid} stopped")
        return pid, Path(path)


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


@pytest.fixture
def pause(tmp_path: Path) -> Pause:
    folder = tmp_path / "pause-hook"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(PAUSE_HOOK)
    return Pause(folder)
