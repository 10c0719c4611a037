"""The runs a daemon owns and the attempts working on them: start, follow, stop, record.

Every run the daemon made and that has not reached a terminal state is `Tracked`; an attempt an
executor works on for one of them is `Active`. The supervisor starts queued runs in queue order
(runner.watch.queue decides which), asks the executors which attempts ended, and writes each end
through `StatusFile.transition` once the attempt is over (never before). Policies:

* an interrupted run is queued again (attempt + 1) up to `--max-attempts`, then fails with reason
  `interrupted`; failures inside a job are never retried;
* a stop the daemon asks for carries an `Intent` (shutdown, cancel, supersede, drop), so the end is
  recorded as what was asked for, not as a failure.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.executors.base import Attempt, Executor
from runner.outputs.attempts import KILLED_HINT, Final, Intent, cancel_waiting_run
from runner.outputs.leftovers import remove_leftovers
from runner.outputs.runs import RUN_ID_RE, list_runs, read_status, run_paths
from runner.outputs.status import FailureClass, IllegalTransition, JobState, Status, StatusFile
from runner.watch.config import WatchConfig
from runner.watch.executors import Executors
from runner.watch.queue import Decision, DepState, Item, decide, queue_order
from runner.watch.store import WatchState, pending_requests

__all__ = ["Active", "Supervisor", "Tracked"]


@dataclass
class Tracked:
    """A run this daemon owns that has not reached a terminal state."""

    run_dir: Path
    job: str
    spec_path: str  # relative to the jobs folder
    sha256: str
    seq: int
    priority: int
    depends_on: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.job}/{self.run_dir.name}"

    @property
    def status_file(self) -> StatusFile:
        return StatusFile(run_paths(self.run_dir).status)

    def item(self) -> Item:
        return Item(self.key, self.job, self.priority, self.seq, self.depends_on)


@dataclass(eq=False)
class Active:
    """An attempt working on a tracked run, and the executor that runs it."""

    tracked: Tracked
    attempt: Attempt
    executor: Executor


class Supervisor:
    def __init__(
        self,
        config: WatchConfig,
        jobs_dir: Path,
        runs_root: Path,
        state: WatchState,
        executors: Executors,
        log: Callable[[str], None],
    ) -> None:
        self.config = config
        self.jobs_dir = jobs_dir
        self.runs_root = runs_root
        self.state = state
        self.executors = executors
        self.log = log
        self.tracked: dict[str, Tracked] = {}
        self.active: list[Active] = []
        self.waiting: dict[str, str | None] = {}  # key -> the "waiting for" shown by runner status
        self.stopping = False

    # ------------------------------------------------------------------ bookkeeping

    def track(self, tracked: Tracked) -> None:
        self.tracked[tracked.key] = tracked

    def forget(self, tracked: Tracked, why: str) -> None:
        self.tracked.pop(tracked.key, None)
        self.waiting.pop(tracked.key, None)
        self.state.dirty = True
        self.log(f"{tracked.key}: {why}")

    def active_for(self, tracked: Tracked) -> Active | None:
        return next((a for a in self.active if a.tracked.key == tracked.key), None)

    def runs_of_file(self, path: str) -> list[Tracked]:
        return [t for t in self.tracked.values() if t.spec_path == path]

    def follow(self, tracked: Tracked, attempt: Attempt, executor: Executor) -> None:
        self.active.append(Active(tracked, attempt, executor))

    # ------------------------------------------------------------------ starting

    def schedule(self) -> None:
        """Fail what can never run, note what waits, and start what the executor has room for."""
        for _ in range(len(self.tracked) + 1):  # each round fails one more level of a dependency chain
            queued = []
            for tracked in list(self.tracked.values()):
                status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
                if status is not None and status.state is JobState.QUEUED and self.active_for(tracked) is None:
                    queued.append(tracked)  # (a submitted Slurm job's run is queued while Slurm keeps it pending)
                elif status is not None and status.is_terminal:  # finished by someone else: not ours to wait on
                    self.forget(tracked, f"{status.state} (recorded by another process)")
            if not queued:
                return
            decision = self._decide(queued)
            for blocked in decision.fail:
                tracked = self.tracked[blocked.item.key]
                tracked.status_file.transition(
                    JobState.FAILED, reason=FailureClass.DEPENDENCY, error=blocked.why, extra={"waiting": None}
                )
                self.forget(tracked, f"failed (dependency): {blocked.why}")
            if decision.fail:
                continue
            waiting = {blocked.item.key: f"waiting for {blocked.why}" for blocked in decision.wait}
            for tracked in queued:
                self._note_waiting(tracked, waiting.get(tracked.key))
            for item in self._to_start(decision):
                self.launch(self.tracked[item.key])
            self._snapshot_queue(decision.start, queued)
            return

    def _decide(self, queued: list[Tracked]) -> Decision:
        deps: dict[str, DepState] = {}
        notes: dict[str, str] = {}
        for name in {dep for tracked in queued for dep in tracked.depends_on}:
            deps[name], note = self._dep_state(name)
            if note:
                notes[name] = note
        return decide([t.item() for t in queued], deps, notes)

    def _dep_state(self, job: str) -> tuple[DepState, str | None]:
        if any(t.job == job for t in self.tracked.values()):
            return DepState.PENDING, None
        runs = list_runs(self.runs_root, job)
        status = read_status(runs[-1]) if runs else None
        if status is None:
            return DepState.MISSING, None
        if status.state is JobState.SUCCEEDED:
            return DepState.SUCCEEDED, None
        if status.is_terminal:
            why = f"its latest run {runs[-1].name} is {status.state}" + (f": {status.reason}" if status.reason else "")
            return DepState.FAILED, why
        if status.state is JobState.INTERRUPTED and status.reason is FailureClass.KILLED:
            return DepState.PENDING, f"its latest run {runs[-1].name} was killed: resume it with `runner run`"
        return DepState.PENDING, None  # a run this daemon does not own (`runner run`, another daemon)

    def _to_start(self, decision: Decision) -> list[Item]:
        """Ready runs in queue order, as many as the executor takes now, one per job at a time (so a
        newer version of a file still runs after the older one)."""
        executor = self.executors.default
        room = executor.capacity([a.attempt for a in self.active if a.executor is executor])
        busy = {active.tracked.job for active in self.active}
        chosen: list[Item] = []
        for item in decision.ready:
            if room is not None and len(chosen) >= room:
                break
            if item.job not in busy:
                busy.add(item.job)
                chosen.append(item)
        return chosen

    def _note_waiting(self, tracked: Tracked, why: str | None) -> None:
        if self.waiting.get(tracked.key, None) != why:
            self.waiting[tracked.key] = why
            tracked.status_file.update(extra={"waiting": why})

    def _snapshot_queue(self, started: Item | None, queued: list[Tracked]) -> None:
        order = [t for t in queue_order(t.item() for t in queued) if started is None or t.key != started.key]
        snapshot = [
            {"run": item.key, "priority": item.priority, "seq": item.seq, "waiting": self.waiting.get(item.key)}
            for item in order
        ]
        if snapshot != self.state.queue:
            self.state.queue = snapshot
            self.state.dirty = True

    def launch(self, tracked: Tracked) -> None:
        executor = self.executors.default
        result = executor.start(tracked.run_dir, self.jobs_dir / tracked.spec_path)
        if result is None:
            return  # not now (Slurm cannot be reached): tried again later
        self.waiting.pop(tracked.key, None)
        self.state.dirty = True
        if isinstance(result, Final):  # it cannot run as written (or its process could not start)
            self.apply(tracked, result)
            self.forget(tracked, f"{result.state} ({result.reason}): not started")
            return
        self.follow(tracked, result, executor)

    # ------------------------------------------------------------------ endings

    def reap(self) -> None:
        """Record the end of every attempt an executor says is over."""
        for executor in self.executors.made():
            mine = [active for active in self.active if active.executor is executor]
            if not mine:
                continue
            for attempt, final in executor.poll([active.attempt for active in mine]):
                active = next(a for a in mine if a.attempt is attempt)
                self.active.remove(active)
                self.apply(active.tracked, final)
                executor.done(attempt)
                self.tidy(active.tracked.run_dir)
                self.state.dirty = True

    def tidy(self, run_dir: Path) -> None:
        """Remove what an attempt that is over left half-written (no process works on the run now)."""
        removed = remove_leftovers(run_dir)
        if removed:
            self.log(
                f"{run_dir.parent.name}/{run_dir.name}: removed what its last attempt left half-written: "
                + ", ".join(removed)
            )

    def apply(self, tracked: Tracked, final: Final) -> None:
        try:
            status = final.apply(tracked.status_file)
            detail = f" ({status.reason}): {final.error.splitlines()[0]}" if final.error and status.reason else ""
            self.log(f"{tracked.key}: {status.state}{detail}")
        except IllegalTransition as exc:
            # Someone else moved the run on (a foreground `runner run` resumed and finished it, or the
            # previous daemon died between launch and `running`): go by what the file says now.
            current = read_status(tracked.run_dir)
            self.log(f"{tracked.key}: not recording {final.state}: {exc}")
            if current is None:
                return
            status = current
        if status.is_terminal:
            self.tracked.pop(tracked.key, None)
        elif status.state is JobState.INTERRUPTED and not self.stopping:
            if self.parked(status):
                self.forget(tracked, f"killed; {KILLED_HINT} ({self.jobs_dir / tracked.spec_path})")
            else:
                self.requeue(tracked, status)

    def parked(self, status: Status) -> bool:
        """A run killed by an operator waits for a person (`runner run`, `runner cancel`), unless --retry-killed."""
        return (
            status.state is JobState.INTERRUPTED
            and status.reason is FailureClass.KILLED
            and not self.config.retry_killed
        )

    def requeue(self, tracked: Tracked, status: Status) -> None:
        """interrupted -> queued (attempt + 1), or failed once --max-attempts attempts were interrupted."""
        status_file = tracked.status_file
        status_file.transition(JobState.QUEUED)
        if status.attempt >= self.config.max_attempts:
            status_file.transition(
                JobState.FAILED,
                reason=FailureClass.INTERRUPTED,
                error=f"interrupted in each of {status.attempt} attempt(s); not retried "
                f"(--max-attempts {self.config.max_attempts})",
            )
            self.forget(tracked, "failed (interrupted): out of attempts")
        else:
            self.log(
                f"{tracked.key}: queued again (attempt {status.attempt + 1}); "
                "it resumes from its last complete checkpoint"
            )

    # ------------------------------------------------------------------ stopping

    def stop(self, active: Active, intent: Intent, message: str | None = None) -> None:
        """Ask the attempt to stop (it saves a checkpoint first); its end says `intent`."""
        active.attempt.intent = intent
        if message:
            self.log(f"{active.tracked.key}: {message}")
        active.executor.stop(active.attempt)

    def busy(self) -> bool:
        """Whether an attempt runs that stops with the daemon (it waits for those before exiting)."""
        return any(not active.attempt.outlives_supervisor for active in self.active)

    def begin_shutdown(self) -> None:
        """First SIGTERM/SIGINT: the attempts that stop with the daemon checkpoint and are marked interrupted."""
        self.stopping = True
        self.log("stopping: the running job saves a checkpoint first" if self.busy() else "stopping")
        carry_on = [a.tracked.key for a in self.active if a.attempt.outlives_supervisor]
        if carry_on:
            self.log(f"{', '.join(carry_on)} carry on without the daemon; the next `runner watch` follows them")
        for active in self.active:
            if not active.attempt.outlives_supervisor:
                self.stop(active, active.attempt.intent or Intent.SHUTDOWN)

    def force_stop(self) -> None:
        """Second signal: do not wait for the checkpoint (it resumes from the previous complete one)."""
        for active in self.active:
            if not active.attempt.outlives_supervisor:
                active.executor.kill(active.attempt)

    def apply_requests(self, state_dir: Path) -> None:
        """`runner cancel` requests: stop the run's attempt, or cancel the run if it waits."""
        for request in pending_requests(state_dir):
            tracked = self.tracked.get(request.key)
            active = self.active_for(tracked) if tracked is not None else None
            if active is not None:
                if active.attempt.intent is not Intent.CANCEL:
                    self.stop(active, Intent.CANCEL, "cancel requested; stopping it (it saves a checkpoint first)")
            elif tracked is not None:
                if (
                    cancel_waiting_run(tracked.status_file, "cancelled with `runner cancel` while it waited")
                    is not None
                ):
                    self.forget(tracked, "cancelled")
            elif RUN_ID_RE.match(request.run_id) and "/" not in request.job:  # not followed: a killed run that waits
                run_dir = self.runs_root / request.job / request.run_id
                if cancel_waiting_run(StatusFile(run_paths(run_dir).status), "cancelled with `runner cancel`"):
                    self.log(f"{request.key}: cancelled")
            request.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ waiting

    def wait_fds(self) -> list[int]:
        return [fd for executor in self.executors.made() for fd in executor.wait_fds(self._attempts_of(executor))]

    def deadlines(self, now: float) -> list[float]:
        found = (executor.deadline(self._attempts_of(executor), now) for executor in self.executors.made())
        return [deadline for deadline in found if deadline is not None]

    def _attempts_of(self, executor: Executor) -> list[Attempt]:
        return [active.attempt for active in self.active if active.executor is executor]
