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

from runner.data.causal import IGNORE_INDEX, Example, chat_template_for, encode_conversation, to_example
from runner.data.formats import DomainPrefix, detect_format, guess_format, normalize_record, resolve_fields
from runner.data.records import Record, read_records
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
) -> tuple[list[Example], DataReport]:
    """Normalise and tokenise records; bad ones are collected, then the policy applies.

    `read_errors` are bad records found while reading the files, so that the "error"
    policy reports them together with the rest. `progress=None` shows a tqdm bar only
    when stderr is a terminal.
    """
    check_policy(on_bad_record)
    data = [r.data for r in records]
    if format == "auto":
        if not data:
            raise DataError("no readable records: every record in the data files is bad\n" + _lines(read_errors))
        fmt, reason = detect_format(data, fields)
    else:
        fmt, reason = format, "set by data.format"
    resolved = resolve_fields(fmt, data, fields)
    domain = DomainPrefix(domain_field, domain_format) if domain_field else None

    examples: list[Example] = []
    bad = list(read_errors)
    lengths: list[int] = []
    truncated = trainable = tools_unused = 0
    show = sys.stderr.isatty() if progress is None else progress
    for record in tqdm(records, desc="tokenizing", unit="rec", disable=not show):
        try:
            conv = normalize_record(record.data, fmt, resolved, domain)
            encoded = encode_conversation(
                tokenizer, conv.messages, train_on_prompt=train_on_prompt, tools=conv.tools
            )
            example, was_truncated = to_example(encoded, max_length)
        except DataError as e:
            bad.append(BadRecord(record.location, str(e)))
            continue
        if conv.tools and "tools" not in chat_template_for(tokenizer, conv.tools):
            tools_unused += 1
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
    )
    if tools_unused:
        report.warnings.append(
            f"{tools_unused} records define tools, but the chat template does not render `tools`: "
            "the model will not see the tool schemas (use a tool-aware template, or put them in the system prompt)"
        )
    summary = None
    if not examples:
        looks_like = guess_format(data, fields) if format != "auto" else None
        summary = all_bad_message(report.records_read, report.bad_records, fmt=fmt, forced=format != "auto",
                                  looks_like=looks_like)
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
    )
    read = read_records(train_files)
    train_records, eval_records = read.records, []
    if eval_fraction:
        train_records, eval_records = split_eval(read.records, eval_fraction, seed)
    train_records = train_records[:max_records] if max_records else train_records
    eval_records = eval_records[:eval_max_records] if eval_max_records else eval_records
    train, train_report = build_examples(train_records, format=format, read_errors=read.bad, **options)

    evaluation: list[Example] = []
    eval_report = None
    if eval_files:
        read_eval = read_records(eval_files)
        kept = read_eval.records[:eval_max_records] if eval_max_records else read_eval.records
        evaluation, eval_report = build_examples(
            kept, format=format, read_errors=read_eval.bad, **options
        )
    elif eval_records:
        evaluation, eval_report = build_examples(eval_records, format=train_report.format, **options)
        eval_report.format_reason = "same as the train records"

    all_bad = train_report.bad_records + (eval_report.bad_records if eval_report else [])
    enforce_policy(in_file_order(all_bad, [str(f) for f in [*train_files, *eval_files]]), on_bad_record)
    return PreparedData(train, evaluation, train_report, eval_report)


def _lines(bad: Sequence[BadRecord]) -> str:
    return "\n".join(str(b) for b in bad)
