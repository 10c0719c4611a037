"""The daemon's pure parts: folder scan, spec facts, settling, its own files, and exit classes."""

from __future__ import annotations

import hashlib
import os
import signal
from pathlib import Path

import pytest

from runner.outputs.attempts import Intent, Outcome, classify_exit
from runner.outputs.status import FailureClass, JobState
from runner.watch.scan import Settler, SpecFile, inspect_spec, scan_folder
from runner.watch.store import (
    DaemonLock,
    KnownFile,
    Locked,
    WatchState,
    load_state,
    pending_requests,
    request_cancel,
    save_state,
)

VALID = '[model]\nsource = "local:/m"\n[data]\ntrain = "t.jsonl"\n'


def test_scan_sees_job_files_only_and_hashes_their_bytes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / ".git").mkdir()
    for name in [
        "a.toml",
        "sub/b.toml",
        ".a.toml.swp",
        ".hidden.toml",
        "a.toml~",
        "notes.txt",
        ".git/c.toml",
        ".tmp-a.toml-1234",
    ]:
        (tmp_path / name).write_text(VALID)
    found = scan_folder(tmp_path)
    assert sorted(found) == ["a.toml", "sub/b.toml"]
    assert found["a.toml"].sha256 == hashlib.sha256(VALID.encode()).hexdigest()
    with pytest.raises(OSError):  # a vanished (unmounted) folder is not an empty one
        scan_folder(tmp_path / "gone")


def test_spec_facts_priority_dependencies_and_invalid_names(tmp_path: Path) -> None:
    spec = SpecFile("b.toml", "x", b'priority = 7\n[model]\nsource = "job:a"\n[data]\ntrain = "t.jsonl"\n')
    info = inspect_spec(tmp_path, spec)
    assert info.valid and (info.job, info.priority, info.depends_on) == ("b", 7, ("a",))
    bad = inspect_spec(tmp_path, SpecFile("my job.toml", "y", b'name = "named"\n[model]\nsource = 3\n'))
    assert not bad.valid and bad.job == "named" and any("model.source" in str(i) for i in bad.errors)
    torn = inspect_spec(tmp_path, SpecFile("my job.toml", "z", b'[model]\nsource = "loc'))
    assert not torn.valid and torn.job == "my-job"  # an unusable stem still gives a run folder name


def test_a_file_settles_only_after_its_bytes_stay_the_same_for_the_quiet_period() -> None:
    settler = Settler()
    assert settler.wait("a.toml", "v1", now=10.0, quiet=0.3) == 0.3
    assert settler.wait("a.toml", "v1", now=10.2, quiet=0.3) == pytest.approx(0.1)
    assert settler.wait("a.toml", "v2", now=10.31, quiet=0.3) == 0.3  # changed: the clock restarts
    assert settler.wait("a.toml", "v2", now=10.62, quiet=0.3) == 0.0


def test_state_round_trips_and_the_lock_admits_one_holder(tmp_path: Path) -> None:
    state = WatchState(
        files={"a.toml": KnownFile("s" * 64, "a", "20260101-000000-abcd", "2026-01-01T00:00:00Z", 3)}, next_seq=4
    )
    save_state(tmp_path / "state.json", state)
    assert load_state(tmp_path / "state.json") == state
    first, second = DaemonLock(tmp_path), DaemonLock(tmp_path)
    first.acquire({"pid": 4242, "host": "h", "started": "then", "jobs_dir": "/j", "command": ["runner", "watch"]})
    with pytest.raises(Locked, match="pid 4242"):
        second.acquire({"pid": 1}, wait=0.1)
    first.release()
    assert second.try_acquire()
    second.release()


def test_cancel_requests_survive_job_names_with_dashes(tmp_path: Path) -> None:
    request_cancel(tmp_path, "my--job", "20260101-000000-abcd")
    (request,) = pending_requests(tmp_path)
    assert (request.job, request.run_id) == ("my--job", "20260101-000000-abcd")


INTERRUPTED = Outcome(JobState.INTERRUPTED, None, "SIGTERM: checkpoint saved at step 7")
SUCCEEDED = Outcome(JobState.SUCCEEDED, fields={"step": 9})
FAILED_DATA = Outcome(JobState.FAILED, FailureClass.DATA, "bad records")


@pytest.mark.parametrize(
    ("returncode", "outcome", "intent", "state", "reason"),
    [
        (0, SUCCEEDED, None, JobState.SUCCEEDED, None),
        (0, SUCCEEDED, Intent.CANCEL, JobState.SUCCEEDED, None),  # finished before the cancel landed
        (1, FAILED_DATA, None, JobState.FAILED, FailureClass.DATA),
        (3, INTERRUPTED, Intent.SHUTDOWN, JobState.INTERRUPTED, None),
        (3, INTERRUPTED, None, JobState.INTERRUPTED, None),  # someone else's SIGTERM: resumable
        (3, INTERRUPTED, Intent.CANCEL, JobState.CANCELLED, FailureClass.CANCELLED_BY_USER),
        (-signal.SIGTERM, None, Intent.CANCEL, JobState.CANCELLED, FailureClass.CANCELLED_BY_USER),
        (-signal.SIGTERM, None, Intent.SHUTDOWN, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
        (-signal.SIGKILL, None, Intent.SHUTDOWN, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
        (-signal.SIGTERM, None, None, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
        (-signal.SIGKILL, None, None, JobState.INTERRUPTED, FailureClass.KILLED),  # no witness of an OOM kill
        (-signal.SIGSEGV, None, None, JobState.FAILED, FailureClass.CRASH),
        (-signal.SIGABRT, None, None, JobState.FAILED, FailureClass.CRASH),
        (1, None, None, JobState.FAILED, FailureClass.CRASH),
        (None, None, None, JobState.INTERRUPTED, FailureClass.INTERRUPTED),  # adopted, died unseen
        (None, INTERRUPTED, None, JobState.INTERRUPTED, None),
    ],
)
def test_a_childs_end_maps_to_one_state_and_class(
    returncode: int | None, outcome: Outcome | None, intent: Intent | None, state: JobState, reason: FailureClass | None
) -> None:
    final = classify_exit(returncode, outcome, intent, log_tail="Traceback: boom")
    assert (final.state, final.reason) == (state, reason)
    if final.reason is FailureClass.CRASH or final.reason is FailureClass.OOM:
        assert "boom" in (final.error or ""), "a crash shows the end of the job's log"
    if returncode == -signal.SIGSEGV:
        assert "SIGSEGV" in (final.error or "")


def test_a_sigkill_is_oom_only_when_the_oom_killer_sent_it() -> None:
    oom = classify_exit(-signal.SIGKILL, None, None, log_tail="boom", oom_killed=True)
    assert (oom.state, oom.reason) == (JobState.FAILED, FailureClass.OOM) and "out-of-memory killer" in (
        oom.error or ""
    )
    operator = classify_exit(-signal.SIGKILL, None, None, oom_killed=False)
    assert (operator.state, operator.reason) == (JobState.INTERRUPTED, FailureClass.KILLED)
    assert "not by the kernel's out-of-memory killer" in (operator.error or "")
    assert "`runner run`" in (operator.error or "") and "--retry-killed" in (operator.error or ""), "says how to resume"
    unknown = classify_exit(-signal.SIGKILL, None, None, oom_killed=None)
    assert unknown.reason is FailureClass.KILLED and "`dmesg` says" in (unknown.error or "")
    stopped = classify_exit(-signal.SIGKILL, None, Intent.SHUTDOWN, oom_killed=True)
    assert stopped.reason is FailureClass.INTERRUPTED, "the daemon's own second-signal kill is a shutdown"


def test_log_tail_is_kept_short(tmp_path: Path) -> None:
    from runner.outputs.attempts import log_tail

    log = tmp_path / "train.log"
    log.write_bytes(b"".join(f"line {i}\r\n".encode() for i in range(1000)) + os.urandom(0))
    tail = log_tail(log, lines=3)
    assert tail.splitlines() == ["line 997", "line 998", "line 999"]
