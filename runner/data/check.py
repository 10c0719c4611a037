"""Data files checked on their own, exactly as a job reads them (`runner data validate`, the HTTP
API's dataset check): read, detect the format (each file its own under "auto"), normalise every
record, and tokenise when a tokenizer is at hand, so a file that passes here does not fail at the
start of training.

The job's [data] settings that shape reading and rendering (text_unit, csv_header, images, roles,
tools, reasoning, train_on_prompt, domain tags) come in as `settings` (a `DataSection`: the job's,
or `data_settings()` for files named alone, with `--data KEY=VALUE` changes).

Each check returns a report (a JSON-ready dict): `files`, `format`, `format_reason`,
`records_read`, `records_ok`, `bad_records` (`BadRecord`s: file, line, row or index, reason); with a
tokenizer `lengths` (token length statistics), `truncated` and `tools` (how tool definitions reached
the prompt); `summary` when no record is usable (the common reasons); `warnings` (what a run would
warn about: tools the chat template cannot render, media dropped, mixed score scales). A
`DataError` means no record is readable at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runner.data.conversation import RecordOptions
from runner.data.embedding import FORMATS as EMBEDDING_FORMATS
from runner.data.formats import DomainPrefix, normalize_record, resolve_fields
from runner.data.kinds import guess_format
from runner.data.pipeline import data_warnings, detect_by_file
from runner.data.reading import ReadOptions, read_records
from runner.data.report import BadRecord, DataError, all_bad_message
from runner.spec.data_section import DataSection

__all__ = [
    "EMBEDDING_FORMATS",
    "check_causal_files",
    "check_data_files",
    "check_embedding_files",
    "check_preference_files",
    "data_settings",
    "is_preference_data",
]


def data_settings(changes: Mapping[str, str] | None = None) -> DataSection:
    """The [data] settings of a job, at their defaults with `changes` (KEY=VALUE text from a command
    line; JSON values such as true, 512 or {"assistant": ["bot"]} are parsed) applied and validated
    as a job file's would be. ValueError names the key and what it takes."""
    from pydantic import ValidationError

    values: dict[str, Any] = {}
    for key, raw in (changes or {}).items():
        if key in ("train", "eval", "format", "fields"):
            raise ValueError(f"--data {key}=...: name the files as arguments, and use --format / --fields")
        try:
            values[key] = json.loads(raw)
        except json.JSONDecodeError:
            values[key] = raw
    try:
        return DataSection.model_validate({"train": ["-"], **values})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"--data: {problems}") from None


def check_data_files(
    files: list[str], *, data_format: str = "auto", fields: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """Files of either model family, told apart by `data_format` (auto-detection: causal formats,
    preference data included)."""
    if data_format in EMBEDDING_FORMATS:
        return check_embedding_files(files, data_format, fields or {})
    if is_preference_data(files, data_format, fields):
        return check_preference_files(files, data_format, fields)
    return check_causal_files(files, data_format, fields)


def is_preference_data(files: list[str], data_format: str, fields: Mapping[str, str] | None) -> bool:
    """A preference format, or (auto) files most of whose first records are preference records."""
    from runner.data.preference import FORMATS as PREFERENCE_FORMATS
    from runner.data.preference import preference_vote

    if data_format != "auto":
        return data_format in PREFERENCE_FORMATS
    try:
        first = read_records(files[:1]).records
    except DataError:
        return False  # the causal check reports the unreadable file
    return preference_vote([r.data for r in first], fields) is not None


def check_causal_files(
    files: list[str],
    data_format: str,
    fields: Mapping[str, str] | None,
    *,
    domain: DomainPrefix | None = None,
    load_tokenizer: Callable[[], Any] | None = None,
    max_length: int = 512,
    train_on_prompt: bool = False,
    settings: DataSection | None = None,
) -> dict[str, Any]:
    """Causal-LM data (alpaca, sharegpt, messages, text, segments, prompt-completion). `load_tokenizer`
    is called once the records are read; with it, the examples are built as the run builds them
    (token statistics, the tools warning)."""
    settings = settings or data_settings()
    mapping = dict(fields) if fields else None
    read = read_records(files, ReadOptions(text_unit=settings.text_unit, csv_header=settings.csv_header))
    records = [r.data for r in read.records]
    if not records:
        raise DataError(
            "no readable records in: "
            + ", ".join(files)
            + ("\n" + "\n".join(str(b) for b in read.bad) if read.bad else "")
        )
    by_file, fmt, reason = detect_by_file(read.records, data_format, mapping)
    report: dict[str, Any] = {
        "files": files,
        "format": fmt,
        "format_reason": reason if data_format == "auto" else "given",
        "records_read": len(read.records) + len(read.bad),
    }
    roles = {str(role): list(names) for role, names in settings.roles.items()} or None
    if load_tokenizer is not None:
        from runner.data.pipeline import build_examples

        examples, data_report = build_examples(
            read.records,
            load_tokenizer(),
            max_length=max_length,
            format=data_format,
            fields=mapping,
            domain_field=domain.field if domain else None,
            domain_format=domain.format if domain else "[{value}] ",
            train_on_prompt=train_on_prompt,
            on_bad_record="skip",
            read_errors=read.bad,
            progress=None,
            tools=settings.tools,
            reasoning=settings.reasoning,
            images=settings.images,
            roles=roles,
        )
        report.update(
            records_ok=len(examples),
            bad_records=list(data_report.bad_records),
            lengths=asdict(data_report.lengths) if data_report.lengths else None,
            truncated=data_report.truncated,
            tools=dict(data_report.tools),
            warnings=list(data_report.warnings),
        )
        return report
    bad: list[BadRecord] = list(read.bad)
    resolved = {
        f: resolve_fields(f, [r.data for r in read.records if by_file[r.location.file] == f], mapping)
        for f in set(by_file.values())
    }
    options = RecordOptions.of(settings.images, roles)
    ok = media = media_records = 0
    for record in read.records:
        own = by_file[record.location.file]
        try:
            conv = normalize_record(record.data, own, resolved[own], domain, options)
        except DataError as exc:
            bad.append(BadRecord(record.location, str(exc)))
            continue
        ok += 1
        media += conv.media_dropped
        media_records += conv.media_dropped > 0
    report.update(records_ok=ok, bad_records=bad, warnings=data_warnings({}, ok, media, media_records))
    if not ok:
        forced = data_format != "auto"
        report["summary"] = all_bad_message(
            report["records_read"],
            bad,
            fmt=fmt,
            forced=forced,
            looks_like=guess_format(records, mapping) if forced else None,
        )
    return report


def check_embedding_files(
    files: list[str],
    data_format: str,
    fields: Mapping[str, str],
    *,
    image_root: Path | None = None,
    tasks: list[str] | None = None,
    settings: DataSection | None = None,
) -> dict[str, Any]:
    """Embedding data (pairs, triplets, scored pairs, image-text): fields, types, images, task labels."""
    from runner.data.embedding import prepare_embedding_data

    settings = settings or data_settings()
    data = prepare_embedding_data(
        files,
        format=data_format,
        fields=dict(fields),
        image_root=image_root,
        on_bad_record="skip",
        tasks=tasks,
        read_options=ReadOptions(text_unit=settings.text_unit, csv_header=settings.csv_header),
    )
    report = data.train_report
    return {
        "files": files,
        "format": report.format,
        "format_reason": report.format_reason,
        "records_read": report.records_read,
        "records_ok": report.records_kept,
        "bad_records": list(report.bad_records),
        "warnings": list(report.warnings),
    }


def check_preference_files(
    files: list[str],
    data_format: str,
    fields: Mapping[str, str] | None,
    *,
    load_tokenizer: Callable[[], Any] | None = None,
    max_length: int = 512,
    unpaired: bool = False,
) -> dict[str, Any]:
    """Preference data (runner.data.preference): every record normalised and, with a tokenizer,
    tokenised as the run does it, with the token lengths of the prompts and of each kind of reply."""
    from runner.data.preference import FORMATS as PREFERENCE_FORMATS
    from runner.data.preference import detect_format as detect_preference
    from runner.data.preference import normalize_preference, resolve_preference_fields
    from runner.data.preference_tokens import build_preference_examples

    mapping = dict(fields) if fields else None
    read = read_records(files)
    records = [r.data for r in read.records]
    if not records:
        raise DataError(
            "no readable records in: "
            + ", ".join(files)
            + ("\n" + "\n".join(str(b) for b in read.bad) if read.bad else "")
        )
    fmt, reason = detect_preference(records, mapping) if data_format == "auto" else (data_format, "given")
    if fmt not in PREFERENCE_FORMATS:
        raise DataError(f"format {fmt!r} is not preference data")
    report: dict[str, Any] = {
        "files": files,
        "format": fmt,
        "format_reason": reason,
        "records_read": len(read.records) + len(read.bad),
    }
    if load_tokenizer is not None:
        examples, data_report = build_preference_examples(
            read.records,
            load_tokenizer(),
            max_length=max_length,
            format=fmt,
            fields=mapping,
            unpaired=unpaired or fmt == "unpaired-preference",
            read_errors=read.bad,
        )
        report.update(
            records_ok=len(read.records) - (len(data_report.bad_records) - len(read.bad)),
            examples=len(examples),
            bad_records=list(data_report.bad_records),
            lengths=asdict(data_report.lengths) if data_report.lengths else None,
            parts=data_report.part_lengths(),
            truncated=data_report.truncated,
        )
        return report
    try:
        resolved = resolve_preference_fields(fmt, records, mapping)
    except ValueError as exc:
        raise DataError(f"fields: {exc}") from None
    bad: list[BadRecord] = list(read.bad)
    for record in read.records:
        try:
            normalize_preference(record.data, fmt, resolved)
        except DataError as exc:
            bad.append(BadRecord(record.location, str(exc)))
    report.update(records_ok=len(read.records) - (len(bad) - len(read.bad)), bad_records=bad)
    return report
