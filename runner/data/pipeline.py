"""Files -> records -> conversations -> tokenised examples, with a report and an eval split.

This is the entry point a trainer uses (`prepare_data`); the pieces it chains are
public for tests and for tools such as a `runner data check` command.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from runner.data.causal import IGNORE_INDEX, EncodeOptions, Example, encode, to_example
from runner.data.conversation import RecordOptions
from runner.data.formats import DomainPrefix, normalize_record, resolve_fields
from runner.data.kinds import detect_format, guess_format
from runner.data.reading import ReadOptions, read_records
from runner.data.records import Record
from runner.data.report import (
    BadRecord,
    DataError,
    DataReport,
    LengthStats,
    all_bad_message,
    check_policy,
    enforce_policy,
    in_file_order,
)


@dataclass
class PreparedData:
    """Tokenised train/eval examples and what happened while making them."""

    train: list[Example]
    eval: list[Example]
    train_report: DataReport
    eval_report: DataReport | None


MIXED = "mixed"  # DataReport.format when the files hold different formats


def detect_by_file(
    records: Sequence[Record], format: str, fields: Mapping[str, str] | None
) -> tuple[dict[str, str], str, str]:
    """The format of each file's records (each file detected on its own under "auto", so an alpaca
    file and a sharegpt file can train together), the overall format (MIXED when they differ) and
    the reason to report."""
    files: dict[str, list[Mapping[str, Any]]] = {}
    for record in records:
        files.setdefault(record.location.file, []).append(record.data)
    if format != "auto":
        return {file: format for file in files}, format, "set by data.format"
    found: dict[str, tuple[str, str]] = {}
    for file, data in files.items():
        try:
            found[file] = detect_format(data, fields)
        except DataError as exc:
            raise DataError(f"{file}: {exc}" if len(files) > 1 else str(exc)) from None
    kinds = {fmt for fmt, _ in found.values()}
    if len(kinds) == 1:  # one format: reported as detected over all the records, as for one file
        fmt, reason = detect_format([d for data in files.values() for d in data], fields)
        if fmt in kinds:
            return {f: fmt for f in found}, fmt, reason
        fmt = kinds.pop()
        return {f: fmt for f in found}, fmt, next(iter(found.values()))[1]
    reason = "; ".join(f"{Path(file).name}: {fmt} ({why})" for file, (fmt, why) in found.items())
    return {f: fmt for f, (fmt, _) in found.items()}, MIXED, reason


def split_eval(records: Sequence[Record], eval_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """Hold out round(n * eval_fraction) records (at least 1), chosen by a seeded shuffle.

    Both parts keep file order, so reports and debugging stay readable; the same
    records, fraction and seed always give the same split.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}")
    n = len(records)
    n_eval = max(1, round(n * eval_fraction))
    if n_eval >= n:
        raise DataError(f"eval_fraction={eval_fraction} leaves no training records out of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held_out = set(order[:n_eval])
    train = [r for i, r in enumerate(records) if i not in held_out]
    evaluation = [r for i, r in enumerate(records) if i in held_out]
    return train, evaluation


def build_examples(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    max_length: int,
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    domain_field: str | None = None,
    domain_format: str = "[{value}] ",
    train_on_prompt: bool = False,
    on_bad_record: str = "error",
    read_errors: Sequence[BadRecord] = (),
    progress: bool | None = None,
    tools: str = "render",
    reasoning: str = "train",
    images: str = "refuse",
    roles: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[Example], DataReport]:
    """Normalise and tokenise records; bad ones are collected, then the policy applies.

    `read_errors` are bad records found while reading the files, so that the "error"
    policy reports them together with the rest. `progress=None` shows a tqdm bar only
    when stderr is a terminal. `tools`, `reasoning`, `images` and `roles` are data.tools,
    data.reasoning, data.images and data.roles.
    """
    check_policy(on_bad_record)
    data = [r.data for r in records]
    if format == "auto" and not data:
        raise DataError("no readable records: every record in the data files is bad\n" + _lines(read_errors))
    by_file, fmt, reason = detect_by_file(records, format, fields)
    resolved = {
        f: resolve_fields(f, [r.data for r in records if by_file[r.location.file] == f], fields)
        for f in sorted(set(by_file.values()))
    }
    domain = DomainPrefix(domain_field, domain_format) if domain_field else None

    record_options = RecordOptions.of(images, {k: list(v) for k, v in (roles or {}).items()})
    encode_options = EncodeOptions(train_on_prompt=train_on_prompt, tools=tools, reasoning=reasoning)
    examples: list[Example] = []
    bad = list(read_errors)
    lengths: list[int] = []
    truncated = trainable = media_dropped = media_records = 0
    tool_handling: dict[str, int] = {}
    show = sys.stderr.isatty() if progress is None else progress
    for record in tqdm(records, desc="tokenizing", unit="rec", disable=not show):
        try:
            own = by_file[record.location.file]
            conv = normalize_record(record.data, own, resolved[own], domain, record_options)
            encoded = encode(tokenizer, conv, encode_options)
            example, was_truncated = to_example(encoded, max_length)
        except DataError as e:
            bad.append(BadRecord(record.location, str(e)))
            continue
        if encoded.tools is not None:
            tool_handling[encoded.tools] = tool_handling.get(encoded.tools, 0) + 1
        media_dropped += conv.media_dropped
        media_records += conv.media_dropped > 0
        examples.append(example)
        lengths.append(len(example["input_ids"]))
        truncated += was_truncated
        trainable += sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)

    report = DataReport(
        format=fmt,
        format_reason=reason,
        records_read=len(records) + len(read_errors),
        records_kept=len(examples),
        bad_records=in_file_order(bad, [r.location.file for r in records] + [b.location.file for b in read_errors]),
        lengths=LengthStats.from_lengths(lengths),
        truncated=truncated,
        trainable_tokens=trainable,
        max_length=max_length,
        tools=tool_handling,
        media_dropped=media_dropped,
        warnings=data_warnings(tool_handling, len(examples), media_dropped, media_records),
    )
    summary = None
    if not examples:
        looks_like = guess_format(data, fields) if format != "auto" else None
        summary = all_bad_message(
            report.records_read, report.bad_records, fmt=fmt, forced=format != "auto", looks_like=looks_like
        )
    enforce_policy(report.bad_records, on_bad_record, summary)
    if summary is not None:
        raise DataError(f"no usable examples: {summary}")
    return examples, report


def prepare_data(
    train_files: Sequence[str | Path],
    tokenizer: Any,
    *,
    max_length: int,
    eval_files: Sequence[str | Path] = (),
    eval_fraction: float = 0.0,
    seed: int = 0,
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    domain_field: str | None = None,
    domain_format: str = "[{value}] ",
    train_on_prompt: bool = False,
    on_bad_record: str = "error",
    progress: bool | None = None,
    max_records: int | None = None,
    eval_max_records: int | None = None,
    tools: str = "render",
    reasoning: str = "train",
    images: str = "refuse",
    roles: Mapping[str, Sequence[str]] | None = None,
    text_unit: str = "paragraph",
    csv_header: str = "auto",
) -> PreparedData:
    """Read, split, normalise and tokenise; under "error" all bad records (train and eval) raise together.

    Eval comes from `eval_files` if given, else from `eval_fraction` of the train
    records (format detected once on the train records), else there is none. `max_records` and
    `eval_max_records` keep the first N of each side (quick trials).
    """
    check_policy(on_bad_record)
    if eval_files and eval_fraction:
        raise ValueError("give either eval_files or eval_fraction, not both")
    options: dict[str, Any] = dict(
        tokenizer=tokenizer,
        max_length=max_length,
        fields=fields,
        domain_field=domain_field,
        domain_format=domain_format,
        train_on_prompt=train_on_prompt,
        on_bad_record="skip",
        progress=progress,
        tools=tools,
        reasoning=reasoning,
        images=images,
        roles=roles,
    )
    read_options = ReadOptions(text_unit=text_unit, csv_header=csv_header)
    read = read_records(train_files, read_options)
    train_records, eval_records = read.records, list[Record]()
    if eval_fraction:
        train_records, eval_records = split_eval(read.records, eval_fraction, seed)
    train_records = train_records[:max_records] if max_records else train_records
    eval_records = eval_records[:eval_max_records] if eval_max_records else eval_records
    train, train_report = build_examples(train_records, format=format, read_errors=read.bad, **options)

    evaluation: list[Example] = []
    eval_report = None
    if eval_files:
        read_eval = read_records(eval_files, read_options)
        kept = read_eval.records[:eval_max_records] if eval_max_records else read_eval.records
        evaluation, eval_report = build_examples(kept, format=format, read_errors=read_eval.bad, **options)
    elif eval_records:
        same = train_report.format if train_report.format != MIXED else "auto"  # mixed: per file again
        evaluation, eval_report = build_examples(eval_records, format=same, **options)
        eval_report.format_reason = "same as the train records"

    all_bad = train_report.bad_records + (eval_report.bad_records if eval_report else [])
    enforce_policy(in_file_order(all_bad, [str(f) for f in [*train_files, *eval_files]]), on_bad_record)
    return PreparedData(train, evaluation, train_report, eval_report)


def data_warnings(tool_handling: Mapping[str, int], kept: int, media_dropped: int, media_records: int) -> list[str]:
    """What the user must know about how the records reached the model: tool definitions the chat
    template could not render (put in the system prompt, or dropped), media dropped."""
    out = []
    rendered, dropped = tool_handling.get("system-prompt", 0), tool_handling.get("dropped", 0)
    if rendered:
        out.append(
            f"{rendered} of {kept} records define tools that the chat template does not render: their "
            "definitions were put in the system prompt (a Hermes/Qwen-style <tools> block) and their tool "
            'calls written as <tool_call> blocks (data.tools = "render")'
        )
    if dropped:
        out.append(
            f"{dropped} of {kept} records define tools that the chat template does not render: the "
            'definitions were dropped, the model will not see them (data.tools = "drop"; "render" puts '
            "them in the system prompt)"
        )
    if media_dropped:
        out.append(
            f"{media_dropped} images (or other media) were dropped from {media_records} records: the model "
            'trains on their text only (data.images = "drop")'
        )
    return out


def _lines(bad: Sequence[BadRecord]) -> str:
    return "\n".join(str(b) for b in bad)
