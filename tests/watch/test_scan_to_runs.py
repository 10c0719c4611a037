"""From folder content to run folders, in-process (no job is started): the version policies."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.outputs.runs import list_runs, read_status
from runner.outputs.status import JobState, Status
from runner.watch.daemon import Daemon, WatchConfig
from runner.watch.recover import recover

SPEC = '[model]\nsource = "local:/m"\n[data]\ntrain = "t.jsonl"\n'


@pytest.fixture
def make(tmp_path: Path) -> Iterator[object]:
    made: list[Daemon] = []
    (tmp_path / "jobs").mkdir()

    def daemon() -> Daemon:
        made.append(
            Daemon(
                WatchConfig(
                    jobs_dir=tmp_path / "jobs",
                    runs_root=tmp_path / "runs",
                    state_dir=tmp_path / ".runner" / "watch-jobs",
                    settle=0,
                    invalid_grace=0,
                )
            )
        )
        return made[-1]

    yield daemon
    for d in made:
        d.close()


def scan(daemon: Daemon, now: float) -> None:
    daemon.intake.scan(now, daemon.wakeups)


def runs(tmp_path: Path, job: str) -> list[Status]:
    return [s for r in list_runs(tmp_path / "runs", job) if (s := read_status(r)) is not None]


def test_new_versions_supersede_waiting_runs_and_deleting_drops_them(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    jobs = tmp_path / "jobs"
    daemon = make()
    (jobs / "a.toml").write_text(SPEC)
    (jobs / "b.toml").write_text('name = "a"\n' + SPEC)  # claims a's name
    scan(daemon, 0.0)
    (first,) = runs(tmp_path, "a")
    assert first.state is JobState.QUEUED and first.extra["watch"]["spec"] == "a.toml"
    (conflict,) = runs(tmp_path, "b")  # recorded under its own file name, not as a's latest run
    assert conflict.state is JobState.INVALID and "already used by" in (conflict.error or "")

    scan(daemon, 1.0)  # nothing changed: nothing new
    assert len(runs(tmp_path, "a")) == 1 and len(runs(tmp_path, "b")) == 1

    (jobs / "a.toml").write_text(SPEC + "# v2\n")
    scan(daemon, 2.0)
    a_runs = runs(tmp_path, "a")
    assert [r.state for r in a_runs] == [JobState.CANCELLED, JobState.QUEUED]
    assert "superseded" in (a_runs[0].error or "") and a_runs[0].attempt == 1

    (jobs / "a.toml").unlink()
    scan(daemon, 3.0)
    assert runs(tmp_path, "a")[-1].state is JobState.CANCELLED and "deleted" in (runs(tmp_path, "a")[-1].error or "")
    assert "a.toml" not in daemon.state.files and not daemon.supervisor.tracked

    (jobs / "a.toml").write_text(SPEC)  # back to the first content: a change, so queued again
    scan(daemon, 4.0)
    assert runs(tmp_path, "a")[-1].state is JobState.QUEUED and len(runs(tmp_path, "a")) == 3


def test_the_queue_survives_a_restart_and_a_lost_state_file_queues_nothing_twice(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    jobs = tmp_path / "jobs"
    (jobs / "a.toml").write_text("priority = 5\n" + SPEC)
    (jobs / "b.toml").write_text(SPEC.replace("local:/m", "job:a"))
    first = make()
    scan(first, 0.0)
    first._save_state()

    second = make()  # a restart: the queue comes back from the run folders, order included
    recover(second.supervisor, second.state_dir)
    assert {(t.job, t.priority, t.depends_on) for t in second.supervisor.tracked.values()} == {
        ("a", 5, ()),
        ("b", 0, ("a",)),
    }
    assert second.state.next_seq > max(t.seq for t in second.supervisor.tracked.values())

    (tmp_path / ".runner" / "watch-jobs" / "state.json").unlink()
    third = make()
    recover(third.supervisor, third.state_dir)
    scan(third, 0.0)
    assert len(runs(tmp_path, "a")) == 1 and len(runs(tmp_path, "b")) == 1
    assert set(third.state.files) == {"a.toml", "b.toml"}


def test_cancel_without_a_daemon_changes_the_run_itself_and_with_one_leaves_a_request(
    tmp_path: Path,
    make,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    from runner.commands.watch import cancel_command
    from runner.watch.store import DaemonLock, pending_requests

    (tmp_path / "jobs" / "a.toml").write_text(SPEC)
    (tmp_path / "jobs" / "b.toml").write_text(SPEC)
    scan(make(), 0.0)
    assert cancel_command("a", runs_dir=str(tmp_path / "runs"), wait=None) == 0  # no daemon holds the lock
    assert runs(tmp_path, "a")[-1].state is JobState.CANCELLED

    state_dir = tmp_path / ".runner" / "watch-jobs"
    lock = DaemonLock(state_dir)
    assert lock.try_acquire()  # as a running daemon does
    try:
        assert cancel_command("b", runs_dir=str(tmp_path / "runs"), wait=None) == 0
    finally:
        lock.release()
    assert runs(tmp_path, "b")[-1].state is JobState.QUEUED, "the daemon applies it, nobody else"
    assert [r.key for r in pending_requests(state_dir)] == [f"b/{list_runs(tmp_path / 'runs', 'b')[-1].name}"]
    assert cancel_command("a", runs_dir=str(tmp_path / "runs"), wait=None) == 1  # nothing left to cancel
    assert "nothing to cancel" in capsys.readouterr().err


def test_a_run_finished_by_another_process_is_not_waited_on(tmp_path: Path, make) -> None:  # type: ignore[no-untyped-def]
    from runner.watch.queue import DepState

    (tmp_path / "jobs" / "a.toml").write_text(SPEC)
    daemon = make()
    scan(daemon, 0.0)
    assert daemon.supervisor._dep_state("a")[0] is DepState.PENDING
    (tracked,) = daemon.supervisor.tracked.values()
    tracked.status_file.transition(JobState.RUNNING)  # e.g. `runner run` resumed this very run and finished it
    tracked.status_file.transition(JobState.SUCCEEDED)
    daemon.supervisor.schedule()
    assert not daemon.supervisor.tracked and daemon.supervisor._dep_state("a")[0] is DepState.SUCCEEDED


def test_a_killed_run_is_not_followed_but_still_cancelled_on_request_and_retried_only_when_asked(
    tmp_path: Path, make
) -> None:  # type: ignore[no-untyped-def]
    from runner.outputs.status import FailureClass
    from runner.watch.store import request_cancel

    (tmp_path / "jobs" / "k.toml").write_text(SPEC)
    (tmp_path / "jobs" / "w.toml").write_text(SPEC)
    daemon = make()
    scan(daemon, 0.0)
    for tracked in daemon.supervisor.tracked.values():
        tracked.status_file.transition(JobState.RUNNING)
        tracked.status_file.transition(JobState.INTERRUPTED, reason=FailureClass.KILLED, error="killed by SIGKILL")

    parked = make()  # a restart without --retry-killed: the killed runs wait for a person
    recover(parked.supervisor, parked.state_dir)
    assert not parked.supervisor.tracked
    k_run = list_runs(tmp_path / "runs", "k")[-1]
    request_cancel(parked.state_dir, "k", k_run.name)
    parked.supervisor.apply_requests(parked.state_dir)
    assert runs(tmp_path, "k")[-1].state is JobState.CANCELLED, "`runner cancel` reaches a run nobody follows"

    retrying = Daemon(
        WatchConfig(
            jobs_dir=tmp_path / "jobs",
            runs_root=tmp_path / "runs",
            state_dir=tmp_path / ".runner" / "watch-jobs",
            retry_killed=True,
        )
    )
    try:
        recover(retrying.supervisor, retrying.state_dir)
        (w,) = retrying.supervisor.tracked.values()
        status = read_status(w.run_dir)
        assert status is not None and (status.state, status.attempt) == (JobState.QUEUED, 2)
    finally:
        retrying.close()
