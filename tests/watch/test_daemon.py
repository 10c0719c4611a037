"""`runner watch` as a real process: its children train a tiny model for a few steps.

Each test asserts what a user relies on and what would break if the daemon got it wrong:
one run per spec version, resumes that continue the step count, classified failures, a lock.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

from runner.outputs.checkpoints import latest_complete
from runner.outputs.runs import is_pid_alive
from runner.outputs.status import FailureClass, JobState, Status

from .conftest import Project, _env

TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INVALID}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def states(status: Status) -> list[str]:
    return [str(h.to_state) for h in status.history]


def running_pid(
    project: Project, job: str, attempt: int = 1, min_step: int = 0, timeout: float = 90, resumed: bool = False
) -> int:
    """The pid of the job's process once it reports `min_step`. A resumed attempt starts with the
    step count its predecessor left in the status, so `resumed=True` also waits for the new
    process to say where it resumed from (before that, the step is not its own)."""

    def ready() -> int | None:
        runs = project.runs_of(job)
        s = runs[-1] if runs else None
        ok = s is not None and s.state is JobState.RUNNING and s.pid and s.attempt == attempt
        ok = ok and (not resumed or bool(s.resumed_from))  # type: ignore[union-attr]
        return s.pid if ok and (s.step or 0) >= min_step else None  # type: ignore[union-attr]

    return int(project.wait_for(ready, timeout, why=f"{job} running (attempt {attempt}, step >= {min_step})"))


def finished(project: Project, *jobs: str) -> bool:
    return all(project.state(job) in TERMINAL for job in jobs)


def test_two_jobs_succeed_an_invalid_spec_is_recorded_and_the_cli_shows_them(project: Project) -> None:
    daemon = project.start().wait_ready()
    project.write("a.toml", project.spec(steps=4))
    project.write("bad.toml", '[model]\nsource = "local:x"\n[data]\ntrain = "t.jsonl"\n[adapter]\nrnak = 4\n')
    running_pid(project, "a")
    project.write("c.toml", project.spec(steps=3))  # lands while a job runs
    project.wait_for(lambda: project.runs_of("c"), why="c queued")
    follow = subprocess.Popen(
        [sys.executable, "-m", "runner", "logs", "c", "-f", "--runs-dir", str(project.runs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
    )
    project.wait_for(lambda: finished(project, "a", "c"), timeout=150, why="a and c finished")

    a, c, bad = project.latest("a"), project.latest("c"), project.latest("bad")
    assert (a.state, a.step, c.state, c.step) == (JobState.SUCCEEDED, 4, JobState.SUCCEEDED, 3)
    assert bad.state is JobState.INVALID and bad.reason is FailureClass.CONFIG
    assert "bad.toml:6:1: adapter.rnak: unknown key 'rnak'" in (bad.error or "")
    assert bad.extra["errors"][0]["line"] == 6 and states(bad) == ["invalid"]
    assert [len(project.runs_of(j)) for j in ("a", "bad", "c")] == [1, 1, 1]
    assert a.started and c.started and a.finished and c.created < a.finished <= c.started, "one job at a time"

    rows = json.loads(project.cli("status", "--json").stdout)
    assert {r["job"]: r["state"] for r in rows} == {"a": "succeeded", "bad": "invalid", "c": "succeeded"}
    table = project.cli("status").stdout.splitlines()
    assert table[0].split() == ["JOB", "STATE", "ATTEMPT", "STEP", "LOSS", "ETA", "STARTED", "REASON"]
    assert any(line.split()[:4] == ["a", "succeeded", "1", "4/4"] for line in table)
    log = project.cli("logs", "a").stdout
    assert "attempt 1 of a/" in log and "[4/4]" in log and "succeeded in" in log
    out, _ = follow.communicate(timeout=30)  # `logs -f` ends by itself when the run ends
    assert follow.returncode == 0 and "[3/3]" in out and "succeeded in" in out

    assert daemon.proc.poll() is None, "an invalid spec does not stop the daemon"
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0


def test_editor_saves_partial_writes_and_a_burst_give_one_run_per_spec_version(project: Project) -> None:
    x1 = project.spec(steps=3000, priority=100)
    project.write("x.toml", x1)  # a long job keeps the daemon busy: everything below lands while it runs
    daemon = project.start().wait_ready()
    running_pid(project, "x")

    y_versions = [project.spec(seed=s) for s in (1, 2, 3)]
    for text in y_versions:  # three quick editor saves (temp file + rename)
        project.save_like_an_editor("y.toml", text)
    project.wait_for(lambda: project.runs_of("y"), why="y queued")
    y_final = project.spec(seed=4)
    project.save_like_an_editor("y.toml", y_final)
    project.save_like_an_editor("y.toml", y_final)  # a re-save of the same bytes is not a new version

    z = project.spec(seed=5)
    cut = z.index("local:") + 3  # mid-string: the first half is not valid TOML
    with open(project.jobs / "z.toml", "w") as handle:  # a slow writer pausing mid-file
        handle.write(z[:cut])
        handle.flush()
        time.sleep(0.7)
        handle.write(z[cut:])

    burst = {f"b{i:02d}": project.spec(seed=100 + i) for i in range(50)}
    for name, text in burst.items():
        project.write(f"{name}.toml", text)
    x2 = project.spec(steps=3000, priority=100, seed=9)
    project.save_like_an_editor("x.toml", x2)  # the running job's file changes

    project.wait_for(
        lambda: (
            all(project.runs_of(n) for n in burst)
            and len(project.runs_of("x")) == 2
            and project.runs_of("z")
            and any(r.spec_sha256 == sha(y_final) for r in project.runs_of("y"))
        ),
        timeout=60,
        why="every version queued",
    )
    (project.jobs / "b49.toml").unlink()
    project.wait_for(lambda: project.state("b49") is JobState.CANCELLED, why="b49 dropped")
    time.sleep(1.0)  # and nothing else arrives late

    for job in ["x", "y", "z", *burst]:
        shas = [r.spec_sha256 for r in project.runs_of(job)]
        assert len(shas) == len(set(shas)), f"{job}: a version was queued twice"
    y_runs = project.runs_of("y")
    assert y_runs[-1].spec_sha256 == sha(y_final) and y_runs[-1].state is JobState.QUEUED
    assert {r.spec_sha256 for r in y_runs} <= {sha(t) for t in [*y_versions, y_final]}
    assert all(r.state is JobState.CANCELLED and "superseded" in (r.error or "") for r in y_runs[:-1])
    (z_run,) = project.runs_of("z")
    assert z_run.state is JobState.QUEUED and z_run.spec_sha256 == sha(z), "a partial write is not a version"
    for name, text in burst.items():
        (run,) = project.runs_of(name)
        assert run.spec_sha256 == sha(text)
        assert run.state is (JobState.CANCELLED if name == "b49" else JobState.QUEUED)
    assert "deleted" in (project.latest("b49").error or "")
    x_first, x_second = project.runs_of("x")
    assert (x_first.spec_sha256, x_first.state) == (sha(x1), JobState.RUNNING), "a running job finishes"
    assert (x_second.spec_sha256, x_second.state) == (sha(x2), JobState.QUEUED)

    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0
    assert project.runs_of("x")[0].state is JobState.INTERRUPTED


def test_sigterm_checkpoints_and_the_next_start_resumes_with_continuous_steps(project: Project) -> None:
    project.write("long.toml", project.spec(steps=20, save_every=5))
    daemon = project.start().wait_ready()
    running_pid(project, "long", min_step=7)
    daemon.signal_group(signal.SIGTERM)  # `kill -TERM -PGID`, as a service manager does: the job must get one
    assert daemon.wait() == 0

    stopped = project.latest("long")
    run = project.run_dirs("long")[-1]
    saved = latest_complete(run / "checkpoints")
    assert stopped.state is JobState.INTERRUPTED and stopped.reason is FailureClass.INTERRUPTED
    assert saved is not None and saved.step >= 7
    assert f"SIGTERM: checkpoint saved at step {saved.step}" == stopped.error, "the checkpoint is where it stopped"
    assert (run / "train.log").read_text().count("SIGTERM received") == 1, "exactly one SIGTERM reached the job"

    again = project.start()
    project.wait_for(lambda: project.state("long") is JobState.SUCCEEDED, timeout=150, why="long resumed")
    done = project.latest("long")
    assert done.attempt == 2 and (done.resumed_from or "").endswith(f"step-{saved.step}")
    assert states(done) == ["queued", "running", "interrupted", "queued", "running", "succeeded"]
    assert project.metrics_steps("long") == list(range(1, 21)), "the step count continues across the stop"
    assert len(project.runs_of("long")) == 1
    again.signal_group(signal.SIGTERM)
    assert again.wait() == 0


def test_sigkill_then_restart_resumes_from_the_last_complete_checkpoint_and_an_orphan_is_waited_for(
    project: Project,
) -> None:
    project.write("long.toml", project.spec(steps=30, save_every=5))
    daemon = project.start().wait_ready()

    # 1. daemon and job killed together (power loss, or a service manager killing the unit)
    pid = running_pid(project, "long", min_step=7)
    os.kill(daemon.proc.pid, signal.SIGKILL)
    os.kill(pid, signal.SIGKILL)
    daemon.wait()
    project.wait_for(lambda: not is_pid_alive(pid), why="the job process gone")
    run = project.run_dirs("long")[-1]
    complete = latest_complete(run / "checkpoints")
    assert complete is not None and complete.step >= 5
    torn = run / "checkpoints" / f"step-{complete.step + 1000}"  # killed while writing: no COMPLETE marker
    torn.mkdir()
    (torn / "adapter_model.safetensors").write_bytes(b"half a tensor")
    assert project.latest("long").state is JobState.RUNNING  # nobody was left to write anything else

    second = project.start()
    pid = running_pid(project, "long", attempt=2, min_step=complete.step + 3, resumed=True)
    resumed = project.latest("long").resumed_from or ""
    assert resumed.endswith(f"step-{complete.step}"), "resumed from the last complete checkpoint, not the torn one"
    assert "no daemon was watching" in second.log()

    # 2. only the daemon killed: the job gets SIGTERM from the kernel, checkpoints and stops by itself
    os.kill(second.proc.pid, signal.SIGKILL)
    second.wait()
    third = project.start().wait_ready()
    orphan_was_alive = is_pid_alive(pid)
    project.wait_for(lambda: project.state("long") is JobState.SUCCEEDED, timeout=150, why="long resumed")
    done = project.latest("long")
    assert done.attempt == 3 and done.resumed_from and done.resumed_from != resumed
    assert states(done) == [
        "queued",
        "running",
        "interrupted",
        "queued",
        "running",
        "interrupted",
        "queued",
        "running",
        "succeeded",
    ]
    assert project.metrics_steps("long") == list(range(1, 31)), "continuous across both kills"
    # attempt 2 got SIGTERM from the kernel when its daemon died (attempt 1 may have too, in the
    # instant between the two SIGKILLs); attempt 3 ran undisturbed
    attempt_2, attempt_3 = (run / "train.log").read_text().split("runner watch: attempt ")[2:]
    assert attempt_2.count("SIGTERM received") == 1 and "SIGTERM" not in attempt_3
    if orphan_was_alive:  # usual: saving a checkpoint and exiting takes longer than a daemon start
        assert "outlived the previous daemon; waiting for it" in third.log()
    third.signal_group(signal.SIGTERM)
    assert third.wait() == 0


def test_a_second_daemon_on_the_same_folder_refuses_and_names_the_holder(project: Project) -> None:
    first = project.start("--poll", "0.2").wait_ready()  # the polling fallback, for network filesystems
    second = project.start()
    assert second.wait(timeout=30) != 0
    assert f"pid {first.proc.pid}" in second.log() and "holds the lock" in second.log()
    assert first.proc.poll() is None
    project.write("typo.toml", "[model\n")  # polling notices it long before the 30 s safety rescan
    project.wait_for(lambda: project.state("typo") is JobState.INVALID, timeout=10, why="typo recorded by polling")
    first.signal_group(signal.SIGTERM)
    assert first.wait() == 0


def test_dependencies_wait_for_success_fail_down_the_chain_and_priority_orders_the_rest(project: Project) -> None:
    project.write("a.toml", project.spec(steps=3))  # priority 0, seen first: still runs after f
    project.write("b.toml", project.spec(steps=2, priority=10, source="job:a"))
    project.write("f.toml", project.spec(steps=500, priority=1))
    project.write("c.toml", project.spec(steps=2, priority=20, source="job:f"))
    project.write("d.toml", project.spec(steps=2, priority=30, source="job:c"))
    daemon = project.start().wait_ready()

    os.kill(running_pid(project, "f"), signal.SIGSEGV)  # f fails (class crash); c, then d, can never run
    running_pid(project, "a", timeout=120)
    b = project.latest("b")
    assert b.state is JobState.QUEUED and "job:a" in str(b.extra.get("waiting")), "b waits while a runs"
    running_pid(project, "b", timeout=120)
    assert project.cli("cancel", "b", "--wait", "60").returncode == 0  # it started: that is all this test needs
    project.wait_for(lambda: finished(project, "a", "b", "c", "d", "f"), timeout=60, why="all finished")

    a, b, c, d, f = (project.latest(j) for j in "abcdf")
    assert f.state is JobState.FAILED and f.reason is FailureClass.CRASH
    assert (c.state, c.reason) == (JobState.FAILED, FailureClass.DEPENDENCY) and "job:f" in (c.error or "")
    assert (d.state, d.reason) == (JobState.FAILED, FailureClass.DEPENDENCY) and "job:c" in (d.error or "")
    assert "running" not in states(c) + states(d), "a job whose dependency failed never runs"
    assert a.state is JobState.SUCCEEDED
    assert f.started and a.started and b.started and a.finished
    assert f.started < a.started < b.started, "priority first (f before a), dependencies before dependents"
    assert b.started >= a.finished, "b starts only once a has succeeded"
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0


def test_crashes_are_classified_interruptions_retried_within_bounds_and_cancel_stops_jobs(project: Project) -> None:
    daemon = project.start("--max-attempts", "2").wait_ready()

    project.write("kill.toml", project.spec(steps=500))
    os.kill(running_pid(project, "kill"), signal.SIGKILL)  # an operator's kill -9: resumable, not retried unasked
    project.wait_for(lambda: project.state("kill") is JobState.INTERRUPTED, why="kill stopped")
    assert project.latest("kill").reason is FailureClass.KILLED

    project.write("segv.toml", project.spec(steps=500))
    os.kill(running_pid(project, "segv"), signal.SIGSEGV)
    project.wait_for(lambda: project.state("segv") is JobState.FAILED, why="segv failed")
    assert project.latest("segv").reason is FailureClass.CRASH and "SIGSEGV" in (project.latest("segv").error or "")

    project.write("retry.toml", project.spec(steps=500))
    os.kill(running_pid(project, "retry", attempt=1), signal.SIGTERM)  # stopped by someone else: retried
    os.kill(running_pid(project, "retry", attempt=2), signal.SIGTERM)  # again: out of attempts
    project.wait_for(lambda: project.state("retry") is JobState.FAILED, why="retry failed")
    retry = project.latest("retry")
    assert retry.reason is FailureClass.INTERRUPTED and "max-attempts 2" in (retry.error or "")
    assert states(retry).count("running") == 2, "two attempts ran; the third was not started"

    project.write("cq.toml", project.spec(steps=500, priority=5))
    project.write("cw.toml", project.spec(steps=2))
    running_pid(project, "cq")
    assert project.state("cw") is JobState.QUEUED
    waiting = project.cli("cancel", "cw", "--wait", "30")
    assert waiting.returncode == 0, waiting.stderr
    running = project.cli("cancel", "cq", "--wait", "60")
    assert running.returncode == 0, running.stderr
    cq, cw = project.latest("cq"), project.latest("cw")
    assert (cq.state, cq.reason) == (JobState.CANCELLED, FailureClass.CANCELLED_BY_USER) and "running" in states(cq)
    assert cw.state is JobState.CANCELLED and "running" not in states(cw)
    assert project.cli("cancel", "cw").returncode == 1  # nothing left to cancel

    assert daemon.proc.poll() is None, "no job's death takes the daemon down"
    assert all(len(project.runs_of(j)) == 1 for j in ("kill", "segv", "retry", "cq", "cw"))
    assert states(project.latest("kill")) == ["queued", "running", "interrupted"], "a killed run is not retried"
    daemon.signal_group(signal.SIGTERM)
    assert daemon.wait() == 0
