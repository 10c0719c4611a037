"""Where runs live: ``RUNS_ROOT/<job>/<run-id>/`` and how to find the right one.

Run ids are ``YYYYMMDD-HHMMSS-xxxx`` (UTC time + 4 random hex) so that a
plain name sort is chronological; :func:`new_run_dir` also keeps that true for
two runs of one job started within the same second.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.outputs.status import JobState, Status, StatusFile, StatusFormatError, utc_now

__all__ = [
    "ENV_RUNS",
    "LOG_FILE",
    "OUTCOME_FILE",
    "PENDING_STATES",
    "RUN_ID_RE",
    "SPEC_SNAPSHOT",
    "STAGING_DIR",
    "RunPaths",
    "find_interrupted_run",
    "is_pid_alive",
    "latest_run",
    "list_runs",
    "new_run_dir",
    "new_run_id",
    "pending_jobs_training_on",
    "read_status",
    "run_paths",
    "runs_root",
    "status_rows",
]

ENV_RUNS = "RUNNER_RUNS"
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")
PENDING_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.INTERRUPTED)

# The files of a run folder that every supervisor (the daemon, a Slurm submitter, the process
# doing the work) agrees on.
SPEC_SNAPSHOT = "spec.toml"  # the exact bytes of the job file version the run is for
LOG_FILE = "train.log"  # the attempts' stdout and stderr, appended attempt after attempt
OUTCOME_FILE = ".outcome.json"  # how a supervised attempt ended, as its process saw it (runner.outputs.attempts)
STAGING_DIR = ".trainer"  # the Trainer's output_dir: checkpoint-N is written here, then renamed into checkpoints/


@dataclass(frozen=True)
class RunPaths:
    """The fixed layout of one run folder, so no module hard-codes file names."""

    root: Path

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def spec_snapshot(self) -> Path:
        return self.root / SPEC_SNAPSHOT

    @property
    def log(self) -> Path:
        return self.root / LOG_FILE

    @property
    def outcome(self) -> Path:
        return self.root / OUTCOME_FILE

    @property
    def staging(self) -> Path:
        return self.root / STAGING_DIR


def run_paths(run_dir: Path | str) -> RunPaths:
    return RunPaths(Path(run_dir))


def runs_root(cli_value: str | None = None, *, env: Mapping[str, str] | None = None) -> Path:
    """``--runs-dir`` if given, else ``$RUNNER_RUNS``, else ``./runs``; made absolute.

    Absolute so the daemon and its children agree even if one of them chdirs.
    """
    environ = os.environ if env is None else env
    chosen = cli_value or environ.get(ENV_RUNS) or "runs"
    return Path(chosen).expanduser().absolute()


def new_run_id(now: datetime | None = None) -> str:
    """``YYYYMMDD-HHMMSS-xxxx`` in UTC; ``now`` must be timezone-aware."""
    when = now or utc_now()
    return f"{when.astimezone(UTC):%Y%m%d-%H%M%S}-{secrets.token_hex(2)}"


def list_runs(root: Path | str, job: str) -> list[Path]:
    """A job's run folders, oldest first; anything not named like a run id is ignored."""
    job_dir = Path(root) / job
    if not job_dir.is_dir():
        return []
    return sorted(p for p in job_dir.iterdir() if RUN_ID_RE.match(p.name) and p.is_dir())


def new_run_dir(root: Path | str, job: str, *, now: datetime | None = None) -> Path:
    """Create and return a fresh, empty run folder that sorts after all existing runs of ``job``.

    The random suffix alone could sort a second run of the same second before
    the first, so the id is bumped past the newest existing one if needed.
    """
    when = now or utc_now()
    job_dir = Path(root) / job
    job_dir.mkdir(parents=True, exist_ok=True)
    existing = list_runs(root, job)
    newest = existing[-1].name if existing else ""
    for _ in range(1000):
        run_id = new_run_id(when)
        prefix = run_id[:15]
        if newest[:15] > prefix:  # clock went backwards: stay chronological by name
            when = datetime.strptime(newest[:15], "%Y%m%d-%H%M%S").replace(tzinfo=UTC)
            continue
        if newest[:15] == prefix and run_id <= newest:
            top = int(newest[16:], 16)
            if top >= 0xFFFF:
                when = when + timedelta(seconds=1)
                continue
            run_id = f"{prefix}-{secrets.choice(range(top + 1, 0x10000)):04x}"
        path = job_dir / run_id
        try:
            path.mkdir()
        except FileExistsError:
            newest = max(newest, run_id)
            continue
        return path
    raise RuntimeError(f"could not allocate a run id under {job_dir}")


def read_status(run_dir: Path | str) -> Status | None:
    """The run's status, or None if it has none or it cannot be parsed."""
    try:
        return StatusFile(run_paths(run_dir).status).read()
    except (StatusFormatError, OSError):
        return None


def latest_run(root: Path | str, job: str, *, state: JobState | str | None = None) -> Path | None:
    """Newest run of ``job``; with ``state``, the newest whose status is in that state."""
    wanted = JobState(state) if state is not None else None
    for run in reversed(list_runs(root, job)):
        if wanted is None:
            return run
        status = read_status(run)
        if status is not None and status.state is wanted:
            return run
    return None


def is_pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists (on this machine).

    ``PermissionError`` means it exists but is someone else's.  A reused pid,
    or an exited child its parent has not reaped yet (zombie), reads as alive:
    the safe mistake (we start a new run instead of two processes sharing one
    run folder).
    """
    if pid is None or pid <= 0:  # 0 / negatives would address process groups
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def find_interrupted_run(root: Path | str, job: str, spec_sha256: str) -> Path | None:
    """The run ``runner run`` should resume instead of starting afresh, or None.

    Looks only at the most recent run of ``job`` with this spec hash, and
    returns it if it is ``interrupted``, or ``running`` with a recorded pid
    that no longer exists (its process was killed without a word).  An older
    interrupted run behind a newer one of the same spec is not resumed: the
    newer run superseded it.  ``running`` without a pid is not resumed either,
    since we cannot prove nobody owns it, nor one a Slurm job runs (``extra.slurm``).
    """
    for run in reversed(list_runs(root, job)):
        status = read_status(run)
        if status is None or status.spec_sha256 != spec_sha256:
            continue
        if status.state is JobState.INTERRUPTED:
            return run
        if status.state is JobState.RUNNING and isinstance(status.extra.get("slurm"), dict):
            return None  # a Slurm job runs it: its pid is on another machine
        if status.state is JobState.RUNNING and status.pid is not None:
            return None if is_pid_alive(status.pid) else run
        return None
    return None


def _job_names(root: Path) -> list[str]:
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def status_rows(root: Path, job: str | None = None) -> list[tuple[Path, Status]]:
    """What `runner status` shows: every run of `job`; without one, each job's newest run plus any
    other run still pending (an older version still running while a newer one waits)."""
    jobs = [job] if job else _job_names(root)
    rows: list[tuple[Path, Status]] = []
    for name in jobs:
        runs = [(run, status) for run in list_runs(root, name) if (status := read_status(run)) is not None]
        if job:
            rows.extend(runs)
            continue
        rows.extend(
            (run, status)
            for i, (run, status) in enumerate(runs)
            if i == len(runs) - 1 or status.state in PENDING_STATES
        )
    return rows


def pending_jobs_training_on(source: str, root: Path, jobs_dir: Path | None = None) -> list[str]:
    """`job (state)` for each job whose newest run is queued, running or interrupted and trains on
    the model `source` (e.g. ``registry:alias``), read from the run's spec copy, its manifest, or
    the job file in `jobs_dir`."""
    found: list[str] = []
    if not root.is_dir():
        return found
    for job_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        runs = list_runs(root, job_dir.name)
        status = read_status(runs[-1]) if runs else None
        if status is None or status.state not in PENDING_STATES:
            continue
        model = _model_source(runs[-1], jobs_dir, job_dir.name)
        if model is not None and model.strip() == source:
            found.append(f"{job_dir.name} ({status.state.value})")
    return found


def _model_source(run_dir: Path, jobs_dir: Path | None, job: str) -> str | None:
    """model.source of the spec a pending run will train: its queued spec copy, manifest, or job file."""
    readers = [
        (_toml_source, run_dir / "spec.toml"),
        (_toml_source, run_dir / "job.toml"),
        (_manifest_source, run_paths(run_dir).manifest),
    ]
    if jobs_dir is not None:
        readers.append((_toml_source, jobs_dir / f"{job}.toml"))
    for read, path in readers:
        if (source := read(path)) is not None:
            return source
    return None


def _toml_source(path: Path) -> str | None:
    try:
        return str(tomllib.loads(path.read_text(encoding="utf-8"))["model"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _manifest_source(path: Path) -> str | None:
    try:
        return str(json.loads(path.read_text(encoding="utf-8"))["spec"]["model"]["source"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
