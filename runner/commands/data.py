"""`runner data validate`: the training pipeline's own data checks, run on their own.

It reads, detects and normalises exactly as a job would (and tokenises when a tokenizer is at
hand), so a file that passes here does not fail at the start of training.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runner.data.formats import (
    DomainPrefix,
    detect_format,
    guess_format,
    normalize_record,
    resolve_fields,
    usage_problems,
)
from runner.data.records import read_records
from runner.data.report import BadRecord, DataError, all_bad_message


def _parse_fields(pairs: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for pair in pairs:
        canonical, sep, name = pair.partition("=")
        if not sep or not canonical or not name:
            raise ValueError(f"--fields {pair!r}: expected CANONICAL=NAME, e.g. instruction=question")
        mapping[canonical.strip()] = name.strip()
    return mapping


def check_data_command(
    *, files: list[str], job_path: str | None, data_format: str, fields: list[str],
    tokenizer_source: str | None, max_length: int, as_json: bool,
) -> int:
    domain: DomainPrefix | None = None
    train_on_prompt = False
    embedding: dict[str, Any] | None = None  # an embedding job's data settings (checked by its own code)
    if job_path:
        from runner.spec import JobSpecError, load_job

        try:
            job = load_job(job_path)
        except JobSpecError as exc:
            print(exc, file=sys.stderr)
            return 1
        data = job.spec.data
        files = [str(job.resolve_path(p)) for p in [*data.train, *data.eval]] + list(files)
        data_format, columns, max_length = data.format, dict(data.fields), data.max_length
        domain = DomainPrefix(data.domain_field, data.domain_format) if data.domain_field else None
        train_on_prompt = data.train_on_prompt
        tokenizer_source = tokenizer_source or job.spec.model.source
        if job.spec.model.kind != "causal-lm":
            embedding = {"image_root": job.resolve_path(data.image_root) if data.image_root else None,
                         "tasks": list(job.spec.loss.tasks) if job.spec.loss_type == "multi-task" else None}
    else:
        try:
            columns = _parse_fields(fields)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        problems = usage_problems(data_format, columns) + [f"{f}: no such file or folder" for f in files
                                                          if not Path(f).exists()]
        for problem in problems:
            print(f"runner data validate: error: {problem}", file=sys.stderr)
        if problems:
            return 2
    if not files:
        print("error: name data files, or a job with --job", file=sys.stderr)
        return 2

    from runner.data.embedding import FORMATS as EMBEDDING_FORMATS

    if embedding is None and data_format in EMBEDDING_FORMATS:
        embedding = {"image_root": None, "tasks": None}
    try:
        if embedding is not None:
            report = _check_embedding(files, data_format, columns, **embedding)
        else:
            report = _check(files, data_format, columns or None, domain, tokenizer_source, max_length,
                            train_on_prompt, base_dir=Path(job_path).parent if job_path else None)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print(f"format: {report['format']} ({report['format_reason']})")
        print(f"records: {report['records_read']} read, {report['records_ok']} usable, {len(report['bad_records'])} bad")
        if report.get("lengths"):
            lengths = report["lengths"]
            print("tokens per example: " + ", ".join(f"{k} {round(v, 1)}" for k, v in lengths.items())
                  + f"; {report['truncated']} truncated at max_length={max_length}")
        for bad in report["bad_records"]:
            print(f"  {bad}")
        if report.get("summary"):
            print(report["summary"])
        for warning in report.get("warnings", []):
            print(f"warning: {warning}")
    return 1 if report["bad_records"] else 0


def check_data_files(files: list[str], *, data_format: str = "auto",
                     fields: dict[str, str] | None = None) -> dict[str, Any]:
    """`runner data validate FILE...` as data, for callers that are not a terminal (the HTTP API).

    The same reading, format detection and per-record checks; `bad_records` holds `BadRecord`s
    (file, line or index, reason). Raises `DataError` when no record is readable at all.
    """
    from runner.data.embedding import FORMATS as EMBEDDING_FORMATS

    if data_format in EMBEDDING_FORMATS:
        return _check_embedding(files, data_format, dict(fields or {}), image_root=None, tasks=None)
    return _check(files, data_format, dict(fields) if fields else None, None, None, 512, False)


def _check(
    files: list[str], data_format: str, columns: dict[str, str] | None, domain: DomainPrefix | None,
    tokenizer_source: str | None, max_length: int, train_on_prompt: bool, base_dir: Path | None = None,
) -> dict[str, Any]:
    read = read_records(files)
    records = [r.data for r in read.records]
    if not records:
        raise DataError("no readable records in: " + ", ".join(files)
                        + ("\n" + "\n".join(str(b) for b in read.bad) if read.bad else ""))
    if data_format == "auto":
        fmt, reason = detect_format(records, columns)
    else:
        fmt, reason = data_format, "given"
    report: dict[str, Any] = {"files": files, "format": fmt, "format_reason": reason,
                              "records_read": len(read.records) + len(read.bad)}
    if tokenizer_source:
        import runner.lineage  # noqa: F401  (registers the resolver for job: sources)
        from runner.data.pipeline import build_examples
        from runner.registry.sources import parse_source, resolve_source
        from runner.train.causal_lm import load_tokenizer

        tokenizer = load_tokenizer(Path(resolve_source(parse_source(tokenizer_source, base_dir=base_dir)).path))
        examples, data_report = build_examples(
            read.records, tokenizer, max_length=max_length, format=fmt, fields=columns,
            domain_field=domain.field if domain else None,
            domain_format=domain.format if domain else "[{value}] ",
            train_on_prompt=train_on_prompt, on_bad_record="skip", read_errors=read.bad, progress=None,
        )
        report.update(records_ok=len(examples), bad_records=list(data_report.bad_records),
                      lengths=asdict(data_report.lengths) if data_report.lengths else None,
                      truncated=data_report.truncated)
        return report
    bad: list[BadRecord] = list(read.bad)
    resolved = resolve_fields(fmt, records, columns)
    ok = 0
    for record in read.records:
        try:
            normalize_record(record.data, fmt, resolved, domain)
            ok += 1
        except DataError as exc:
            bad.append(BadRecord(record.location, str(exc)))
    report.update(records_ok=ok, bad_records=bad)
    if not ok:
        report["summary"] = all_bad_message(report["records_read"], bad, fmt=fmt, forced=data_format != "auto",
                                            looks_like=guess_format(records, columns) if data_format != "auto" else None)
    return report


def _check_embedding(files: list[str], data_format: str, columns: dict[str, str], image_root: Path | None,
                     tasks: list[str] | None) -> dict[str, Any]:
    """Embedding data (pairs, triplets, scored pairs, image-text): fields, types, images, task labels."""
    from runner.data.embedding import prepare_embedding_data

    data = prepare_embedding_data(files, format=data_format, fields=columns, image_root=image_root,
                                  on_bad_record="skip", tasks=tasks)
    report = data.train_report
    return {"files": files, "format": report.format, "format_reason": report.format_reason,
            "records_read": report.records_read, "records_ok": report.records_kept,
            "bad_records": list(report.bad_records), "warnings": list(report.warnings)}
