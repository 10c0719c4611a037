"""The interface between a supervisor (the daemon) and what runs the attempts of its runs.

The supervisor owns the queue, the run folders and the state changes around an attempt; an
executor owns the attempt itself. The daemon's loop, in executor terms:

    capacity  -> how many more attempts it takes now (the local one: one at a time)
    start     -> the run is queued with its spec snapshot in the folder: run an attempt of it
    poll      -> which followed attempts are over, each with the transition to apply (a `Final`)
    done      -> that transition is written: release what the attempt held
    stop      -> ask an attempt to save a checkpoint and stop (its `intent` says why); idempotent
    kill      -> stop now, without the checkpoint (a second stop signal to the daemon)
    adopt     -> after a restart: follow the attempt a previous supervisor left working on a run
    wait_fds / deadline -> what the loop sleeps on until the next thing to look at

An executor never writes a terminal state itself: it returns the `Final` and the supervisor
applies it (so a run owned by a daemon changes state in one place), and it writes only the
progress of its own attempts (`running` with its pid, Slurm's pending reason, ...).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from runner.outputs.attempts import Final, Intent
from runner.outputs.runs import run_paths
from runner.outputs.status import Status

__all__ = ["Attempt", "Executor"]


class Attempt:
    """One attempt of a run that an executor works on (a child process, a Slurm job, ...)."""

    run_dir: Path
    intent: Intent | None = None  # why the supervisor asked it to stop, if it did
    # True when it carries on without its supervisor (a Slurm job; a process a previous daemon
    # started): a stopping daemon neither stops it nor waits for it, and the next one adopts it.
    outlives_supervisor: bool = False

    @property
    def key(self) -> str:
        """`<job>/<run-id>`, as the daemon and `runner status` name runs."""
        return f"{self.run_dir.parent.name}/{self.run_dir.name}"


class Executor(ABC):
    """Runs attempts of runs; see the module docstring for the loop that drives it."""

    name: ClassVar[str]

    @classmethod
    @abstractmethod
    def claims(cls, status: Status) -> bool:
        """Whether an attempt of this kind may be working on the run now (which executor adopts it)."""

    @abstractmethod
    def capacity(self, active: Sequence[Attempt]) -> int | None:
        """How many more attempts it takes now, given its active ones (None: as many as are ready)."""

    @abstractmethod
    def start(self, run_dir: Path, spec_path: Path) -> Attempt | Final | None:
        """Run the queued run's current attempt. An `Attempt` to follow; a `Final` if it cannot run
        as written (applied at once); None if it cannot be started now (tried again later)."""

    @abstractmethod
    def adopt(self, run_dir: Path, status: Status) -> Attempt | None:
        """The attempt a previous supervisor left working on this run, to follow (its end, if it is
        already over, comes from the next `poll`); None if none is."""

    @abstractmethod
    def poll(self, attempts: Sequence[Attempt]) -> list[tuple[Attempt, Final]]:
        """The attempts among `attempts` that are over, each with the transition to apply."""

    @abstractmethod
    def stop(self, attempt: Attempt) -> None:
        """Ask the attempt to save a checkpoint and stop; its end comes from `poll`."""

    def kill(self, attempt: Attempt) -> None:  # noqa: B027 - optional: by default `stop` is all there is
        """Stop the attempt without waiting for its checkpoint (it resumes from the previous one). By
        default nothing more than `stop` did: an executor with a faster way overrides this."""

    def done(self, attempt: Attempt) -> None:
        """The attempt's end is recorded: its report is spent, its handles are released."""
        run_paths(attempt.run_dir).outcome.unlink(missing_ok=True)

    def wait_fds(self, attempts: Sequence[Attempt]) -> list[int]:
        """Descriptors that become readable when one of `attempts` ends (the loop selects on them)."""
        return []

    def deadline(self, attempts: Sequence[Attempt], now: float) -> float | None:
        """The `time.monotonic()` by which the loop must call `poll` (or `start`) again, if any."""
        return None
