"""`python -m runner.executors.child`: one attempt of a supervised run, in its own process.

A fresh interpreter (not a fork of the daemon) so that an exception, an OOM kill or a segfault
in torch takes down only this process, and the daemon never imports torch at all. It runs the
same `run_job` as `runner run`, on the exact bytes the daemon queued (the run folder's
spec.toml, not the job file, which may have changed since), and reports its outcome instead of
writing it: the daemon writes it once this process has exited.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main", "run_supervised"]


def _stop_with_parent(pipe_fd: int | None) -> None:
    """SIGTERM ourselves, once, when the daemon dies, so an orphan checkpoints and stops instead of
    training on unsupervised. The daemon holds the write end of this pipe and never writes: EOF
    means it is gone. (PR_SET_PDEATHSIG fires once per reparenting, i.e. twice when the daemon
    has threads, and is Linux-only.)"""
    if pipe_fd is None:
        return

    def watch() -> None:
        try:
            while os.read(pipe_fd, 64):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="daemon-watch", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.executors.child", description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--spec-path", required=True, type=Path, help="the job file (relative paths resolve from here)")
    parser.add_argument("--runs-root", required=True, type=Path)
    parser.add_argument("--parent-pipe", type=int, help="read end of a pipe the daemon holds open while it lives")
    parser.add_argument("--registry", type=Path, help="as `runner run --registry`")
    parser.add_argument("--allow-remote-code", action="store_true", help="as `runner run --allow-remote-code`")
    args = parser.parse_args(argv)
    _stop_with_parent(args.parent_pipe)
    return run_supervised(
        args.run_dir,
        args.spec_path,
        args.runs_root,
        registry=args.registry,
        allow_remote_code=args.allow_remote_code,
        command=[sys.executable, "-m", "runner.executors.child", *(argv if argv is not None else sys.argv[1:])],
    )


def run_supervised(
    run_dir: Path,
    spec_path: Path,
    runs_root: Path,
    *,
    registry: Path | None = None,
    allow_remote_code: bool = False,
    command: list[str] | None = None,
) -> int:
    """Run the attempt a supervisor set up in `run_dir` (its spec.toml; the end is reported, not written).

    Also what `runner run JOB --run-dir RUN` does on a Slurm node (runner.slurm.node), where the run
    folder is reached through a shared filesystem: check it is there first.
    """
    from runner.outputs.attempts import write_outcome
    from runner.outputs.runs import OUTCOME_FILE, SPEC_SNAPSHOT, read_status
    from runner.outputs.status import FailureClass, JobState
    from runner.pipeline import Supervision, run_job
    from runner.spec import JobSpecError, parse_job

    status = read_status(run_dir)
    if status is None or not (run_dir / SPEC_SNAPSHOT).is_file():
        print(
            f"error: no run folder at {run_dir} (status.json and {SPEC_SNAPSHOT}) on {os.uname().nodename}: on a "
            "cluster, the runs folder (--runs-dir) must be on a filesystem every node sees at the same path",
            file=sys.stderr,
        )
        return 1
    if status.is_terminal:
        print(f"run {run_dir} is already {status.state}; nothing to do", file=sys.stderr)
        return 1
    outcome = run_dir / OUTCOME_FILE
    data = (run_dir / SPEC_SNAPSHOT).read_bytes()
    try:
        job = parse_job(data, display=str(spec_path), default_name=spec_path.stem, path=spec_path)
    except JobSpecError as exc:  # the daemon validated these bytes; only a changed environment gets here
        write_outcome(outcome, JobState.FAILED, reason=FailureClass.CONFIG, error=str(exc))
        print(exc, file=sys.stderr)
        return 1
    result = run_job(
        job,
        runs_root,
        supervised=Supervision(run_dir, outcome),
        registry=registry,
        allow_remote_code=allow_remote_code,
        command=command,
    )
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
