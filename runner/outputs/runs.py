"""Where runs live: ``RUNS_ROOT/<job>/<run-id>/`` and how to find the right one.

Run ids are ``YYYYMMDD-HHMMSS-xxxx`` (UTC time + 4 random hex) so that a
plain name sort is chronological; :func:`new_run_dir` also keeps that true for
two runs of one job started within the same second.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runner.outputs.status import JobState, Status, StatusFile, StatusFormatError, utc_now

__all__ = [
    "ENV_RUNS",
    "RUN_ID_RE",
    "RunPaths",
    "find_interrupted_run",
    "is_pid_alive",
    "latest_run",
    "list_runs",
    "new_run_dir",
    "new_run_id",
    "read_status",
    "run_paths",
    "runs_root",
]

ENV_RUNS = "RUNNER_RUNS"
RUN_ID_RE = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{4}$")


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


def latest_run(
    root: Path | str, job: str, *, state: JobState | str | None = None
) -> Path | None:
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
