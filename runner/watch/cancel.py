"""Cancelling a job's pending runs (`runner cancel`, the HTTP API's cancel).

A run made by the daemon names, in its status's `extra.watch`, the daemon state folder that owns
it: a running daemon gets a cancel request (and a SIGUSR1 to read it at once); without a daemon
the run is changed here, under the daemon's lock so that none can start meanwhile. A run a Slurm
job works on, with no daemon to ask, is stopped with scancel.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from runner.outputs.runs import PENDING_STATES, is_pid_alive, list_runs, read_status, run_paths
from runner.outputs.status import JobState, Status, StatusFile
from runner.watch.store import DaemonLock, request_cancel

__all__ = ["CancelOutcome", "cancel_runs"]

EXIT_OK, EXIT_FAILED = 0, 1
Say = Callable[[str], None]


class CancelOutcome(NamedTuple):
    code: int  # EXIT_OK, or EXIT_FAILED when nothing was pending or a run could not be reached
    pending: int  # the job's queued, running or interrupted runs when asked
    targets: list[Path]  # runs left to the daemon (a request was filed): watch them to see the end


class _Done(NamedTuple):
    """What became of one run: whether the request went through, and whether to watch it end."""

    ok: bool
    follow: bool


def _print_err(message: str) -> None:
    print(message, file=sys.stderr)


def cancel_runs(job: str, root: Path, *, say: Say = print, warn: Say = _print_err) -> CancelOutcome:
    """Cancel the job's pending runs: through its daemon if one runs, else directly.

    Messages go to `say` / `warn` (stdout / stderr for the CLI; collected by the HTTP API)."""
    pending = [
        (run, status)
        for run in list_runs(root, job)
        if (status := read_status(run)) is not None and status.state in PENDING_STATES
    ]
    if not pending:
        runs = list_runs(root, job)
        latest = read_status(runs[-1]) if runs else None
        warn(
            f"nothing to cancel: job '{job}' "
            + (f"has no pending run (latest: {latest.state})" if latest else f"has no runs under {root}")
        )
        return CancelOutcome(EXIT_FAILED, 0, [])
    done = [_cancel_run(job, run, status, say, warn) for run, status in pending]
    code = EXIT_OK if all(d.ok for d in done) else EXIT_FAILED
    return CancelOutcome(code, len(pending), [run for (run, _), d in zip(pending, done, strict=True) if d.follow])


def _cancel_run(job: str, run: Path, status: Status, say: Say, warn: Say) -> _Done:
    watch = status.extra.get("watch")
    if not isinstance(watch, dict) or not watch.get("state_dir"):
        sent = _scancel(job, run, status, say, warn, "the `runner run --executor slurm` following it records the end")
        if sent is not None:
            return _Done(sent, sent)
        warn(
            f"{job}/{run.name} is not managed by `runner watch`; stop its process"
            + (f" (pid {status.pid}) with kill -TERM" if status.pid else "")
        )
        return _Done(False, False)
    lock = DaemonLock(Path(watch["state_dir"]))
    if lock.try_acquire():  # no daemon: nobody can start it meanwhile, so change it here
        try:
            return _cancel_without_daemon(job, run, lock.state_dir, say, warn)
        finally:
            lock.release()
    return _ask_daemon(job, run, status, lock, say)


def _cancel_without_daemon(job: str, run: Path, state_dir: Path, say: Say, warn: Say) -> _Done:
    from runner.watch.daemon import cancel_waiting_run

    status_file = StatusFile(run_paths(run).status)
    current = status_file.read()
    if current is None or current.is_terminal:
        return _Done(True, False)
    sent = _scancel(job, run, current, say, warn, "`runner watch` records the end when it runs again")
    if sent is not None:  # a Slurm job: its next daemon follows it and records `cancelled`
        if sent:
            request_cancel(state_dir, job, run.name)
        return _Done(sent, sent)
    if current.state is JobState.RUNNING and is_pid_alive(current.pid):
        # a process that outlived its daemon: the next daemon stops it
        request_cancel(state_dir, job, run.name)
        say(
            f"{job}/{run.name} is running without a daemon (pid {current.pid}); "
            "the cancel is applied when `runner watch` starts"
        )
        return _Done(True, True)
    if current.state is JobState.RUNNING:  # its process is gone and no daemon noticed yet
        status_file.transition(JobState.CANCELLED, error="cancelled with `runner cancel` (its process was gone)")
    else:
        cancel_waiting_run(status_file, "cancelled with `runner cancel`")
    say(f"cancelled {job}/{run.name}")
    return _Done(True, False)


def _ask_daemon(job: str, run: Path, status: Status, lock: DaemonLock, say: Say) -> _Done:
    """File a cancel request with the running daemon and wake it; it reads the request at once."""
    request_cancel(lock.state_dir, job, run.name)
    holder = lock.holder() or {}
    pid = holder.get("pid")
    if isinstance(pid, int) and is_pid_alive(pid):
        try:
            os.kill(pid, signal.SIGUSR1)
        except (PermissionError, ProcessLookupError):
            pass
    what = "stops it after saving a checkpoint" if status.state is JobState.RUNNING else "drops it"
    say(f"cancel requested for {job}/{run.name}: the daemon (pid {pid}) {what}")
    return _Done(True, True)


def _scancel(job: str, run: Path, status: Status, say: Say, warn: Say, then: str) -> bool | None:
    """scancel the Slurm job working on a run with no daemon to ask: True if sent, False if scancel
    failed, None if no Slurm job works on it (runner.slurm)."""
    from runner.slurm.executor import live_job

    job_id = live_job(status)
    if job_id is None:
        return None
    from runner.slurm.client import SlurmClient, SlurmError

    try:
        SlurmClient().cancel(job_id)
    except SlurmError as exc:
        warn(f"{job}/{run.name}: {exc}")
        return False
    say(f"scancel {job_id} ({job}/{run.name}): it saves a checkpoint and stops; {then}")
    return True
