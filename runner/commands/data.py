"""`runner data validate`: the training pipeline's own data checks (runner.data.check), run on their own."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.commands.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Parser, Subparsers, error

if TYPE_CHECKING:
    from runner.spec import LoadedJob


def add_data(sub: Subparsers) -> None:
    data = sub.add_parser("data", help="check data files")
    data_sub = data.add_subparsers(dest="data_command", required=True, parser_class=Parser)
    dvalidate = data_sub.add_parser(
        "validate", help="read, detect the format of and check data files; list every bad record"
    )
    dvalidate.add_argument(
        "files", nargs="*", help="data files (JSON, JSONL, .txt, CSV, TSV, Parquet) or hf:ORG/NAME data sets"
    )
    dvalidate.add_argument("--job", help="check the data of this job file (its format, fields and tokenizer)")
    dvalidate.add_argument("--format", default="auto", help="record format (default: auto-detect)")
    dvalidate.add_argument(
        "--fields",
        action="append",
        default=[],
        metavar="CANONICAL=NAME",
        help="field mapping, e.g. --fields instruction=question (repeatable)",
    )
    dvalidate.add_argument(
        "--data",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [data] setting of a job, e.g. --data images=drop --data text_unit=line (repeatable)",
    )
    dvalidate.add_argument("--tokenizer", help="a model source whose tokenizer gives token length statistics")
    dvalidate.add_argument("--max-length", type=int, default=512, help="truncation length for the statistics")
    dvalidate.add_argument("--json", action="store_true", help="machine-readable output")
    dvalidate.set_defaults(func=data_validate_command)


def data_validate_command(args: argparse.Namespace) -> int:
    """0: every record usable; 1: a bad record, unreadable data or an invalid job; 2: a usage error."""
    from runner.data.report import DataError
    from runner.registry.sources import SourceError

    if args.job:
        job = _load_job(args.job)
        if job is None:
            return EXIT_FAILED
        check, max_length = _job_check(job, args), job.spec.data.max_length
    else:
        from runner.data.check import data_settings

        try:
            fields = parse_fields(args.fields)
            settings = data_settings(parse_fields(args.data, flag="--data", example="images=drop"))
        except ValueError as exc:
            return error(str(exc), EXIT_USAGE)
        if _usage_problems(args, fields):
            return EXIT_USAGE
        check, max_length = _files_check(args, fields, settings), args.max_length
    if check is None:
        return error("name data files, or a job with --job", EXIT_USAGE)
    from runner.data.conversation import FieldsError

    try:
        report = check()
    except FieldsError as exc:  # --fields (or --format) that do not fit the data: a usage error
        if args.job:
            return error(str(exc))
        print(f"runner data validate: error: --fields: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (DataError, SourceError) as exc:
        return error(str(exc))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print_report(report, max_length)
    return EXIT_FAILED if report["bad_records"] else EXIT_OK


def parse_fields(pairs: list[str], *, flag: str = "--fields", example: str = "instruction=question") -> dict[str, str]:
    """`--fields instruction=question` (repeatable) -> {"instruction": "question"}; also `--data KEY=VALUE`."""
    mapping: dict[str, str] = {}
    for pair in pairs:
        canonical, sep, name = pair.partition("=")
        if not sep or not canonical or not name:
            what = "CANONICAL=NAME" if flag == "--fields" else "KEY=VALUE"
            raise ValueError(f"{flag} {pair!r}: expected {what}, e.g. {example}")
        mapping[canonical.strip()] = name.strip()
    return mapping


def _usage_problems(args: argparse.Namespace, fields: dict[str, str]) -> bool:
    """Print what is wrong with --format, --fields and the files named (a usage error, exit 2)."""
    from runner.data.kinds import usage_problems

    problems = usage_problems(args.format, fields) + [
        f"{f}: no such file or folder" for f in args.files if not f.startswith("hf:") and not Path(f).exists()
    ]
    for problem in problems:
        print(f"runner data validate: error: {problem}", file=sys.stderr)
    return bool(problems)


def _load_job(path: str) -> LoadedJob | None:
    from runner.spec import JobSpecError, load_job

    try:
        return load_job(path)
    except JobSpecError as exc:
        print(exc, file=sys.stderr)
        return None


Check = Callable[[], dict[str, Any]] | None  # the check to run (runner.data.check); None: no files to check


def _job_check(job: LoadedJob, args: argparse.Namespace) -> Check:
    """The job's data files (train and eval, then any named) with its format, fields and tokenizer."""
    from functools import partial

    from runner.data.check import check_causal_files, check_embedding_files, check_preference_files
    from runner.data.formats import DomainPrefix
    from runner.spec.model import PREFERENCE_LOSSES

    data = job.spec.data
    files = [job.resolve_data(p) for p in [*data.train, *data.eval]] + list(args.files)
    if not files:
        return None
    fields: dict[str, str] = {key: name for key, name in data.fields.items()}
    if job.spec.model.kind != "causal-lm":
        return partial(
            check_embedding_files,
            files,
            data.format,
            fields,
            image_root=job.resolve_path(data.image_root) if data.image_root else None,
            tasks=list(job.spec.loss.tasks) if job.spec.loss_type == "multi-task" else None,
            settings=data,
        )
    source = args.tokenizer or job.spec.model.source
    if job.spec.loss_type in PREFERENCE_LOSSES:
        return partial(
            check_preference_files,
            files,
            data.format,
            fields or None,
            load_tokenizer=partial(_tokenizer, source, job.path.parent),
            max_length=data.max_length,
            unpaired=job.spec.loss_type == "kto",
        )
    return partial(
        check_causal_files,
        files,
        data.format,
        fields or None,
        domain=DomainPrefix(data.domain_field, data.domain_format) if data.domain_field else None,
        load_tokenizer=partial(_tokenizer, source, job.path.parent),
        max_length=data.max_length,
        train_on_prompt=data.train_on_prompt,
        settings=data,
    )


def _files_check(args: argparse.Namespace, fields: dict[str, str], settings: Any) -> Check:
    """Files named on the command line, in the format given (or detected); causal unless an embedding format."""
    from functools import partial

    from runner.data.check import (
        EMBEDDING_FORMATS,
        check_causal_files,
        check_embedding_files,
        check_preference_files,
        is_preference_data,
    )
    from runner.data.formats import DomainPrefix

    if not args.files:
        return None
    if args.format in EMBEDDING_FORMATS:
        return partial(check_embedding_files, list(args.files), args.format, fields, settings=settings)
    load = partial(_tokenizer, args.tokenizer, None) if args.tokenizer else None
    domain = DomainPrefix(settings.domain_field, settings.domain_format) if settings.domain_field else None
    if is_preference_data(list(args.files), args.format, fields or None):
        return partial(
            check_preference_files,
            list(args.files),
            args.format,
            fields or None,
            load_tokenizer=load,
            max_length=args.max_length,
        )
    return partial(
        check_causal_files,
        list(args.files),
        args.format,
        fields or None,
        load_tokenizer=load,
        max_length=args.max_length,
        train_on_prompt=settings.train_on_prompt,
        domain=domain,
        settings=settings,
    )


def _tokenizer(source: str, base_dir: Path | None) -> Any:
    """The tokenizer of a model source (resolved like a job's model: registry:, job:, hf:, ...)."""
    import runner.lineage  # noqa: F401  (registers the resolver for job: sources)
    from runner.registry.sources import parse_source, resolve_source
    from runner.train.common import load_tokenizer

    return load_tokenizer(Path(resolve_source(parse_source(source, base_dir=base_dir)).path))


def _print_report(report: dict[str, Any], max_length: int) -> None:
    print(f"format: {report['format']} ({report['format_reason']})")
    print(f"records: {report['records_read']} read, {report['records_ok']} usable, {len(report['bad_records'])} bad")
    if report.get("lengths"):
        lengths = report["lengths"]
        print(
            "tokens per example: "
            + ", ".join(f"{k} {round(v, 1)}" for k, v in lengths.items())
            + f"; {report['truncated']} truncated at max_length={max_length}"
        )
    for part, lengths in (report.get("parts") or {}).items():  # preference data: prompts, chosen, rejected
        print(f"{part} tokens: " + ", ".join(f"{k} {round(v, 1)}" for k, v in lengths.items()))
    for bad in report["bad_records"]:
        print(f"  {bad}")
    if report.get("summary"):
        print(report["summary"])
    for warning in report.get("warnings", []):
        print(f"warning: {warning}")
