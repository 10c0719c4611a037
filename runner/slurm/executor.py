"""Submit runs to Slurm, follow them, stop them: what `runner watch --executor slurm` and
`runner run --executor slurm` share (the `runner.executors.base.Executor` interface).

Each attempt of a run is one Slurm job (`sbatch --no-requeue`): an interruption ends it, the run
is queued again (attempt + 1) and submitted again, and the new allocation resumes from the run's
newest complete checkpoint. What Slurm says about the job is kept in `status.json` as
`extra.slurm`: the job id, its state, reason, exit code and nodes, and every job of the run
(`jobs`, one per attempt). While Slurm keeps the job pending the run is `queued`, with the
pending reason in `extra.waiting` (so `runner status` shows it).

The state changes go through `StatusFile` (the one transition function, atomic writes); the end of
an attempt is returned as a `Final` for the caller to apply, the same way a local child's exit is.
"""

from __future__ import annotations

import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.executors.base import Attempt, Executor
from runner.fsutil import atomic_write_text
from runner.outputs.attempts import Final, log_tail, read_outcome
from runner.outputs.runs import LOG_FILE, OUTCOME_FILE, SPEC_SNAPSHOT, run_paths
from runner.outputs.status import FailureClass, JobState, Status, StatusFile, format_utc, utc_now
from runner.slurm.client import SbatchRefused, SlurmClient, SlurmError
from runner.slurm.sbatch import batch_script, node_command, sbatch_options
from runner.slurm.states import SLURM_KEY, UNKNOWN, JobInfo, Phase, live_job
from runner.slurm.states import classify_end as _classify_end

__all__ = ["SLURM_KEY", "SlurmExecutor", "Submission", "live_job"]

OUTCOME_GRACE = 15.0  # s: Slurm says COMPLETED/FAILED but the node's report is not visible yet (NFS caches)
FORGET_AFTER = 3  # polls in which Slurm does not know a job before it counts as gone
RETRY_AFTER = 30.0  # s: sbatch could not reach the controller; submit again after this


@dataclass(eq=False)
class Submission(Attempt):
    """One submitted attempt the submitter follows (it carries on when the submitter stops)."""

    outlives_supervisor = True

    job_id: str
    run_dir: Path
    attempt: int
    state: str = "PENDING"
    reason: str | None = None
    ran: bool = False  # seen running: the run is `running`
    log_size: int | None = None  # train.log's size after our header; unchanged at the end: the node wrote nothing
    ended_seen: float | None = None  # when the end was first seen without the node's report
    missing: int = 0
    cancel_sent: bool = False

    @property
    def status_file(self) -> StatusFile:
        return StatusFile(run_paths(self.run_dir).status)


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


class SlurmExecutor(Executor):
    """Submits, polls and cancels the Slurm jobs of runs under one runs root."""

    name = "slurm"

    def __init__(
        self,
        *,
        runs_root: Path,
        python: str = sys.executable,
        registry: Path | None = None,
        allow_remote_code: bool = False,
        poll: float = 5.0,
        client: SlurmClient | None = None,
        log: Callable[[str], None] = print,
        submitter: str = "runner watch",
    ) -> None:
        self.runs_root = runs_root
        self.python = python
        self.registry = registry
        self.allow_remote_code = allow_remote_code
        self.poll_every = poll
        self.client = client or SlurmClient()
        self.log = log
        self.submitter = submitter
        self.next_poll = 0.0  # time.monotonic() of the next poll
        self.retry_at = 0.0  # no submission before this (sbatch could not reach the controller)

    # ------------------------------------------------------------------ submit

    @classmethod
    def claims(cls, status: Status) -> bool:
        return live_job(status) is not None

    def can_submit(self) -> bool:
        return time.monotonic() >= self.retry_at

    def capacity(self, active: Sequence[Attempt]) -> int | None:
        """Every ready run (the cluster queues them), unless sbatch could not reach the controller."""
        return None if self.can_submit() else 0

    def start(self, run_dir: Path, spec_path: Path) -> Submission | Final | None:
        """sbatch the run's current attempt: a `Submission` to follow; a `Final` (failed, config) if
        the job cannot be submitted as written; None if Slurm cannot be reached now (retried later)."""
        from runner.spec import JobSpecError, parse_job

        status_file = StatusFile(run_paths(run_dir).status)
        status = status_file.read()
        if status is None:
            return None
        try:
            job = parse_job(
                (run_dir / SPEC_SNAPSHOT).read_bytes(),
                display=str(spec_path),
                default_name=spec_path.stem,
                path=spec_path,
            )
            options = sbatch_options(job.spec.resources, job_name=f"runner-{job.name}", log_path=run_dir / LOG_FILE)
        except (OSError, JobSpecError, ValueError) as exc:
            return Final(JobState.FAILED, FailureClass.CONFIG, f"cannot submit {run_dir / SPEC_SNAPSHOT}: {exc}")
        command = node_command(
            self.python,
            spec_path,
            run_dir=run_dir,
            runs_root=self.runs_root,
            registry=self.registry,
            allow_remote_code=self.allow_remote_code,
        )
        script = run_dir / ".slurm" / f"attempt-{status.attempt}.sh"
        script.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            script,
            batch_script(
                command,
                options,
                comment=(
                    f"runner: attempt {status.attempt} of run {status.job}/{status.run_id}\n"
                    f"submitted by {self.submitter} on {socket.gethostname()} (pid {os.getpid()})"
                ),
            ),
        )
        (run_dir / OUTCOME_FILE).unlink(missing_ok=True)  # a stale report must not speak for this attempt
        try:
            job_id = self.client.sbatch(script, options)
        except SbatchRefused as exc:
            return Final(
                JobState.FAILED,
                FailureClass.CONFIG,
                f"sbatch refused the job: {exc}\nfix [resources] / [resources.slurm] in {spec_path} "
                f"(its sbatch options: {shlex.join(options)})",
            )
        except SlurmError as exc:
            self.retry_at = time.monotonic() + RETRY_AFTER
            self.log(f"{status.job}/{status.run_id}: cannot submit now ({exc}); trying again in {RETRY_AFTER:g} s")
            return None
        log_path = run_dir / LOG_FILE  # the job appends its output here; it needs seconds to get going
        with open(log_path, "ab") as log:
            log.write(
                f"==== {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z} {self.submitter}: attempt "
                f"{status.attempt} of {status.job}/{status.run_id}: Slurm job {job_id} ({script}) ====\n".encode()
            )
        previous = status.extra.get(SLURM_KEY)
        jobs = list(previous.get("jobs") or []) if isinstance(previous, dict) else []
        jobs.append({"job_id": job_id, "attempt": status.attempt, "state": "PENDING", "exit_code": None})
        record = {
            "job_id": job_id,
            "attempt": status.attempt,
            "state": "PENDING",
            "reason": None,
            "exit_code": None,
            "nodes": None,
            "time_limit": job.spec.resources.time_limit,
            "submitted": format_utc(utc_now()),
            "ended": False,
            "script": str(script),
            "jobs": jobs,
        }
        status_file.update(extra={SLURM_KEY: record, "waiting": f"slurm job {job_id}: submitted"})
        self.log(f"{status.job}/{status.run_id}: attempt {status.attempt} submitted as Slurm job {job_id}")
        return Submission(job_id, run_dir, status.attempt, log_size=_size(log_path))

    def adopt(self, run_dir: Path, status: Status) -> Submission | None:
        """Follow a run another submitter (a daemon before a restart) left with Slurm, if it has one."""
        job_id = live_job(status)
        if job_id is None:
            return None
        record = status.extra[SLURM_KEY]
        self.log(f"{status.job}/{status.run_id}: following its Slurm job {job_id} ({status.state})")
        return Submission(
            job_id,
            run_dir,
            status.attempt,
            state=str(record.get("state") or "PENDING"),
            reason=record.get("reason"),
            ran=status.state is JobState.RUNNING,
        )

    # -------------------------------------------------------------------- follow

    def poll_due(self) -> bool:
        return time.monotonic() >= self.next_poll

    def deadline(self, attempts: Sequence[Attempt], now: float) -> float | None:
        times = [self.next_poll] if attempts else []
        if self.retry_at > now:
            times.append(self.retry_at)
        return min(times) if times else None

    def poll(self, attempts: Sequence[Attempt]) -> list[tuple[Attempt, Final]]:
        """Every --slurm-poll seconds, ask Slurm about the followed jobs once; record pending reasons
        and starts; return the ones that are over with the transition to apply (then call `done`)."""
        followed = [sub for sub in attempts if isinstance(sub, Submission)]
        if not followed or not self.poll_due():
            return []
        self.next_poll = time.monotonic() + self.poll_every
        for sub in followed:  # a scancel that failed (controller down) is sent again
            if sub.intent is not None:
                self.stop(sub)
        try:
            infos = self.client.query(sub.job_id for sub in followed)
        except SlurmError as exc:
            self.log(f"cannot ask Slurm about its jobs ({exc}); asking again in {self.poll_every:g} s")
            return []
        ended: list[tuple[Attempt, Final]] = []
        for sub in followed:
            info = infos.get(sub.job_id)
            if info is None:
                sub.missing += 1
                if sub.missing < FORGET_AFTER:
                    continue
                info = JobInfo(sub.job_id, UNKNOWN, source="none")
            sub.missing = 0
            final = self.observe(sub, info)
            if final is not None:
                ended.append((sub, final))
        return ended

    def observe(self, sub: Submission, info: JobInfo) -> Final | None:
        """Record what Slurm says about one followed job: its pending reason, its start; once it is
        over, the transition to apply (None while it is not, or while its report may still arrive)."""
        status_file = sub.status_file
        status = status_file.read()
        if status is None:
            return None
        phase = info.phase
        if phase is Phase.REQUEUED or (phase is Phase.PENDING and sub.ran):
            # Slurm put the job back in its queue: this allocation is over; the run is queued again by
            # us (its attempt count, a new sbatch), so this copy must not run as well.
            self.stop(sub)
            info = JobInfo(
                info.job_id,
                "REQUEUED",
                info.reason,
                info.exit_code,
                info.nodes,
                info.start,
                info.end,
                info.time_limit,
                info.source,
            )
            phase = Phase.ENDED
        if phase is Phase.PENDING:
            if (info.state, info.reason) != (sub.state, sub.reason):
                sub.state, sub.reason = info.state, info.reason
                why = f"slurm job {sub.job_id}: {info.state.lower()}" + (f" ({info.reason})" if info.reason else "")
                status_file.update(extra={SLURM_KEY: self._record(status, info), "waiting": why})
            return None
        if phase is Phase.RUNNING:
            if not sub.ran:
                sub.ran = True
                if status.state is JobState.QUEUED:
                    status_file.transition(
                        JobState.RUNNING, extra={SLURM_KEY: self._record(status, info), "waiting": None}
                    )
                    self.log(f"{status.job}/{status.run_id}: Slurm job {sub.job_id} running on {info.nodes}")
            elif info.state != sub.state:
                status_file.update(extra={SLURM_KEY: self._record(status, info)})
            sub.state = info.state
            return None
        return self._ended(sub, status, info)

    def _ended(self, sub: Submission, status: Status, info: JobInfo) -> Final | None:
        outcome = read_outcome(sub.run_dir / OUTCOME_FILE)
        if outcome is None and sub.intent is None and info.state in ("COMPLETED", "FAILED"):
            now = time.monotonic()  # the node's report may not be visible here yet (NFS attribute caches)
            sub.ended_seen = sub.ended_seen if sub.ended_seen is not None else now
            if now - sub.ended_seen < OUTCOME_GRACE:
                try:
                    os.listdir(sub.run_dir)  # refreshes a network filesystem's view of the folder
                except OSError:
                    pass
                return None
        log_path = sub.run_dir / LOG_FILE
        size = _size(log_path)
        final = _classify_end(
            info,
            outcome,
            sub.intent,
            log_tail=log_tail(log_path),
            python=self.python,
            log_missing=sub.log_size is not None and size is not None and size <= sub.log_size,
        )
        ran = sub.ran or bool(info.nodes)
        if status.state is JobState.QUEUED and (ran or final.state in (JobState.SUCCEEDED, JobState.INTERRUPTED)):
            sub.status_file.transition(JobState.RUNNING, extra={"waiting": None})  # it ran between two polls
        fields: dict[str, Any] = dict(final.fields)
        fields["extra"] = {
            **dict(fields.get("extra") or {}),
            SLURM_KEY: self._record(status, info, ended=True),
            "waiting": None,
        }
        return Final(final.state, final.reason, final.error, fields)

    def _record(self, status: Status, info: JobInfo, *, ended: bool = False) -> dict[str, Any]:
        record = dict(status.extra.get(SLURM_KEY) or {})
        record.update({k: v for k, v in info.record().items() if v is not None or k in ("reason", "exit_code")})
        record["ended"] = ended
        jobs = [dict(entry) for entry in record.get("jobs") or []]
        for entry in jobs:
            if entry.get("job_id") == info.job_id:
                entry.update(state=info.state, exit_code=info.exit_code)
        record["jobs"] = jobs
        return record

    # ---------------------------------------------------------------------- stop

    def stop(self, attempt: Attempt) -> None:
        """scancel the job once: Slurm sends SIGTERM (the run saves a checkpoint), then SIGKILL after
        its KillWait. The end is recorded by `poll` once Slurm says the job is over."""
        sub = attempt
        assert isinstance(sub, Submission)
        if sub.cancel_sent:
            return
        try:
            self.client.cancel(sub.job_id)
        except SlurmError as exc:
            self.log(f"{exc}; trying again at the next poll")
            return
        sub.cancel_sent = True
        self.log(f"scancel {sub.job_id} ({sub.run_dir.parent.name}/{sub.run_dir.name})")
