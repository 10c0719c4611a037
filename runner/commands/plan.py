"""`runner plan JOB`: what a job will need before it runs (runner.plan), printed or as JSON."""

from __future__ import annotations

import argparse
import json
import sys

from runner.commands.common import EXIT_FAILED, EXIT_OK, SIZE_HELP, Subparsers, optional_path, size_argument

EXIT_DOES_NOT_FIT = 4


def add_plan(sub: Subparsers) -> None:
    plan = sub.add_parser(
        "plan",
        help="estimate a job before running it: parameters, memory per method, data, "
        "steps, time; whether it fits (no weights loaded)",
    )
    plan.add_argument("job", help="the job file")
    plan.add_argument(
        "--memory",
        type=size_argument,
        help=f"the memory budget per machine, e.g. 16GiB ({SIZE_HELP}; default: what the job's device has)",
    )
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the short measurement on this device (rule-of-thumb activations, no time estimate)",
    )
    plan.add_argument("--no-cache", action="store_true", help="tokenize the data again instead of using the cache")
    plan.add_argument("--runs-dir", help="where runs are (for job: sources)")
    plan.add_argument("--registry", help="the model registry file (as for `runner run`)")
    plan.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="let a job with model.trust_remote_code = true load the model's own config code",
    )
    plan.set_defaults(func=plan_command)


def plan_command(args: argparse.Namespace) -> int:
    """0 fits (or no budget known), 1 invalid job / cannot run here, 2 usage, 4 does not fit."""
    from runner.data.report import DataError
    from runner.outputs.runs import runs_root
    from runner.plan import plan_job, render
    from runner.registry.folder_facts import WeightsHeaderError
    from runner.registry.sources import SourceError
    from runner.spec import JobSpecError, load_job
    from runner.train.model import ModelSetupError

    try:
        job = load_job(args.job)
    except JobSpecError as exc:
        print(exc, file=sys.stderr)
        return EXIT_FAILED
    try:
        plan = plan_job(
            job,
            runs_root=runs_root(args.runs_dir),
            registry=optional_path(args.registry),
            allow_remote_code=args.allow_remote_code,
            memory_budget=args.memory,
            calibrate_device=not args.no_calibrate,
            use_cache=not args.no_cache,
        )
    except (ModelSetupError, SourceError, DataError, WeightsHeaderError) as exc:
        print(f"{args.job}: cannot plan this job here: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(json.dumps(plan.to_dict(), indent=2) if args.json else render(plan))
    return EXIT_DOES_NOT_FIT if plan.fits is False else EXIT_OK
