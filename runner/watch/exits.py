"""How a child's exit becomes the run's next state.

The child reports its own end (`runner.pipeline.write_outcome`) when it can. When it cannot --
killed by the kernel's OOM killer, a segfault in native code, stopped before its signal handler
was installed -- only the daemon knows, from the exit status. And only the daemon knows whether
it asked the child to stop (shutdown, `runner cancel`, a newer spec version), which turns
"interrupted" into "cancelled" and keeps a stop it caused from being called a failure.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from runner.outputs.status import FailureClass, JobState
from runner.pipeline import Outcome

__all__ = ["Final", "Intent", "classify_exit"]

# Signals that ask a process to stop: the run is resumable, not broken.
_STOP_SIGNALS = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


class Intent(StrEnum):
    """Why the daemon stopped a child (none: nobody asked it to stop)."""

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


_CANCEL_TEXT = {
    Intent.CANCEL: "cancelled with `runner cancel`",
    Intent.SUPERSEDE: "stopped and replaced by a newer version of its job file (--on-change=restart)",
    Intent.DROP: "cancelled: its job file was deleted before it started",
}


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify_exit(returncode: int | None, outcome: Outcome | None, intent: Intent | None, *, log_tail: str = "") -> Final:
    """The state a run goes to after its process ended.

    `returncode` is None when the process was not our child (adopted after a daemon restart),
    so only its report, if any, is known.
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
        how = f"exit {_signal_name(-returncode)}" if returncode is not None and returncode < 0 else f"exit code {returncode}"
        return Final(JobState.INTERRUPTED, FailureClass.INTERRUPTED,
                     f"stopped by the daemon's shutdown before it could save a checkpoint ({how}); "
                     "it resumes from its last complete checkpoint")
    if returncode is None:
        return Final(JobState.INTERRUPTED, FailureClass.INTERRUPTED,
                     "its process ended while no daemon was watching (was the daemon killed?); "
                     "it resumes from its last complete checkpoint")
    if returncode < 0:
        number = -returncode
        if number == signal.SIGKILL:
            return Final(JobState.FAILED, FailureClass.OOM,
                         "killed by SIGKILL: most likely the kernel's out-of-memory killer (see `dmesg`); "
                         "use a smaller batch_size or max_length" + tail)
        if number in _STOP_SIGNALS:
            return Final(JobState.INTERRUPTED, FailureClass.INTERRUPTED,
                         f"stopped by {_signal_name(number)} before it could save a checkpoint; "
                         "it resumes from its last complete checkpoint")
        description = signal.strsignal(number) or ""
        return Final(JobState.FAILED, FailureClass.CRASH,
                     f"died from {_signal_name(number)}" + (f" ({description})" if description else "") + tail)
    return Final(JobState.FAILED, FailureClass.CRASH,
                 f"exited with code {returncode} without reporting how the run ended" + tail)
