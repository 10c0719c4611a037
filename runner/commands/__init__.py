"""The `runner` command: a thin shell over the pipeline (spec -> registry -> data -> train -> outputs).

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`runner validate` over a folder of jobs stays fast enough for a pre-commit hook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors; keep that contract
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_validate(args: argparse.Namespace) -> int:
    from runner.spec import find_job_files
    from runner.spec.filechecks import Surroundings, validate_job_file

    if _missing_paths(args.paths, "runner validate"):
        return EXIT_USAGE
    files = find_job_files(args.paths)
    where = None if args.no_files else Surroundings(folders=[Path(p) for p in args.paths if Path(p).is_dir()])
    results: list[dict[str, object]] = []
    for path in files:
        job, issues = validate_job_file(path, where)
        if job is not None and not issues:
            results.append({"file": str(path), "valid": True, "name": job.name, "errors": []})
        else:
            results.append({"file": str(path), "valid": False, "errors": [i.to_dict() for i in issues]})
    if not files:
        print("no job files (*.toml) found in: " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return EXIT_USAGE
    invalid = [r for r in results if not r["valid"]]
    if args.format == "json":
        print(json.dumps({"valid": not invalid, "files": results}, indent=2))
    else:
        for result in results:
            if result["valid"]:
                if not args.quiet:
                    print(f"ok      {result['file']} (job '{result['name']}')")
            else:
                for issue in result["errors"]:
                    assert isinstance(issue, dict)
                    print(f"{issue['file']}:{issue['line']}:{issue['column']}: "
                          + (f"{issue['path']}: " if issue["path"] else "") + str(issue["message"]))
        count = len(results)
        bad_issues = sum(len(r["errors"]) for r in invalid)  # type: ignore[arg-type]
        summary = f"{count - len(invalid)} of {count} job file(s) valid"
        if invalid:
            summary += f"; {bad_issues} problem(s) in {len(invalid)} file(s)"
        print(summary, file=sys.stderr)
    return EXIT_INVALID if invalid else EXIT_OK


def _missing_paths(paths: Sequence[str], prog: str) -> bool:
    """Report paths named on the command line that do not exist (a usage error, exit 2)."""
    missing = [p for p in paths if not Path(p).exists()]
    for path in missing:
        print(f"{prog}: error: {path}: no such file or folder", file=sys.stderr)
    return bool(missing)


def _cmd_init(args: argparse.Namespace) -> int:
    from runner.scaffold import write_starter

    written = write_starter(Path(args.dir), force=args.force)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing written: the starter files already exist (use --force to overwrite)", file=sys.stderr)
    return EXIT_OK


def _load_or_report(path: str) -> object | None:
    from runner.spec import JobSpecError, load_job

    try:
        return load_job(path)
    except JobSpecError as exc:
        print(exc, file=sys.stderr)
        print(f"{path}: invalid job spec; fix the problems above (runner validate {path})", file=sys.stderr)
        return None


def _cmd_run(args: argparse.Namespace) -> int:
    from runner.outputs.runs import runs_root

    if args.run_dir:  # what an sbatch script runs: the attempt its submitter set up (runner.slurm)
        from runner.watch.child import run_supervised

        return run_supervised(Path(args.run_dir).absolute(), Path(args.job).absolute(), runs_root(args.runs_dir),
                              registry=Path(args.registry).absolute() if args.registry else None,
                              allow_remote_code=args.allow_remote_code, command=list(sys.argv))
    if _missing_paths([args.job], "runner run"):
        return EXIT_USAGE
    job = _load_or_report(args.job)
    if job is None:
        return EXIT_INVALID
    from runner.pipeline import run_job

    resume: bool | str = "auto"
    if args.resume:
        resume = True
    elif args.fresh:
        resume = False
    try:
        if args.executor == "slurm":
            from runner.slurm.foreground import run_on_slurm

            return run_on_slurm(job, runs_root(args.runs_dir), resume=resume,  # type: ignore[arg-type]
                                registry=Path(args.registry).absolute() if args.registry else None,
                                allow_remote_code=args.allow_remote_code)
        result = run_job(job, runs_root(args.runs_dir), resume=resume,  # type: ignore[arg-type]
                         registry=Path(args.registry).absolute() if args.registry else None,
                         allow_remote_code=args.allow_remote_code)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return result.exit_code


def _cmd_plan(args: argparse.Namespace) -> int:
    from runner.plan import plan_command

    return plan_command(args.job, memory=args.memory, as_json=args.json, calibrate_device=not args.no_calibrate,
                        runs_dir=args.runs_dir, registry=args.registry, allow_remote_code=args.allow_remote_code,
                        use_cache=not args.no_cache)


def _cmd_data_validate(args: argparse.Namespace) -> int:
    from runner.commands.data import check_data_command

    return check_data_command(
        files=args.files, job_path=args.job, data_format=args.format, fields=args.fields,
        tokenizer_source=args.tokenizer, max_length=args.max_length, as_json=args.json,
    )


def _cmd_generate(args: argparse.Namespace) -> int:
    from runner.outputs.runs import runs_root
    from runner.commands.results import generate

    return generate(args.job, runs_root(args.runs_dir), prompt=args.prompt, max_new_tokens=args.max_new_tokens,
                    run_id=args.run)


def _cmd_export(args: argparse.Namespace) -> int:
    from runner.outputs.runs import runs_root
    from runner.commands.results import export

    return export(args.job, runs_root(args.runs_dir), out=args.out, merge=args.merge, run_id=args.run)


def _cmd_watch(args: argparse.Namespace) -> int:
    from runner.commands.watch import watch_command

    def run() -> int:
        return watch_command(args.jobs_dir, runs_dir=args.runs_dir, state_dir=args.state_dir, poll=args.poll,
                             max_attempts=args.max_attempts, on_change=args.on_change, debounce=args.debounce,
                             settle=args.settle, registry=args.registry, allow_remote_code=args.allow_remote_code,
                             executor=args.executor, slurm_poll=args.slurm_poll)

    if args.api:  # the HTTP API and dashboard, served from the daemon's process
        from runner.commands.serve import with_api

        return with_api(args, run)
    return run()


def _cmd_status(args: argparse.Namespace) -> int:
    from runner.commands.watch import status_command

    return status_command(args.job, runs_dir=args.runs_dir, as_json=args.json)


def _cmd_cancel(args: argparse.Namespace) -> int:
    from runner.commands.watch import cancel_command

    return cancel_command(args.job, runs_dir=args.runs_dir, wait=args.wait)


def _cmd_logs(args: argparse.Namespace) -> int:
    from runner.commands.watch import logs_command

    return logs_command(args.job, runs_dir=args.runs_dir, follow=args.follow, run_id=args.run)


def _cmd_embed(args: argparse.Namespace) -> int:
    from runner.commands.embed import embed_command
    from runner.outputs.runs import runs_root

    return embed_command(args.job, runs_root(args.runs_dir), texts=args.text, images=args.image,
                         input_file=args.input, out=args.out, dim=args.dim, task=args.task, run_id=args.run)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="Declarative fine-tuning jobs: TOML specs in, adapters out.")
    parser.add_argument("--version", action="version", version=f"runner {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = sub.add_parser("validate", help="check job files against the schema and the cross-field rules")
    validate.add_argument("paths", nargs="+", help="job files or folders (searched for *.toml)")
    validate.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.add_argument("--no-files", "--offline-only", dest="no_files", action="store_true",
                          help="check the specs only: skip the checks of data files, model sources, registry "
                               "aliases and job names (for specs validated away from their data)")
    validate.set_defaults(func=_cmd_validate)

    init = sub.add_parser("init", help="write a starter jobs/ folder with a commented example")
    init.add_argument("dir", nargs="?", default=".", help="project folder (default: current)")
    init.add_argument("--force", action="store_true", help="overwrite existing starter files")
    init.set_defaults(func=_cmd_init)

    run = sub.add_parser("run", help="run one job in the foreground")
    run.add_argument("job", help="the job file")
    run.add_argument("--runs-dir", help="where runs are written (default: $RUNNER_RUNS or ./runs)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="resume the interrupted run of this spec (error if none)")
    group.add_argument("--fresh", action="store_true", help="start a new run even if an interrupted one exists")
    run.add_argument("--registry", help="the model registry file (default: $RUNNER_REGISTRY, else the nearest "
                                        "registry/registry.json above the job file or the current folder)")
    run.add_argument("--allow-remote-code", action="store_true",
                     help="let a job with model.trust_remote_code = true run the model's own Python code")
    run.add_argument("--executor", choices=["local", "slurm"], default="local",
                     help="run here (default), or submit it with sbatch to a Slurm cluster and follow it until it ends")
    run.add_argument("--run-dir", help="continue this run folder as its submitter set it up (runner watch, "
                                       "--executor slurm): what the sbatch script runs on the allocation")
    run.set_defaults(func=_cmd_run)

    plan = sub.add_parser("plan", help="estimate a job before running it: parameters, memory per method, data, "
                                       "steps, time; whether it fits (no weights loaded)")
    plan.add_argument("job", help="the job file")
    plan.add_argument("--memory", help="the memory budget per machine, e.g. 16GiB (default: what the job's device has)")
    plan.add_argument("--json", action="store_true", help="machine-readable output")
    plan.add_argument("--no-calibrate", action="store_true",
                      help="skip the short measurement on this device (rule-of-thumb activations, no time estimate)")
    plan.add_argument("--no-cache", action="store_true", help="tokenize the data again instead of using the cache")
    plan.add_argument("--runs-dir", help="where runs are (for job: sources)")
    plan.add_argument("--registry", help="the model registry file (as for `runner run`)")
    plan.add_argument("--allow-remote-code", action="store_true",
                      help="let a job with model.trust_remote_code = true load the model's own config code")
    plan.set_defaults(func=_cmd_plan)

    from runner.commands.models import add_models_parser

    add_models_parser(sub)

    data = sub.add_parser("data", help="check data files")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    dvalidate = data_sub.add_parser("validate", help="read, detect the format of and check data files; list every bad record")
    dvalidate.add_argument("files", nargs="*", help="data files (JSON, JSONL)")
    dvalidate.add_argument("--job", help="check the data of this job file (its format, fields and tokenizer)")
    dvalidate.add_argument("--format", default="auto", help="record format (default: auto-detect)")
    dvalidate.add_argument("--fields", action="append", default=[], metavar="CANONICAL=NAME",
                           help="field mapping, e.g. --fields instruction=question (repeatable)")
    dvalidate.add_argument("--tokenizer", help="a model source whose tokenizer gives token length statistics")
    dvalidate.add_argument("--max-length", type=int, default=512, help="truncation length for the statistics")
    dvalidate.add_argument("--json", action="store_true", help="machine-readable output")
    dvalidate.set_defaults(func=_cmd_data_validate)

    gen = sub.add_parser("generate", help="load a job's base model + adapter and complete a prompt")
    gen.add_argument("job", help="job name or job file")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--run", help="run id (default: the latest successful run)")
    gen.add_argument("--runs-dir")
    gen.set_defaults(func=_cmd_generate)

    exp = sub.add_parser("export", help="write a job's result as a model folder")
    exp.add_argument("job", help="job name or job file")
    exp.add_argument("--out", required=True, help="target folder")
    exp.add_argument("--merge", action="store_true", help="merge the adapter into the base weights")
    exp.add_argument("--run", help="run id (default: the latest successful run)")
    exp.add_argument("--runs-dir")
    exp.set_defaults(func=_cmd_export)

    emb = sub.add_parser("embed", help="embed texts and images with a finished embedding job")
    emb.add_argument("job", help="job name or job file")
    emb.add_argument("--text", action="append", default=[], help="a text to embed (repeatable)")
    emb.add_argument("--image", action="append", default=[], help="an image file to embed (repeatable)")
    emb.add_argument("--input", help="a file of inputs: .txt (one text per line) or .jsonl ({\"text\"} / {\"image\"})")
    emb.add_argument("--out", help="write a .npy matrix or .jsonl lines instead of printing")
    emb.add_argument("--dim", type=int, help="Matryoshka: truncate to this many dimensions (re-normalised)")
    emb.add_argument("--task", help="multi-task models: the task whose adapter embeds")
    emb.add_argument("--run", help="run id (default: the latest successful run)")
    emb.add_argument("--runs-dir")
    emb.set_defaults(func=_cmd_embed)

    watch = sub.add_parser("watch", help="run every new or changed job file of a folder, one at a time (a daemon)")
    watch.add_argument("jobs_dir", help="the jobs folder to watch")
    watch.add_argument("--runs-dir", help="where runs are written (default: $RUNNER_RUNS or ./runs)")
    watch.add_argument("--state-dir", help="the daemon's own state (default: JOBS_DIR/../.runner/watch-<name>)")
    watch.add_argument("--poll", nargs="?", type=float, const=1.0, metavar="SECONDS",
                       help="poll the folder instead of using filesystem events (network filesystems); default 1 s")
    watch.add_argument("--max-attempts", type=int, default=5,
                       help="attempts of an interrupted run before it fails (default 5)")
    watch.add_argument("--on-change", choices=["queue", "restart"], default="queue",
                       help="a running job's file changed: let it finish and queue the new version (default), "
                            "or stop it and run the new version")
    watch.add_argument("--debounce", type=float, default=0.1, help="quiet seconds after events before a rescan")
    watch.add_argument("--settle", type=float, default=0.3, help="seconds a new file must stay unchanged")
    watch.add_argument("--registry", help="the model registry file, for every job (as for `runner run`)")
    watch.add_argument("--allow-remote-code", action="store_true",
                       help="honour model.trust_remote_code in the jobs (as for `runner run`)")
    watch.add_argument("--executor", choices=["local", "slurm"], default="local",
                       help="run each job here, one at a time (default), or submit each with sbatch to a Slurm cluster")
    watch.add_argument("--slurm-poll", type=float, default=5.0, metavar="SECONDS",
                       help="with --executor slurm: seconds between two squeue calls about the submitted jobs")
    from runner.commands.serve import add_api_options, add_serve_parser

    add_api_options(watch)
    watch.set_defaults(func=_cmd_watch)
    add_serve_parser(sub)

    status = sub.add_parser("status", help="show jobs' runs: state, attempt, progress, loss, ETA, reason")
    status.add_argument("job", nargs="?", help="one job: all its runs and the latest error")
    status.add_argument("--json", action="store_true", help="machine-readable output (the status files)")
    status.add_argument("--runs-dir")
    status.set_defaults(func=_cmd_status)

    cancel = sub.add_parser("cancel", help="cancel a job's queued or running run (through its daemon)")
    cancel.add_argument("job")
    cancel.add_argument("--wait", type=float, nargs="?", const=600.0, metavar="SECONDS",
                        help="wait until the run has stopped (default up to 600 s)")
    cancel.add_argument("--runs-dir")
    cancel.set_defaults(func=_cmd_cancel)

    logs = sub.add_parser("logs", help="print a run's train.log (the job process's stdout and stderr)")
    logs.add_argument("job")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the run finishes")
    logs.add_argument("--run", help="run id (default: the newest run)")
    logs.add_argument("--runs-dir")
    logs.set_defaults(func=_cmd_logs)

    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runner")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if argv is None and args.func in (_cmd_run, _cmd_watch):  # training processes: jemalloc if present
        from runner.allocator import reexec_with_jemalloc

        reexec_with_jemalloc()  # returns only when it is off, missing or already loaded
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
