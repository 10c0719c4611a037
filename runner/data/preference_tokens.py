"""Tokenise preference records: a prompt's tokens once, and each reply's tokens after it.

The prompt is rendered with the chat template and a generation prompt (``<|im_start|>assistant``),
each reply is what the template renders after that, up to and including its end-of-turn token, and
the two are tokenised separately (as TRL does). That keeps the prompt tokens identical for the
chosen and the rejected reply, which is what lets training compute the prompt once for both
(runner.train.shared_prompt). Plain-text records (TRL's string format) use no template: the
prompt with the tokenizer's special tokens, each reply followed by the end-of-sequence token.

A prompt that leaves no room for a reply in ``max_length`` is a bad record; a reply that does not
fit is cut at ``max_length`` (counted as truncated), and a pair whose replies become identical by
that cut is a bad record too. Examples are plain dicts of token-id lists:
``{"prompt", "chosen", "rejected"}`` for pairs, ``{"prompt", "completion", "label",
"kl_completion"}`` for KTO, where ``kl_completion`` is the completion of another record (a fixed,
seeded pairing) that KTO's reference point is estimated on.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import jinja2
from tqdm.auto import tqdm

from runner.data.causal import TemplateError, chat_template_for
from runner.data.formats import RecordError
from runner.data.pipeline import split_eval
from runner.data.preference import (
    PreferencePair,
    UnpairedCompletion,
    detect_format,
    normalize_preference,
    resolve_preference_fields,
    unpair,
)
from runner.data.reading import read_records
from runner.data.records import Record
from runner.data.report import (
    BadRecord,
    DataError,
    DataReport,
    LengthStats,
    check_policy,
    enforce_policy,
    in_file_order,
)

PreferenceExample = dict[str, Any]


@dataclass
class PreferenceReport(DataReport):
    """A DataReport with the token lengths of each part: `lengths` is the whole pair (prompt once,
    both replies); for unpaired data `chosen_lengths` are the desirable completions and
    `rejected_lengths` the undesirable ones."""

    prompt_lengths: LengthStats | None = None
    chosen_lengths: LengthStats | None = None
    rejected_lengths: LengthStats | None = None

    def summary(self) -> str:
        lines = super().summary().split("\n")
        for name in ("rejected", "chosen", "prompt"):  # inserted in front of one another
            stats = getattr(self, f"{name}_lengths")
            if stats is not None:
                lines.insert(
                    2,
                    f"{name} tokens: min {stats.min}, mean {stats.mean:.1f}, p50 {stats.p50}, "
                    f"p95 {stats.p95}, max {stats.max}",
                )
        return "\n".join(lines)

    def part_lengths(self) -> dict[str, dict[str, Any]]:
        """{part: length statistics} for the parts that have any (for reports and the CLI)."""
        return {
            name: asdict(stats)
            for name in ("prompt", "chosen", "rejected")
            if (stats := getattr(self, f"{name}_lengths")) is not None
        }


@dataclass
class PreparedPreference:
    train: list[PreferenceExample]
    eval: list[PreferenceExample]
    train_report: PreferenceReport
    eval_report: PreferenceReport | None


# ---------------------------------------------------------------------------------------------
# one record


def _render(tokenizer: Any, messages: list[dict[str, Any]], template: str, tools: Any, gen: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=gen
    )


def encode_prompt_and_replies(
    tokenizer: Any,
    prompt: list[dict[str, Any]],
    replies: Sequence[list[dict[str, Any]]],
    tools: Sequence[dict[str, Any]] | None = None,
) -> tuple[list[int], list[list[int]]]:
    """(prompt token ids, [token ids of each reply]) as the model sees them one after the other."""
    if prompt[0]["role"] == "text":
        prompt_ids = list(tokenizer(prompt[0]["content"], add_special_tokens=True)["input_ids"])
        eos = tokenizer.eos_token_id
        out = []
        for reply in replies:
            ids = list(tokenizer(reply[0]["content"], add_special_tokens=False)["input_ids"])
            out.append(ids + ([eos] if eos is not None and (not ids or ids[-1] != eos) else []))
        return prompt_ids, out
    tools = list(tools) if tools else None
    template = chat_template_for(tokenizer, tools)
    try:
        prompt_text = _render(tokenizer, prompt, template, tools, True)
        fulls = [_render(tokenizer, [*prompt, *reply], template, tools, False) for reply in replies]
    except jinja2.TemplateError as e:
        raise RecordError(f"the chat template rejected this conversation: {e}") from None
    reply_texts = []
    for full in fulls:
        if not full.startswith(prompt_text):
            raise TemplateError(
                "the chat template is not prefix-stable: the prompt rendered with a generation prompt "
                "is not the start of the prompt rendered with its reply, so the reply cannot be cut "
                "out; use a template without such differences"
            )
        reply_texts.append(full[len(prompt_text) :].rstrip())  # up to its end-of-turn token, as SFT trains it
    prompt_ids = list(tokenizer(prompt_text, add_special_tokens=False)["input_ids"])
    return prompt_ids, [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in reply_texts]


def _fit(
    prompt: list[int], replies: list[list[int]], max_length: int, names: Sequence[str]
) -> tuple[list[list[int]], bool]:
    """Each reply cut to the room the prompt leaves in max_length; a RecordError when there is none."""
    if not prompt:
        raise RecordError("the prompt has no tokens")
    room = max_length - len(prompt)
    if room < 1:
        raise RecordError(
            f"the prompt has {len(prompt)} tokens, which leaves no room for a reply in "
            f"max_length={max_length}; raise data.max_length or shorten the prompt"
        )
    for name, reply in zip(names, replies, strict=True):
        if not reply:
            raise RecordError(f"the {name} reply has no tokens")
    cut = [reply[:room] for reply in replies]
    return cut, any(len(r) > room for r in replies)


def to_preference_example(record: PreferencePair, tokenizer: Any, max_length: int) -> tuple[PreferenceExample, bool]:
    prompt, (chosen, rejected) = encode_prompt_and_replies(
        tokenizer, record.prompt, [record.chosen, record.rejected], record.tools
    )
    (chosen, rejected), truncated = _fit(prompt, [chosen, rejected], max_length, ("chosen", "rejected"))
    if chosen == rejected:
        raise RecordError(
            f"the chosen and rejected replies are identical in their first {len(chosen)} tokens, all "
            f"that fits in max_length={max_length}: raise data.max_length"
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, truncated


def to_unpaired_example(record: UnpairedCompletion, tokenizer: Any, max_length: int) -> tuple[PreferenceExample, bool]:
    prompt, (completion,) = encode_prompt_and_replies(tokenizer, record.prompt, [record.completion], record.tools)
    (completion,), truncated = _fit(prompt, [completion], max_length, ("completion",))
    return {"prompt": prompt, "completion": completion, "label": int(record.desirable)}, truncated


def add_kl_completions(examples: list[PreferenceExample], seed: int, max_length: int) -> None:
    """Give each unpaired example the completion of another one (KTO's mismatched pairs for its KL
    reference point): a seeded shuffle, each example paired with the next in it, so the pairing is
    fixed for the run (and its reference log-probabilities can be cached)."""
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    for i, index in enumerate(order):
        other = examples[order[(i + 1) % len(order)]]
        room = max_length - len(examples[index]["prompt"])
        examples[index]["kl_completion"] = other["completion"][:room]


# ---------------------------------------------------------------------------------------------
# many records


def build_preference_examples(
    records: Sequence[Record],
    tokenizer: Any,
    *,
    max_length: int,
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    unpaired: bool = False,
    seed: int = 0,
    read_errors: Sequence[BadRecord] = (),
    progress: bool | None = None,
) -> tuple[list[PreferenceExample], PreferenceReport]:
    """Normalise and tokenise records (bad ones are collected in the report; no policy applied).
    `unpaired`: KTO examples (pairs become a desirable and an undesirable completion)."""
    data = [r.data for r in records]
    if format == "auto":
        if not data:
            raise DataError(
                "no readable records: every record in the data files is bad\n" + "\n".join(str(b) for b in read_errors)
            )
        fmt, reason = detect_format(data, fields)
    else:
        fmt, reason = format, "set by data.format"
    if fmt == "unpaired-preference" and not unpaired:
        raise DataError(
            "the records are unpaired (a completion with a label, no chosen/rejected pair): only "
            'loss.type = "kto" trains on them'
        )
    try:
        resolved = resolve_preference_fields(fmt, data, fields)
    except ValueError as exc:
        raise DataError(f"data.fields: {exc}") from None
    examples: list[PreferenceExample] = []
    bad = list(read_errors)
    parts: dict[str, list[int]] = {"prompt": [], "chosen": [], "rejected": [], "whole": []}
    truncated = 0
    show = sys.stderr.isatty() if progress is None else progress
    for record in tqdm(records, desc="tokenizing", unit="rec", disable=not show):
        try:
            normal = normalize_preference(record.data, fmt, resolved)
            made = _encode(normal, tokenizer, max_length, unpaired)
        except DataError as e:
            bad.append(BadRecord(record.location, str(e)))
            continue
        for example, was_truncated in made:
            examples.append(example)
            truncated += was_truncated
            _count(parts, example)
    if unpaired and examples:
        add_kl_completions(examples, seed, max_length)
    report = PreferenceReport(
        format=fmt,
        format_reason=reason,
        records_read=len(records) + len(read_errors),
        records_kept=len(examples),
        bad_records=in_file_order(bad, [r.location.file for r in records] + [b.location.file for b in read_errors]),
        lengths=LengthStats.from_lengths(parts["whole"]),
        truncated=truncated,
        trainable_tokens=sum(parts["chosen"]) + sum(parts["rejected"]),
        max_length=max_length,
        prompt_lengths=LengthStats.from_lengths(parts["prompt"]),
        chosen_lengths=LengthStats.from_lengths(parts["chosen"]),
        rejected_lengths=LengthStats.from_lengths(parts["rejected"]),
    )
    return examples, report


def _encode(
    normal: PreferencePair | UnpairedCompletion, tokenizer: Any, max_length: int, unpaired: bool
) -> list[tuple[PreferenceExample, bool]]:
    if isinstance(normal, UnpairedCompletion):
        return [to_unpaired_example(normal, tokenizer, max_length)]
    if unpaired:
        return [to_unpaired_example(one, tokenizer, max_length) for one in unpair(normal)]
    return [to_preference_example(normal, tokenizer, max_length)]


def _count(parts: dict[str, list[int]], example: PreferenceExample) -> None:
    parts["prompt"].append(len(example["prompt"]))
    if "completion" in example:
        parts["chosen" if example["label"] else "rejected"].append(len(example["completion"]))
        parts["whole"].append(len(example["prompt"]) + len(example["completion"]))
    else:
        parts["chosen"].append(len(example["chosen"]))
        parts["rejected"].append(len(example["rejected"]))
        parts["whole"].append(len(example["prompt"]) + len(example["chosen"]) + len(example["rejected"]))


def prepare_preference_data(
    train_files: Sequence[str | Path],
    tokenizer: Any,
    *,
    max_length: int,
    eval_files: Sequence[str | Path] = (),
    eval_fraction: float = 0.0,
    seed: int = 0,
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    on_bad_record: str = "error",
    unpaired: bool = False,
    max_records: int | None = None,
    eval_max_records: int | None = None,
    progress: bool | None = None,
) -> PreparedPreference:
    """Read, split, normalise and tokenise preference data; under "error" every bad record of the
    train and eval files is reported at once, before any weights load."""
    check_policy(on_bad_record)
    if eval_files and eval_fraction:
        raise ValueError("give either eval_files or eval_fraction, not both")
    options: dict[str, Any] = dict(
        max_length=max_length, fields=fields, unpaired=unpaired, seed=seed, progress=progress
    )
    read = read_records(train_files)
    train_records, eval_records = read.records, list[Record]()
    if eval_fraction:
        train_records, eval_records = split_eval(read.records, eval_fraction, seed)
    train_records = train_records[:max_records] if max_records else train_records
    eval_records = eval_records[:eval_max_records] if eval_max_records else eval_records
    train, train_report = build_preference_examples(
        train_records, tokenizer, format=format, read_errors=read.bad, **options
    )
    evaluation: list[PreferenceExample] = []
    eval_report = None
    if eval_files:
        read_eval = read_records(eval_files)
        kept = read_eval.records[:eval_max_records] if eval_max_records else read_eval.records
        evaluation, eval_report = build_preference_examples(
            kept, tokenizer, format=format, read_errors=read_eval.bad, **options
        )
    elif eval_records:
        evaluation, eval_report = build_preference_examples(
            eval_records, tokenizer, format=train_report.format, **options
        )
        eval_report.format_reason = "same as the train records"
    all_bad = train_report.bad_records + (eval_report.bad_records if eval_report else [])
    enforce_policy(in_file_order(all_bad, [str(f) for f in [*train_files, *eval_files]]), on_bad_record)
    if not train:
        raise DataError(
            "no usable preference pairs: every record is bad\n"
            + "\n".join(str(b) for b in train_report.bad_records[:20])
        )
    return PreparedPreference(train, evaluation, train_report, eval_report)
