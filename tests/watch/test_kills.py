"""The watcher's edges with real processes: one daemon per real folder, nothing half-written left
after a kill, and a SIGKILL called `oom` only when the kernel's OOM killer sent it.

Kills "during a write" are exact: a test hook (conftest.PAUSE_HOOK) freezes the job process with
SIGSTOP in the middle of writing a checkpoint or the final adapter, the test lists the run folder
(the half-written thing is there), then kills the frozen process.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.executors.oom import memory_counter, oom_kill_count
from runner.outputs.runs import is_pid_alive
from runner.outputs.status import FailureClass, JobState

from .conftest import Pause, Project, _env
from .test_daemon import running_pid, states


def tree(run: Path) -> list[str]:
    """Everything under a run folder, relative (folders end with /)."""
    found = []
    for folder, dirs, files in os.walk(run):
        here = Path(folder).relative_to(run)
        found += [f"{(here / d).as_posix()}/" for d in dirs] + [(here / f).as_posix() for f in files]
    return sorted(p.removeprefix("./") for p in found)


def half_written(run: Path) -> list[str]:
    return [p for p in tree(run) if p.startswith(".trainer") or any(part.startswith(".tmp-") for part in p.split("/"))]


def runner_run(project: Project, job: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(job), "--runs-dir", str(project.runs)],
        cwd=project.root,
        env={**_env(), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_a_second_daemon_on_the_same_folder_through_a_symlink_or_another_state_folder_refuses(project: Project) -> None:
    alt = project.root / "alt"
    alt.mkdir()
    (alt / "jobs").symlink_to("../jobs")
    first = project.start().wait_ready()

    through_link = project.start(jobs=alt / "jobs")
    assert through_link.wait(timeout=30) != 0
    assert f"pid {first.proc.pid}" in through_link.log() and "holds the lock" in through_link.log()
    assert not (alt / ".runner").exists(), "no state folder beside the symlink"

    own_state = project.start("--state-dir", str(project.root / "elsewhere"), jobs=alt / "jobs")
    assert own_state.wait(timeout=30) != 0, "the runs folder's lock holds the real jobs folder too"
    assert f"pid {first.proc.pid}" in own_state.log() and f"{project.runs / '.watchers'}" in own_state.log()

    other_jobs = project.root / "other-jobs"
    other_jobs.mkdir()
    neighbour = project.start(jobs=other_jobs).wait_ready()  # another jobs folder, the same runs folder: warned
    project.wait_for(lambda: "warning: another `runner watch` writes runs to" in neighbour.log(), 10, why="warning")
    assert f"pid {first.proc.pid}" in neighbour.log() and str(project.jobs.resolve()) in neighbour.log()
    assert first.proc.poll() is None and neighbour.proc.poll() is None
    for daemon in (first, neighbour):
        daemon.signal_group(signal.SIGTERM)
        assert daemon.wait() == 0


def test_an_operators_sigkill_mid_checkpoint_leaves_nothing_half_written_and_the_run_waits_for_runner_run(
    project: Project, pause: Pause
) -> None:
    x = project.write("x.toml", project.spec(steps=12, save_every=4))
    project.write("y.toml", project.spec(steps=2, source="job:x"))
    daemon = project.start(env=pause.env("checkpoint:2")).wait_ready()
    pid, staging = pause.wait(project)  # writing the step-8 checkpoint into the Trainer's staging folder
    run = project.run_dirs("x")[-1]
    assert staging == run / ".trainer" / "checkpoint-8"
    assert any(p.startswith(".trainer/checkpoint-8/") for p in tree(run)) and "checkpoints/step-4/COMPLETE" in tree(run)
    os.kill(pid, signal.SIGKILL)

    project.wait_for(lambda: "killed; not retried" in daemon.log(), why="the kill recorded")
    killed = project.latest("x")
    assert (killed.state, killed.reason) == (JobState.INTERRUPTED, FailureClass.KILLED), killed.error
    assert "not by the kernel's out-of-memory killer" in (killed.error or "")  # this machine's cgroup counter says so
    assert "`runner run`" in (killed.error or "") and "--retry-killed" in (killed.error or "")
    assert half_written(run) == [], "cleaned when the attempt ended"
    assert "removed what its last attempt left half-written: .trainer" in daemon.log()
    time.sleep(1.5)
    assert project.latest("x").attempt == 1 and project.latest("x").state is JobState.INTERRUPTED, "not retried"
    waiting = project.latest("y").extra.get("waiting") or ""
    assert "job:x" in waiting and "was killed" in waiting, waiting
    shown = project.cli("status", "x").stdout
    assert "interrupted" in shown and "killed" in shown

    resumed = runner_run(project, x)  # what the message says: `runner run` on the job file resumes it
    out, _ = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, out
    done = project.latest("x")
    assert (done.state, done.attempt) == (JobState.SUCCEEDED, 2) and (done.resumed_from or "").endswith("step-4")
    assert project.metrics_steps("x") == list(range(1, 13))
    assert half_written(run) == [] and (run / "adapter").is_dir()
    project.wait_for(lambda: project.state("y") is JobState.SUCCEEDED, timeout=120, why="y runs once x succeeded")
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0


def test_killing_daemon_and_job_mid_adapter_write_the_next_daemon_cleans_up_and_resumes(
    project: Project, pause: Pause
) -> None:
    project.write("z.toml", project.spec(steps=6, save_every=3))
    daemon = project.start(env=pause.env("adapter")).wait_ready()
    pid, temp = pause.wait(project)
    run = project.run_dirs("z")[-1]
    assert temp.parent == run and temp.name.startswith(".tmp-adapter-")
    assert f"{temp.name}/adapter_model.safetensors" in tree(run) and not (run / "adapter").exists()
    os.kill(daemon.proc.pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    daemon.wait()
    project.wait_for(lambda: not is_pid_alive(pid), why="the job process gone")
    assert project.latest("z").state is JobState.RUNNING and half_written(run), "debris, and nobody left to see it"

    second = project.start()
    project.wait_for(lambda: project.state("z") is JobState.SUCCEEDED, timeout=150, why="z resumed")
    assert f"z/{run.name}: removed what its last attempt left half-written: " in second.log()
    assert temp.name in second.log()
    done = project.latest("z")
    assert done.attempt == 2 and (done.resumed_from or "").endswith("step-6")
    assert half_written(run) == [] and (run / "adapter" / "adapter_model.safetensors").is_file()
    second.signal_group(signal.SIGTERM)
    assert second.wait() == 0


def test_runner_run_killed_mid_adapter_write_is_cleaned_and_resumed_by_the_next_runner_run(
    project: Project, pause: Pause
) -> None:
    job = project.write("f.toml", project.spec(steps=4, save_every=2))
    first = runner_run(project, job, env=pause.env("adapter"))
    pid, temp = pause.wait(project)
    os.kill(pid, signal.SIGKILL)
    first.communicate(timeout=30)
    run = project.run_dirs("f")[-1]
    assert temp.name in [p.rstrip("/") for p in tree(run)]

    again = runner_run(project, job)
    out, _ = again.communicate(timeout=180)
    assert again.returncode == 0, out
    done = project.latest("f")
    assert (done.state, done.attempt) == (JobState.SUCCEEDED, 2) and half_written(run) == []


def test_with_retry_killed_a_killed_run_is_queued_again_and_resumes(project: Project) -> None:
    project.write("r.toml", project.spec(steps=8, save_every=2))
    daemon = project.start("--retry-killed").wait_ready()
    os.kill(running_pid(project, "r", min_step=3), signal.SIGKILL)
    project.wait_for(lambda: project.state("r") is JobState.SUCCEEDED, timeout=150, why="r retried")
    done = project.latest("r")
    assert done.attempt == 2 and states(done) == ["queued", "running", "interrupted", "queued", "running", "succeeded"]
    assert [h.reason for h in done.history if h.to_state is JobState.INTERRUPTED] == [FailureClass.KILLED]
    assert project.metrics_steps("r") == list(range(1, 9))
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0


# ------------------------------------------------------------------------------ a real OOM kill


@pytest.fixture
def memory_limited_cgroup() -> Iterator[Path]:
    """A child of this process's memory cgroup limited to 160 MiB (a daemon takes ~40), or a skip
    saying why this machine does not allow one."""
    try:
        counter = memory_counter(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
    except OSError as exc:
        pytest.skip(f"cannot read this process's cgroup: {exc}")
    if counter is None:
        pytest.skip("no memory cgroup to read here (neither cgroup v2 memory.events nor v1 memory.oom_control)")
    group = counter.parent / f"runner-test-{secrets.token_hex(4)}"
    limit = str(160 * 1024 * 1024)
    try:
        group.mkdir()
        if counter.name == "memory.oom_control":  # cgroup v1
            (group / "memory.limit_in_bytes").write_text(limit)
            if (group / "memory.memsw.limit_in_bytes").exists():
                (group / "memory.memsw.limit_in_bytes").write_text(limit)
        else:
            (group / "memory.max").write_text(limit)
            (group / "memory.swap.max").write_text("0")
    except OSError as exc:
        if group.exists():
            group.rmdir()
        pytest.skip(f"this machine does not let the tests make a memory-limited cgroup under {counter.parent}: {exc}")
    yield group
    deadline = time.monotonic() + 10
    while True:
        try:
            group.rmdir()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_a_job_the_oom_killer_kills_under_a_cgroup_limit_fails_with_class_oom(
    project: Project, memory_limited_cgroup: Path
) -> None:
    counter = memory_limited_cgroup / (
        "memory.events" if (memory_limited_cgroup / "memory.events").exists() else "memory.oom_control"
    )
    into = f'echo $$ > {memory_limited_cgroup / "cgroup.procs"} && exec "$@"'
    daemon = project.start(prefix=["sh", "-c", into, "sh"]).wait_ready()  # the daemon, and so its jobs, in the cgroup
    project.write("big.toml", project.spec(steps=50))
    project.wait_for(lambda: project.state("big") is JobState.FAILED, timeout=120, why="big killed by the OOM killer")
    big = project.latest("big")
    assert big.reason is FailureClass.OOM and "out-of-memory killer" in (big.error or ""), big.error
    assert (oom_kill_count(counter) or 0) >= 1, "the kernel counted the kill in the job's cgroup"
    assert daemon.proc.poll() is None, "the job, not the daemon, was the victim"
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0
