"""How an attempt of a run ends, whoever runs it (a child process of the daemon, a Slurm job).

Three parties know part of the story:

* the process doing the work reports its own end (`write_outcome` -> `OUTCOME_FILE`) when it can;
* the supervisor knows whether it asked the attempt to stop (an `Intent`: shutdown, `runner
  cancel`, a newer spec version), which turns "interrupted" into "cancelled" and keeps a stop it
  caused from being called a failure;
* the executor knows how the process ended when it could not report: killed by the kernel's OOM
  killer or by an operator (told apart by the executor's evidence: the cgroup's oom_kill counter,
  the kernel log), a segfault in native code, stopped before its handler was installed.

`classify_exit` puts a local process's three facts together into a `Final`: the one transition the
supervisor then applies through `StatusFile.transition`, only once the process is gone.
(`runner.slurm.states.classify_end` does the same from what Slurm says about a job.)
"""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_json
from runner.outputs.status import FailureClass, JobState, Status, StatusFile

__all__ = [
    "KILLED_HINT",
    "STOP_SIGNALS",
    "Final",
    "Intent",
    "Outcome",
    "cancel_waiting_run",
    "classify_exit",
    "log_tail",
    "never_started",
    "read_outcome",
    "signal_name",
    "write_outcome",
]

# Signals that ask a process to stop: the run is resumable, not broken.
STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


@dataclass(frozen=True)
class Outcome:
    """How a supervised run ended, as its process saw it: the arguments of one transition."""

    state: JobState
    reason: FailureClass | None = None
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def write_outcome(
    path: Path, state: JobState, *, reason: FailureClass | str | None = None, error: str | None = None, **fields: Any
) -> None:
    """Report the end of a supervised run (atomically: the supervisor reads it after the exit)."""
    atomic_write_json(
        path, {"state": str(state), "reason": None if reason is None else str(reason), "error": error, "fields": fields}
    )


def read_outcome(path: Path) -> Outcome | None:
    """The reported outcome, or None if the process died before reporting (or wrote nonsense)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return Outcome(
            state=JobState(raw["state"]),
            reason=FailureClass(raw["reason"]) if raw.get("reason") else None,
            error=raw.get("error"),
            fields=dict(raw.get("fields") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Intent(StrEnum):
    """Why the supervisor stopped an attempt (none: nobody asked it to stop)."""

    SHUTDOWN = "shutdown"  # the daemon is stopping; the run resumes at its next start
    CANCEL = "cancel"  # `runner cancel`
    SUPERSEDE = "supersede"  # --on-change=restart: a newer version of the spec replaces it
    DROP = "drop"  # its job file was deleted before it started (a pending Slurm job is scancelled)


@dataclass(frozen=True)
class Final:
    """The transition to apply: the arguments of `StatusFile.transition`."""

    state: JobState
    reason: FailureClass | None = None
    error: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def apply(self, status_file: StatusFile) -> Status:
        return status_file.transition(self.state, reason=self.reason, error=self.error, **self.fields)


def never_started(status: Status) -> bool:
    return not any(entry.to_state is JobState.RUNNING for entry in status.history)


def cancel_waiting_run(status_file: StatusFile, error: str) -> Status | None:
    """Cancel a run no process is working on (queued, or interrupted via queued); None if it is not waiting."""
    status = status_file.read()
    if status is None or status.state not in (JobState.QUEUED, JobState.INTERRUPTED):
        return None
    if status.state is JobState.INTERRUPTED:
        status_file.transition(JobState.QUEUED)
    return status_file.transition(JobState.CANCELLED, reason=FailureClass.CANCELLED_BY_USER, error=error)


def log_tail(path: Path, lines: int = 15, limit: int = 64 * 1024) -> str:
    """The last non-blank lines of a log (progress bars' carriage returns count as line ends)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join([line for line in text.replace("\r", "\n").splitlines() if line.strip()][-lines:])


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


_CANCEL_TEXT = {
    Intent.CANCEL: "cancelled with `runner cancel`",
    Intent.SUPERSEDE: "stopped and replaced by a newer version of its job file (--on-change=restart)",
    Intent.DROP: "cancelled: its job file was deleted before it started",
}


def classify_exit(
    returncode: int | None,
    outcome: Outcome | None,
    intent: Intent | None,
    *,
    log_tail: str = "",
    oom_killed: bool | None = None,
) -> Final:
    """The state a run goes to after its process ended.

    `returncode` is None when the process was not our child (adopted after a daemon restart),
    so only its report, if any, is known. `oom_killed` says whether the kernel's OOM killer killed
    it (None: nothing here can tell): a SIGKILL is `oom` only then, else `killed`.
    """
    tail = f"\nlast lines of train.log:\n{log_tail}" if log_tail.strip() else ""
    if outcome is not None and outcome.state is JobState.SUCCEEDED:
        return Final(outcome.state, outcome.reason, outcome.error, outcome.fields)  # done before the stop landed
    if intent in _CANCEL_TEXT:
        if outcome is not None and outcome.state is JobState.FAILED:
            return Final(outcome.state, outcome.reason, outcome.error, outcome.fields)  # it failed on its own first
        said = f" ({outcome.error})" if outcome is not None and outcome.error else ""
        return Final(JobState.CANCELLED, FailureClass.CANCELLED_BY_USER, _CANCEL_TEXT[intent] + said)
    if outcome is not None:
        return Final(outcome.state, outcome.reason, outcome.error, outcome.fields)
    if intent is Intent.SHUTDOWN:
        how = (
            f"exit {signal_name(-returncode)}"
            if returncode is not None and returncode < 0
            else f"exit code {returncode}"
        )
        return Final(
            JobState.INTERRUPTED,
            FailureClass.INTERRUPTED,
            f"stopped by the daemon's shutdown before it could save a checkpoint ({how}); "
            "it resumes from its last complete checkpoint",
        )
    if returncode is None:
        return Final(
            JobState.INTERRUPTED,
            FailureClass.INTERRUPTED,
            "its process ended while no daemon was watching (was the daemon killed?); "
            "it resumes from its last complete checkpoint",
        )
    if returncode < 0:
        return _killed_by_signal(-returncode, tail, oom_killed)
    return Final(
        JobState.FAILED, FailureClass.CRASH, f"exited with code {returncode} without reporting how the run ended" + tail
    )


KILLED_HINT = (
    "not retried: `runner run` on its job file resumes it from its last complete checkpoint, "
    "and `runner watch --retry-killed` retries such runs"
)


def _killed_by_signal(number: int, tail: str, oom_killed: bool | None) -> Final:
    if number == signal.SIGKILL and oom_killed:
        return Final(
            JobState.FAILED,
            FailureClass.OOM,
            "killed by the kernel's out-of-memory killer; use a smaller train.batch_size or data.max_length, "
            "or give the job more memory" + tail,
        )
    if number == signal.SIGKILL:
        who = (
            (
                " (no cgroup memory counter or kernel log is readable here to tell whether the kernel's "
                "out-of-memory killer sent it; `dmesg` says)"
            )
            if oom_killed is None
            else ", not by the kernel's out-of-memory killer"
        )
        return Final(JobState.INTERRUPTED, FailureClass.KILLED, f"killed by SIGKILL{who}; {KILLED_HINT}")
    if number in STOP_SIGNALS:
        return Final(
            JobState.INTERRUPTED,
            FailureClass.INTERRUPTED,
            f"stopped by {signal_name(number)} before it could save a checkpoint; "
            "it resumes from its last complete checkpoint",
        )
    description = signal.strsignal(number) or ""
    return Final(
        JobState.FAILED,
        FailureClass.CRASH,
        f"died from {signal_name(number)}" + (f" ({description})" if description else "") + tail,
    )
