"""Run folders: where they live, how they sort, and which one to resume."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.outputs.runs import (
    RUN_ID_RE,
    find_interrupted_run,
    is_pid_alive,
    latest_run,
    list_runs,
    new_run_dir,
    new_run_id,
    run_paths,
    runs_root,
)
from runner.outputs.status import JobState, StatusFile

from ._support import T0
from .conftest import MakeRun

SPEC = "a" * 64
OTHER_SPEC = "b" * 64


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- runs root


def test_runs_root_prefers_flag_then_env_then_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runs_root("/srv/runs", env={"RUNNER_RUNS": "/env/runs"}) == Path("/srv/runs")
    assert runs_root(None, env={"RUNNER_RUNS": "/env/runs"}) == Path("/env/runs")
    assert runs_root(None, env={}) == tmp_path / "runs"
    monkeypatch.setenv("RUNNER_RUNS", "/from/os/environ")
    assert runs_root(None) == Path("/from/os/environ")


def test_relative_runs_root_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert runs_root("out/runs", env={}) == tmp_path / "out" / "runs"


# ------------------------------------------------------------------- run ids


def test_run_id_is_utc_time_plus_random_hex() -> None:
    run_id = new_run_id(T0)
    assert RUN_ID_RE.match(run_id)
    assert run_id.startswith("20261122-044501-")


def test_runs_started_in_the_same_second_still_sort_in_creation_order(tmp_path: Path) -> None:
    made = [new_run_dir(tmp_path, "demo", now=T0) for _ in range(20)]
    assert list_runs(tmp_path, "demo") == made
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_list_runs_ignores_foreign_entries(tmp_path: Path) -> None:
    run = new_run_dir(tmp_path, "demo", now=T0)
    (tmp_path / "demo" / "latest").mkdir()
    (tmp_path / "demo" / ".tmp-20261122-044501-0000-ab").mkdir()
    assert list_runs(tmp_path, "demo") == [run]
    assert list_runs(tmp_path, "no-such-job") == []


def test_run_paths_layout(tmp_path: Path) -> None:
    p = run_paths(tmp_path / "r")
    assert (p.status.name, p.metrics.name, p.manifest.name) == ("status.json", "metrics.jsonl", "manifest.json")
    assert (p.checkpoints.name, p.adapter.name) == ("checkpoints", "adapter")


# --------------------------------------------------------------- latest_run


def test_latest_run_optionally_filtered_by_state(make_run: MakeRun, tmp_path: Path) -> None:
    root = tmp_path / "runs"
    ok = make_run(state=JobState.SUCCEEDED)
    failed = make_run(state=JobState.FAILED)
    assert latest_run(root, "demo") == failed
    assert latest_run(root, "demo", state="succeeded") == ok
    assert latest_run(root, "demo", state=JobState.RUNNING) is None
    assert latest_run(root, "other") is None


# ------------------------------------------------------------- resume lookup


def test_interrupted_run_of_the_same_spec_is_resumed(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(state=JobState.INTERRUPTED)
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) == run


def test_interrupted_run_of_a_different_spec_is_not_resumed(make_run: MakeRun, tmp_path: Path) -> None:
    make_run(state=JobState.INTERRUPTED, spec_sha256=OTHER_SPEC)
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) is None


def test_running_run_whose_process_died_is_resumed(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(state=JobState.RUNNING, pid=dead_pid())
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) == run


def test_running_run_whose_process_lives_is_not_resumed(make_run: MakeRun, tmp_path: Path) -> None:
    make_run(state=JobState.RUNNING, pid=os.getpid())
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) is None


def test_running_run_without_a_pid_is_not_resumed(make_run: MakeRun, tmp_path: Path) -> None:
    make_run(state=JobState.RUNNING, pid=None)
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) is None


def test_newer_finished_run_supersedes_an_older_interrupted_one(make_run: MakeRun, tmp_path: Path) -> None:
    make_run(state=JobState.INTERRUPTED)
    make_run(state=JobState.SUCCEEDED)
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) is None


def test_newer_run_of_another_spec_does_not_hide_the_interrupted_one(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(state=JobState.INTERRUPTED)
    make_run(state=JobState.FAILED, spec_sha256=OTHER_SPEC)
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) == run


def test_runs_with_unreadable_status_are_skipped(make_run: MakeRun, tmp_path: Path) -> None:
    run = make_run(state=JobState.INTERRUPTED)
    broken = new_run_dir(tmp_path / "runs", "demo")
    run_paths(broken).status.write_text("{not json")
    assert find_interrupted_run(tmp_path / "runs", "demo", SPEC) == run
    assert StatusFile(run_paths(run).status).read() is not None


def test_pid_liveness() -> None:
    assert is_pid_alive(os.getpid())
    assert not is_pid_alive(dead_pid())
    assert not is_pid_alive(None)
    assert not is_pid_alive(0), "pid 0 would mean 'my process group' to os.kill"
