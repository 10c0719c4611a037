"""`python -m runner.watch.child`: one job of the daemon, in its own process.

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
from pathlib import Path
from typing import Sequence

__all__ = ["main"]

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
    parser = argparse.ArgumentParser(prog="python -m runner.watch.child", description=__doc__)
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--spec-path", required=True, type=Path, help="the job file (relative paths resolve from here)")
    parser.add_argument("--runs-root", required=True, type=Path)
    parser.add_argument("--parent-pipe", type=int, help="read end of a pipe the daemon holds open while it lives")
    parser.add_argument("--registry", type=Path, help="as `runner run --registry`")
    parser.add_argument("--allow-remote-code", action="store_true", help="as `runner run --allow-remote-code`")
    args = parser.parse_args(argv)
    _stop_with_parent(args.parent_pipe)

    from runner.outputs.status import FailureClass, JobState
    from runner.pipeline import OUTCOME_FILE, Supervision, run_job, write_outcome
    from runner.spec import JobSpecError, parse_job
    from runner.watch.store import SPEC_SNAPSHOT

    outcome = args.run_dir / OUTCOME_FILE
    data = (args.run_dir / SPEC_SNAPSHOT).read_bytes()
    try:
        job = parse_job(data, display=str(args.spec_path), default_name=args.spec_path.stem, path=args.spec_path)
    except JobSpecError as exc:  # the daemon validated these bytes; only a changed environment gets here
        write_outcome(outcome, JobState.FAILED, reason=FailureClass.CONFIG, error=str(exc))
        print(exc, file=sys.stderr)
        return 1
    result = run_job(job, args.runs_root, supervised=Supervision(args.run_dir, outcome), registry=args.registry,
                     allow_remote_code=args.allow_remote_code,
                     command=[sys.executable, "-m", "runner.watch.child", *(argv if argv is not None else sys.argv[1:])])
    return result.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
