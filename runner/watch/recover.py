"""A daemon's start: take over the runs a previous daemon of the same state folder left.

The run folders are the truth (state.json only remembers file versions): every run whose status
names this daemon's state folder and is not finished is tracked again. An attempt still working
on one (a child process that outlived its daemon, a Slurm job) is followed by its executor until
it ends; a run whose attempt ended while no daemon watched gets its end recorded now; an
interrupted one is queued again, except one an operator killed (it waits for `runner run` or
`runner cancel`, unless --retry-killed). What a killed attempt left half-written in any of the
daemon's runs no process works on is removed.
"""

from __future__ import annotations

from pathlib import Path

from runner.outputs.attempts import KILLED_HINT
from runner.outputs.runs import list_runs, read_status
from runner.outputs.status import JobState, Status
from runner.watch.supervise import Supervisor, Tracked

__all__ = ["recover"]


def recover(supervisor: Supervisor, state_dir: Path) -> None:
    """Rebuild the supervisor's runs from the run folders owned by `state_dir` and settle them."""
    parked = []
    for tracked, status in _owned_runs(supervisor.runs_root, state_dir):
        if status.is_terminal or supervisor.parked(status):
            supervisor.tidy(tracked.run_dir)
            if not status.is_terminal:
                parked.append(tracked.key)
            continue
        supervisor.track(tracked)
        supervisor.waiting[tracked.key] = status.extra.get("waiting")  # so a stale note gets cleared
        supervisor.state.next_seq = max(supervisor.state.next_seq, tracked.seq + 1)
    for tracked in sorted(supervisor.tracked.values(), key=lambda t: t.seq):
        now = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
        if now is None:
            continue
        executor = supervisor.executors.for_status(now)
        attempt = executor.adopt(tracked.run_dir, now)
        if attempt is not None:
            supervisor.follow(tracked, attempt, executor)
            continue
        supervisor.tidy(tracked.run_dir)
        if now.state is JobState.INTERRUPTED:
            supervisor.requeue(tracked, now)
    if supervisor.tracked:
        supervisor.log(f"{len(supervisor.tracked)} run(s) carried over from before")
    if parked:
        supervisor.log(f"killed, waiting to be resumed: {', '.join(parked)}; {KILLED_HINT}")


def _owned_runs(runs_root: Path, state_dir: Path) -> list[tuple[Tracked, Status]]:
    found = []
    for job_dir in sorted(runs_root.iterdir()) if runs_root.is_dir() else []:
        if job_dir.name.startswith(".") or not job_dir.is_dir():
            continue
        for run_dir in list_runs(runs_root, job_dir.name):
            status = read_status(run_dir)
            watch = status.extra.get("watch") if status is not None else None
            if status is None or not isinstance(watch, dict):
                continue
            if watch.get("state_dir") != str(state_dir) and Path(str(watch.get("state_dir"))).resolve() != state_dir:
                continue  # (a run recorded before the state folder was named after the real jobs folder)
            found.append(
                (
                    Tracked(
                        run_dir,
                        status.job,
                        str(watch.get("spec", "")),
                        status.spec_sha256 or "",
                        int(watch.get("seq", 0)),
                        int(watch.get("priority", 0)),
                        tuple(watch.get("depends_on") or ()),
                    ),
                    status,
                )
            )
    return found
