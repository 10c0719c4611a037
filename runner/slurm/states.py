"""Slurm's view of a job -> ours: states, exit codes, and the output of squeue / scontrol / sacct.

Pure functions over text and plain values, so the mapping is tested without a cluster.

    PENDING (and CONFIGURING, held)                    -> queued
    RUNNING (and COMPLETING, SUSPENDED, ...)           -> running
    COMPLETED                                          -> succeeded (the run reported success)
    FAILED, OUT_OF_MEMORY, DEADLINE, SPECIAL_EXIT      -> failed, with a class (oom, timeout, crash, ...);
                                                          killed by SIGKILL (exit code 0:9) -> interrupted
                                                          (killed), resumable but not retried unasked
    CANCELLED, REVOKED                                 -> cancelled
    TIMEOUT, PREEMPTED, NODE_FAIL, BOOT_FAIL, REQUEUED -> interrupted: queued again, resumed from the
                                                          last complete checkpoint on a new allocation

The process on the node reports how the run ended (`.outcome.json`) when it can; that report
wins where it knows more (it succeeded just before the time limit; it failed with a data error
and exit code 1, which Slurm only calls FAILED).
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass
from enum import StrEnum

from runner.outputs.attempts import KILLED_HINT, STOP_SIGNALS, Final, Intent, Outcome, signal_name
from runner.outputs.status import FailureClass, JobState, Status

__all__ = [
    "SACCT_FIELDS",
    "SLURM_KEY",
    "SQUEUE_FORMAT",
    "JobInfo",
    "Phase",
    "classify_end",
    "live_job",
    "parse_exit_code",
    "parse_sacct",
    "parse_scontrol",
    "parse_squeue",
    "phase_of",
]

SLURM_KEY = "slurm"  # in status.extra: what Slurm says about the run's jobs (runner.slurm.executor)
SQUEUE_FORMAT = "%i|%T|%N|%S|%e|%l|%r"  # reason last: it is free text
SACCT_FIELDS = "JobIDRaw,State,ExitCode,NodeList,Start,End,Timelimit"


class Phase(StrEnum):
    """Where a Slurm job is, in our terms."""

    PENDING = "pending"  # waiting for an allocation: our run is queued
    RUNNING = "running"  # its processes run (or are being stopped): our run is running
    REQUEUED = "requeued"  # Slurm put it back in its queue: for us an interruption
    ENDED = "ended"  # over: `classify_end` says what became of the run


_PENDING = {"PENDING", "CONFIGURING", "RESV_DEL_HOLD"}
_REQUEUED = {"REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"}
_RUNNING = {"RUNNING", "COMPLETING", "SIGNALING", "STAGE_OUT", "RESIZING", "SUSPENDED", "STOPPED"}
ENDED_STATES: dict[str, JobState] = {
    "COMPLETED": JobState.SUCCEEDED,
    "FAILED": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "DEADLINE": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,
    "TIMEOUT": JobState.INTERRUPTED,
    "PREEMPTED": JobState.INTERRUPTED,
    "NODE_FAIL": JobState.INTERRUPTED,
    "BOOT_FAIL": JobState.INTERRUPTED,
    "REQUEUED": JobState.INTERRUPTED,  # (its phase is REQUEUED: the submitter scancels it and resubmits)
}
UNKNOWN = "UNKNOWN"  # our name for a job Slurm no longer knows (purged from squeue, no accounting)


def live_job(status: Status) -> str | None:
    """The Slurm job working on this run now: submitted for its current attempt and not over."""
    record = status.extra.get(SLURM_KEY)
    if status.state not in (JobState.QUEUED, JobState.RUNNING) or not isinstance(record, dict):
        return None
    if not record.get("job_id") or record.get("attempt") != status.attempt or record.get("ended"):
        return None
    return str(record["job_id"])


def normalize_state(text: str) -> str:
    """'CANCELLED by 1000' (sacct), 'cancelled+' (truncated) -> 'CANCELLED'."""
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    return word or UNKNOWN


def phase_of(state: str) -> Phase:
    """A Slurm state's phase; a state this code does not know counts as running (keep watching)."""
    state = normalize_state(state)
    if state in _PENDING:
        return Phase.PENDING
    if state in _REQUEUED:
        return Phase.REQUEUED
    if state in ENDED_STATES or state == UNKNOWN:
        return Phase.ENDED
    return Phase.RUNNING


def parse_exit_code(text: str | None) -> tuple[int, int] | None:
    """Slurm's 'RETURNCODE:SIGNAL' ('3:0', '0:9') -> (3, 0), (0, 9); None if absent or malformed."""
    if not text:
        return None
    match = re.fullmatch(r"\s*(\d+):(\d+)\s*", text)
    return (int(match.group(1)), int(match.group(2))) if match else None


@dataclass(frozen=True)
class JobInfo:
    """What Slurm says about one job, from whichever command knew it."""

    job_id: str
    state: str  # Slurm's long state name, normalized: "TIMEOUT"
    reason: str | None = None  # "Priority", "Resources", "TimeLimit", "NonZeroExitCode", ...
    exit_code: str | None = None  # "3:0": return code 3; "0:9": killed by signal 9
    nodes: str | None = None
    start: str | None = None
    end: str | None = None
    time_limit: str | None = None
    source: str = "squeue"

    @property
    def phase(self) -> Phase:
        return phase_of(self.state)

    def record(self) -> dict[str, str | None]:
        """The fields kept in status.json (`extra.slurm`)."""
        return {
            "state": self.state,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "nodes": self.nodes,
            "time_limit": self.time_limit,
        }


def _blank(value: str) -> str | None:
    value = value.strip()
    return None if value in ("", "(null)", "None", "N/A", "Unknown", "(None)") else value


def parse_squeue(text: str) -> dict[str, JobInfo]:
    """`squeue --noheader --states=all --format=SQUEUE_FORMAT` output -> job id -> info."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.split("|", 6)
        if len(parts) != 7 or not parts[0].strip():
            continue
        job_id, state, nodes, start, end, limit, reason = (p.strip() for p in parts)
        jobs[job_id] = JobInfo(
            job_id,
            normalize_state(state),
            _blank(reason),
            None,
            _blank(nodes),
            _blank(start),
            _blank(end),
            _blank(limit),
            "squeue",
        )
    return jobs


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_/:]*)=")


def parse_scontrol(text: str) -> dict[str, JobInfo]:
    """`scontrol show job -o ID` output (one line per job, `Key=Value` pairs; values may hold spaces)."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        keys = list(_SCONTROL_KEY.finditer(line))
        fields = {
            m.group(1): line[m.end() : keys[i + 1].start() if i + 1 < len(keys) else len(line)].strip()
            for i, m in enumerate(keys)
        }
        job_id = fields.get("JobId")
        if not job_id:
            continue
        jobs[job_id] = JobInfo(
            job_id,
            normalize_state(fields.get("JobState", "")),
            _blank(fields.get("Reason", "")),
            _blank(fields.get("ExitCode", "")),
            _blank(fields.get("NodeList", "")),
            _blank(fields.get("StartTime", "")),
            _blank(fields.get("EndTime", "")),
            _blank(fields.get("TimeLimit", "")),
            "scontrol",
        )
    return jobs


def parse_sacct(text: str) -> dict[str, JobInfo]:
    """`sacct --noheader --parsable2 --allocations --format=SACCT_FIELDS` output -> job id -> info.
    With several records of one id (a requeued job), the last one is the current."""
    jobs: dict[str, JobInfo] = {}
    for line in text.splitlines():
        parts = line.split("|")
        if len(parts) < 7 or not parts[0].strip() or "." in parts[0]:
            continue  # steps (123.batch) are not the job
        job_id, state, exit_code, nodes, start, end, limit = (p.strip() for p in parts[:7])
        jobs[job_id] = JobInfo(
            job_id,
            normalize_state(state),
            None,
            _blank(exit_code),
            _blank(nodes) if nodes != "None assigned" else None,
            _blank(start),
            _blank(end),
            _blank(limit),
            "sacct",
        )
    return jobs


# --------------------------------------------------------------------------- the end of a job

_CANCEL_TEXT = {
    Intent.CANCEL: "cancelled with `runner cancel`",
    Intent.SUPERSEDE: "cancelled: a newer version of its job file replaces it",
    Intent.DROP: "cancelled: its job file was deleted before it started",
}


def _label(info: JobInfo) -> str:
    text = f"Slurm job {info.job_id} {info.state}" if info.state != UNKNOWN else f"Slurm job {info.job_id}"
    details = []
    if info.reason and info.reason not in ("None", info.state):
        details.append(info.reason)
    if info.state == "TIMEOUT" and info.time_limit:
        details.append(f"time limit {info.time_limit}")
    if info.exit_code and info.exit_code != "0:0":
        details.append(f"exit code {info.exit_code}")
    return text + (f" ({', '.join(details)})" if details else "")


def classify_end(
    info: JobInfo,
    outcome: Outcome | None,
    intent: Intent | None,
    *,
    log_tail: str = "",
    log_missing: bool = False,
    python: str = "python",
) -> Final:
    """The state a run goes to now that its Slurm job is over (or gone from Slurm's memory).

    `outcome` is the node process's own report, if it wrote one; `intent` why the submitter
    scancelled it, if it did; `log_missing`: the job left no train.log (the node could not write
    to the run folder).
    """
    label = _label(info)
    tail = f"\nlast lines of train.log:\n{log_tail}" if log_tail.strip() else ""
    if outcome is not None and outcome.state in (JobState.SUCCEEDED, JobState.FAILED):
        return Final(outcome.state, outcome.reason, outcome.error, dict(outcome.fields))  # it knows best
    if intent in _CANCEL_TEXT:
        return Final(JobState.CANCELLED, FailureClass.CANCELLED_BY_USER, f"{_CANCEL_TEXT[intent]} ({label})")
    said = f": {outcome.error}" if outcome is not None and outcome.error else ""
    if intent is Intent.SHUTDOWN:
        return Final(
            JobState.INTERRUPTED,
            FailureClass.INTERRUPTED,
            f"stopped with scancel ({label}){said}; it resumes from its last complete checkpoint",
        )
    state = info.state
    ours = ENDED_STATES.get(state)
    if ours is JobState.INTERRUPTED:
        saved = said or " before it saved a checkpoint"
        return Final(
            JobState.INTERRUPTED,
            FailureClass.INTERRUPTED,
            f"{label}{saved}; it resumes from its last complete checkpoint on a new allocation",
        )
    if ours is JobState.CANCELLED:
        return Final(
            JobState.CANCELLED,
            FailureClass.CANCELLED_BY_USER,
            f"{label}: cancelled outside the runner (scancel, or an administrator)",
        )
    if state == "OUT_OF_MEMORY":
        return Final(
            JobState.FAILED,
            FailureClass.OOM,
            f"{label}: the job used more memory than it was given; raise resources.memory, or use a "
            "smaller train.batch_size or data.max_length" + tail,
        )
    if state == "DEADLINE":
        return Final(JobState.FAILED, FailureClass.TIMEOUT, f"{label}: it reached its --deadline" + tail)
    if outcome is not None:  # interrupted by a signal Slurm did not send as a time limit (exit 3: FAILED)
        return Final(
            outcome.state,
            outcome.reason,
            f"{outcome.error} ({label})" if outcome.error else label,
            dict(outcome.fields),
        )
    if state == UNKNOWN:
        return Final(
            JobState.INTERRUPTED,
            FailureClass.INTERRUPTED,
            f"{label} is no longer known to Slurm (squeue, sacct) and the run did not report how it "
            "ended; it resumes from its last complete checkpoint",
        )
    if log_missing:
        return Final(
            JobState.FAILED,
            FailureClass.CRASH,
            f"{label} and left no train.log: the node could not write to the run folder. Put the runs "
            "folder (--runs-dir) on a filesystem every node sees at the same path",
        )
    return _classify_exit(info, label, tail, python)


def _classify_exit(info: JobInfo, label: str, tail: str, python: str) -> Final:
    """The end of a job that reported nothing, told by its Slurm state and exit code (signal, or a
    node that could not start the program)."""
    code = parse_exit_code(info.exit_code)
    if info.state == "COMPLETED":
        return Final(JobState.FAILED, FailureClass.CRASH, f"{label}, but the run did not report how it ended" + tail)
    if code is not None and code[1]:
        number = code[1]
        if number == signal.SIGKILL:  # Slurm says OUT_OF_MEMORY when its cgroup's OOM killer did it
            return Final(JobState.INTERRUPTED, FailureClass.KILLED, f"{label}: killed by SIGKILL; {KILLED_HINT}")
        if number in STOP_SIGNALS:
            return Final(
                JobState.INTERRUPTED,
                FailureClass.INTERRUPTED,
                f"{label}: stopped by {signal_name(number)} before it could save a checkpoint; "
                "it resumes from its last complete checkpoint",
            )
        return Final(JobState.FAILED, FailureClass.CRASH, f"{label}: died from {signal_name(number)}" + tail)
    if code is not None and code[0] in (126, 127):
        return Final(
            JobState.FAILED,
            FailureClass.CRASH,
            f"{label}: the node could not start {python}; install the project at the same path on "
            "every node (a shared filesystem) or submit from a virtualenv the nodes see" + tail,
        )
    return Final(JobState.FAILED, FailureClass.CRASH, f"{label}: the run did not report how it ended" + tail)
