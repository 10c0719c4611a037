"""`runner run JOB --executor slurm`: submit the run to Slurm and follow it to its end, in the foreground.

The run folder is made (or an interrupted run of the same spec is resumed) exactly as for a local
`runner run`; the spec's bytes go into it (`spec.toml`), which is what the allocation runs. The
job's output is printed as it lands in train.log. Ctrl-C scancels the job (it saves a checkpoint
first) and the run ends `interrupted`: running the same command again resumes it on a new
allocation. A second Ctrl-C stops following and leaves the job to Slurm.
"""

from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path
from typing import BinaryIO

from runner.fsutil import atomic_write_bytes
from runner.outputs.attempts import Final, Intent
from runner.outputs.leftovers import remove_leftovers
from runner.outputs.runs import LOG_FILE, SPEC_SNAPSHOT
from runner.outputs.status import JobState, StatusFile
from runner.pipeline import RunResult, prepare_run
from runner.slurm.client import SlurmClient
from runner.slurm.executor import SlurmExecutor, Submission
from runner.spec.loader import LoadedJob

__all__ = ["run_on_slurm"]


def _say(message: str) -> None:
    print(f"runner run: {message}", file=sys.stderr, flush=True)


def run_on_slurm(
    job: LoadedJob,
    runs_root: Path,
    *,
    resume: bool | str = "auto",
    registry: Path | None = None,
    allow_remote_code: bool = False,
    poll: float = 2.0,
    out: BinaryIO | None = None,
) -> int:
    """Submit one attempt of `job` and follow it; the exit code of `runner run` (0, 1, 3)."""
    out = out or sys.stdout.buffer
    missing = SlurmClient.available()
    if missing:
        _say(f"--executor slurm needs the Slurm client commands on this machine; not found: {missing}")
        return 1
    data = job.path.read_bytes()
    if hashlib.sha256(data).hexdigest() != job.sha256:
        _say(f"{job.path} changed while it was being read; run the command again")
        return 1
    run_dir, status_file, _ = prepare_run(job, runs_root, resume=resume)
    atomic_write_bytes(run_dir / SPEC_SNAPSHOT, data)  # the bytes the allocation runs
    executor = SlurmExecutor(
        runs_root=runs_root,
        registry=registry,
        allow_remote_code=allow_remote_code,
        poll=poll,
        log=_say,
        submitter="runner run",
    )
    try:
        submitted = executor.start(run_dir, job.path.absolute())
        while submitted is None:  # the controller cannot be reached: keep trying, like the daemon
            time.sleep(max(0.0, executor.retry_at - time.monotonic()))
            submitted = executor.start(run_dir, job.path.absolute())
    except KeyboardInterrupt:  # nothing reached Slurm: leave no queued run behind that nobody submits
        status_file.transition(JobState.CANCELLED, error="stopped with Ctrl-C before Slurm accepted the job")
        _say(f"cancelled {run_dir}: Slurm never accepted it")
        return 130
    if isinstance(submitted, Final):
        return _record(status_file, submitted, run_dir)
    sub: Submission = submitted
    offset = sub.log_size or 0
    while True:
        try:
            time.sleep(max(0.0, executor.next_poll - time.monotonic()))
            offset = _print_new(run_dir / LOG_FILE, offset, out)
            ended = executor.poll([sub])
            if ended:
                offset = _print_new(run_dir / LOG_FILE, offset, out)
                executor.done(sub)
                return _record(status_file, ended[0][1], run_dir)
        except KeyboardInterrupt:
            if sub.intent is not None:
                _say(f"no longer following Slurm job {sub.job_id}; `runner status {job.name}` shows the run")
                return 130
            sub.intent = Intent.SHUTDOWN
            _say(f"stopping: scancel {sub.job_id}; the run saves a checkpoint first (Ctrl-C again to stop waiting)")
            executor.stop(sub)


def _print_new(path: Path, offset: int, out: BinaryIO) -> int:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except OSError:
        return offset
    if chunk:
        out.write(chunk)
        out.flush()
    return offset + len(chunk)


def _record(status_file: StatusFile, final: Final, run_dir: Path) -> int:
    status = final.apply(status_file)
    remove_leftovers(run_dir)  # the node's process is gone: nothing half-written stays behind
    if final.error and status.state is not JobState.SUCCEEDED:
        _say(f"{status.state}" + (f" ({status.reason})" if status.reason else "") + f": {final.error}")
    else:
        _say(f"{status.state}: {run_dir}")
    return RunResult(run_dir, status.state).exit_code
