"""`runner run JOB`: one job in the foreground (here, or followed on a Slurm cluster)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from runner.commands.common import EXIT_FAILED, EXIT_USAGE, Subparsers, load_job_or_report, missing_paths, optional_path

if TYPE_CHECKING:
    from runner.spec import LoadedJob


def add_run(sub: Subparsers) -> None:
    run = sub.add_parser("run", help="run one job in the foreground")
    run.add_argument("job", help="the job file")
    run.add_argument("--runs-dir", help="where runs are written (default: $RUNNER_RUNS or ./runs)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="resume the interrupted run of this spec (error if none)")
    group.add_argument("--fresh", action="store_true", help="start a new run even if an interrupted one exists")
    run.add_argument(
        "--registry",
        help="the model registry file (default: $RUNNER_REGISTRY, else the nearest "
        "registry/registry.json above the job file or the current folder)",
    )
    run.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="let a job with model.trust_remote_code = true run the model's own Python code",
    )
    run.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="run here (default), or submit it with sbatch to a Slurm cluster and follow it until it ends",
    )
    run.add_argument(
        "--run-dir",
        help="continue this run folder as its submitter set it up (runner watch, "
        "--executor slurm): what the sbatch script runs on the allocation",
    )
    run.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    """The run's exit code: 0 succeeded, 1 failed or invalid, 2 no such job file, 3 interrupted (resumable)."""
    from runner.outputs.runs import runs_root

    registry = optional_path(args.registry)
    if args.run_dir:  # what an sbatch script runs: the attempt its submitter set up (runner.slurm)
        from runner.slurm.node import run_allocation

        return run_allocation(
            Path(args.run_dir).absolute(),
            Path(args.job).absolute(),
            runs_root(args.runs_dir),
            registry=registry,
            allow_remote_code=args.allow_remote_code,
            command=list(sys.argv),
        )
    if missing_paths([args.job], "runner run"):
        return EXIT_USAGE
    job = load_job_or_report(args.job)
    if job is None or _file_problems(job, registry, args.runs_dir):
        return EXIT_FAILED
    resume: bool | str = True if args.resume else False if args.fresh else "auto"
    try:
        if args.executor == "slurm":
            from runner.slurm.foreground import run_on_slurm

            return run_on_slurm(
                job,
                runs_root(args.runs_dir),
                resume=resume,
                registry=registry,
                allow_remote_code=args.allow_remote_code,
            )
        from runner.pipeline import run_job

        result = run_job(
            job, runs_root(args.runs_dir), resume=resume, registry=registry, allow_remote_code=args.allow_remote_code
        )
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return result.exit_code


def _file_problems(job: LoadedJob, registry: Path | None, runs_dir: str | None) -> bool:
    """Report what `runner validate` finds on this machine (data files, model source, registry alias,
    job name) before a run folder is made or a library is imported: a typo in a path costs no model load."""
    from runner.outputs.runs import runs_root
    from runner.spec.filechecks import Surroundings, check_files

    issues = check_files(job, Surroundings(registry=registry, runs_dir=runs_root(runs_dir)))
    for issue in issues:
        print(issue, file=sys.stderr)
    if issues:
        print(f"{job.path}: cannot run here; fix the problems above (runner validate {job.path})", file=sys.stderr)
    return bool(issues)
