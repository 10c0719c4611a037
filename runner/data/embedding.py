"""Embedding data: files -> records -> examples (query, positive, hard negatives, score, task).

Formats (`data.format`; "auto" detects them):
- ``pairs``: a query and its positive (``query``/``positive``; also ``anchor``, ``question`` /
  ``document``, ``passage``, ``answer``). Hard negatives are used when a record has them.
- ``triplets``: pairs with one hard negative or a list of them (``negative``, ``negatives``).
- ``scored-pairs``: ``sentence1``, ``sentence2`` and a numeric ``score`` (CoSENT, Spearman).
- ``image-text``: ``image`` (the document is the image, the query is the record's text) or
  ``query_image`` (the query is the image, the document is the text). Paths are relative to
  ``data.image_root`` (default: the data file's folder); hard negatives have the document's
  modality (image paths when the document is an image).

Any record may carry a ``task`` label; multi-task training requires one from `loss.tasks` on every
record. Field names map onto the canonical ones through ``data.fields``. Every problem (missing
field, wrong type, missing or corrupt image, unknown task) is a `BadRecord` with its location,
collected across files and handled by the ``on_bad_record`` policy, before any weights load.

This module depends on no torch: `EmbeddingBatchSampler` yields plain lists of indices.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from runner.data.conversation import RecordError
from runner.data.embedding_formats import ALIASES, FORMATS, detect_format
from runner.data.embedding_formats import field_key as _field
from runner.data.images import image_problem, resolve_image
from runner.data.kinds import guess_format
from runner.data.pipeline import split_eval
from runner.data.reading import ReadOptions, read_records
from runner.data.records import Record
from runner.data.report import (
    BadRecord,
    DataError,
    DataReport,
    all_bad_message,
    check_policy,
    enforce_policy,
    in_file_order,
    score_scale_warning,
)
from runner.spec.limits import MAX_ABS_SCORE

# image-text records name their one text in many ways
_IMAGE_TEXT = ("text", "caption")


@dataclass(frozen=True)
class Item:
    """One side of an example: a text or an image file."""

    text: str | None = None
    image: Path | None = None

    @property
    def key(self) -> tuple[str, str]:
        """Identity for de-duplication (same text or same image file)."""
        return ("image", str(self.image)) if self.image is not None else ("text", self.text or "")

    def __str__(self) -> str:
        return f"<image {self.image}>" if self.image is not None else str(self.text)


@dataclass(frozen=True)
class EmbeddingExample:
    query: Item
    positive: Item
    negatives: tuple[Item, ...] = ()
    score: float | None = None
    task: str | None = None
    location: Any = None  # runner.data.report.Location


@dataclass
class EmbeddingData:
    train: list[EmbeddingExample]
    eval: list[EmbeddingExample]
    train_report: DataReport
    eval_report: DataReport | None
    tasks: dict[str, int] = field(default_factory=dict)  # task -> training examples

    def summary(self) -> dict[str, Any]:
        report = self.train_report
        bad = len(report.bad_records) + (len(self.eval_report.bad_records) if self.eval_report else 0)
        out: dict[str, Any] = {
            "format": report.format,
            "format_reason": report.format_reason,
            "train_examples": len(self.train),
            "eval_examples": len(self.eval),
            "hard_negatives": sum(len(e.negatives) for e in self.train),
            "bad_records_skipped": bad,
        }
        if self.tasks:
            out["tasks"] = dict(self.tasks)
        if report.warnings:
            out["warnings"] = list(report.warnings)
        return out


# ---------------------------------------------------------------------------------------
# fields and detection


def _number(value: Any) -> Any:
    """A string holding a number (a CSV cell) as that number; anything else unchanged."""
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return value
    return value


# ---------------------------------------------------------------------------------------
# one record -> one example


def _text(data: Mapping[str, Any], key: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise RecordError(f"'{key}' is a {type(value).__name__}; expected a string")
    if not value.strip():
        raise RecordError(f"'{key}' is empty")
    return value


def _required(data: Mapping[str, Any], canonical: str, fields: Mapping[str, str], fmt: str) -> str:
    key = _field(data, canonical, fields)
    if key is None:
        names = [fields[canonical]] if canonical in fields else list(ALIASES[canonical])
        raise RecordError(
            f"missing field {' / '.join(repr(n) for n in names)} ({canonical}) required by format '{fmt}'"
        )
    return key


def _image(value: Any, key: str, root: Path) -> Item:
    if not isinstance(value, str) or not value.strip():
        raise RecordError(f"'{key}' must be an image path (a string), found {type(value).__name__}")
    try:
        path = resolve_image(value, root)
    except RecordError as exc:
        raise RecordError(f"'{key}': {exc}") from None
    problem = image_problem(path, shown=value)
    if problem is not None:
        raise RecordError(f"'{key}': {problem}")
    return Item(image=path)


def _negatives(data: Mapping[str, Any], key: str, image_root: Path | None) -> tuple[Item, ...]:
    value = data[key]
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values:
        raise RecordError(f"'{key}' must be a string or a non-empty list of strings")
    items = []
    for i, one in enumerate(values):
        if image_root is not None:
            items.append(_image(one, f"{key}[{i}]" if len(values) > 1 else key, image_root))
        elif not isinstance(one, str) or not one.strip():
            raise RecordError(f"'{key}' must hold non-empty strings; item {i} is {one!r}")
        else:
            items.append(Item(text=one))
    return tuple(items)


def to_example(
    data: Mapping[str, Any],
    fmt: str,
    *,
    fields: Mapping[str, str],
    image_root: Path,
    tasks: Sequence[str] | None = None,
) -> EmbeddingExample:
    """One record as an example of `fmt`; raises RecordError saying what is wrong."""
    negatives: tuple[Item, ...] = ()
    score = None
    if fmt == "scored-pairs":
        query = Item(text=_text(data, _required(data, "sentence1", fields, fmt)))
        positive = Item(text=_text(data, _required(data, "sentence2", fields, fmt)))
        key = _required(data, "score", fields, fmt)
        value = _number(data[key])  # CSV cells are text: "4.5" is a score there
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RecordError(f"'{key}' must be a finite number, found {value!r}")
        if abs(value) > MAX_ABS_SCORE:
            raise RecordError(
                f"'{key}' is {value:g}, outside the range of scores (-{MAX_ABS_SCORE:g} to "
                f"{MAX_ABS_SCORE:g}); put the scores on a scale such as 0 to 1 or 0 to 5"
            )
        score = float(value)
    elif fmt == "image-text":
        image_key, query_image_key = _field(data, "image", fields), _field(data, "query_image", fields)
        if (image_key is None) == (query_image_key is None):
            raise RecordError(
                "an image-text record needs exactly one of 'image' (image document) or 'query_image' (image query)"
            )
        text_key = _field(data, "query", fields) or _field(data, "positive", fields)
        text_key = text_key or next((k for k in _IMAGE_TEXT if k in data), None)
        if text_key is None:
            raise RecordError("an image-text record needs a text field: query, positive, text or caption")
        text = Item(text=_text(data, text_key))
        if image_key is not None:
            query, positive = text, _image(data[image_key], image_key, image_root)
        else:
            assert query_image_key is not None
            query, positive = _image(data[query_image_key], query_image_key, image_root), text
        negative_key = _field(data, "negative", fields)
        if negative_key is not None:
            negatives = _negatives(data, negative_key, image_root if positive.image is not None else None)
    else:
        query = Item(text=_text(data, _required(data, "query", fields, fmt)))
        positive = Item(text=_text(data, _required(data, "positive", fields, fmt)))
        negative_key = (
            _required(data, "negative", fields, fmt) if fmt == "triplets" else _field(data, "negative", fields)
        )
        if negative_key is not None:
            negatives = _negatives(data, negative_key, None)
    task = None
    if tasks is not None:
        task_key = _field(data, "task", fields)
        if task_key is None:
            raise RecordError(f"missing 'task' label; multi-task training needs one of {', '.join(tasks)}")
        task = data[task_key]
        if task not in tasks:
            raise RecordError(f"task {task!r} is not one of loss.tasks ({', '.join(tasks)})")
    return EmbeddingExample(query, positive, negatives, score, task)


def build_examples(
    records: Sequence[Record],
    fmt: str,
    *,
    fields: Mapping[str, str],
    image_root: Path | None,
    tasks: Sequence[str] | None,
) -> tuple[list[EmbeddingExample], list[BadRecord]]:
    examples, bad = [], []
    for record in records:
        root = image_root if image_root is not None else Path(record.location.file).parent
        try:
            example = to_example(record.data, fmt, fields=fields, image_root=root, tasks=tasks)
        except RecordError as exc:
            bad.append(BadRecord(record.location, str(exc)))
            continue
        examples.append(replace(example, location=record.location))
    return examples, bad


def _report(fmt: str, reason: str, records: int, kept: int, bad: list[BadRecord]) -> DataReport:
    return DataReport(format=fmt, format_reason=reason, records_read=records, records_kept=kept, bad_records=bad)


def prepare_embedding_data(
    train_files: Sequence[str | Path],
    *,
    eval_files: Sequence[str | Path] = (),
    eval_fraction: float = 0.0,
    seed: int = 42,
    format: str = "auto",
    fields: Mapping[str, str] | None = None,
    image_root: Path | None = None,
    on_bad_record: str = "error",
    tasks: Sequence[str] | None = None,
    max_records: int | None = None,
    eval_max_records: int | None = None,
    read_options: ReadOptions | None = None,
) -> EmbeddingData:
    """Read, check and split the data of an embedding job.

    Under on_bad_record="error" every bad record of train and eval data is listed at once
    (`BadRecordsError`); under "skip" they are dropped and counted in the reports.
    """
    check_policy(on_bad_record)
    fields = dict(fields or {})
    read = read_records(train_files, read_options)
    records = read.records[:max_records] if max_records else read.records
    if not records:
        raise DataError("no usable records in " + ", ".join(map(str, train_files)))
    if format == "auto":
        fmt, reason = detect_format([r.data for r in records], fields)
    elif format in FORMATS:
        fmt, reason = format, "set by data.format"
    else:
        raise DataError(f"data.format '{format}' is not an embedding format; use one of {', '.join(FORMATS)} or auto")
    eval_records: list[Record] = []
    eval_read_bad: list[BadRecord] = []
    if eval_files:
        eval_read = read_records(eval_files, read_options)
        eval_records, eval_read_bad = eval_read.records, eval_read.bad
    elif eval_fraction > 0:
        records, eval_records = split_eval(records, eval_fraction, seed)

    train, bad = build_examples(records, fmt, fields=fields, image_root=image_root, tasks=tasks)
    evaluation, eval_bad = build_examples(eval_records, fmt, fields=fields, image_root=image_root, tasks=tasks)
    files = [str(f) for f in [*train_files, *eval_files]]
    bad = in_file_order([*read.bad, *bad], files)
    eval_bad = in_file_order([*eval_read_bad, *eval_bad], files)
    summary = None
    if not train:
        looks_like = guess_format([r.data for r in records], fields) if format != "auto" else None
        summary = all_bad_message(
            len(records) + len(read.bad), bad, fmt=fmt, forced=format != "auto", looks_like=looks_like
        )
    enforce_policy([*bad, *eval_bad], on_bad_record, summary)
    if summary is not None:
        raise DataError(f"no usable training examples: {summary}")
    if eval_max_records:
        evaluation = evaluation[:eval_max_records]
    train_report = _report(fmt, reason, len(records) + len(read.bad), len(train), bad)
    if fmt == "scored-pairs":
        warning = score_scale_warning([(e.score, e.location) for e in train if e.score is not None])
        train_report.warnings.extend([warning] if warning else [])
    eval_report = _report(fmt, reason, len(eval_records), len(evaluation), eval_bad) if eval_records else None
    counts = Counter(e.task for e in train if e.task is not None)
    return EmbeddingData(train, evaluation, train_report, eval_report, tasks={t: counts.get(t, 0) for t in tasks or ()})


# ---------------------------------------------------------------------------------------
# evaluation sets


@dataclass
class RetrievalSet:
    """Queries, a corpus (every positive and hard negative, de-duplicated) and which corpus
    entries are relevant to each query (its positives)."""

    queries: list[Item]
    corpus: list[Item]
    relevant: list[set[int]]


def retrieval_set(examples: Sequence[EmbeddingExample]) -> RetrievalSet:
    queries: dict[tuple[str, str], int] = {}
    corpus: dict[tuple[str, str], int] = {}
    items_q: list[Item] = []
    items_c: list[Item] = []
    relevant: list[set[int]] = []

    def add_doc(item: Item) -> int:
        if item.key not in corpus:
            corpus[item.key] = len(items_c)
            items_c.append(item)
        return corpus[item.key]

    for example in examples:
        if example.query.key not in queries:
            queries[example.query.key] = len(items_q)
            items_q.append(example.query)
            relevant.append(set())
        relevant[queries[example.query.key]].add(add_doc(example.positive))
        for negative in example.negatives:
            add_doc(negative)
    return RetrievalSet(items_q, items_c, relevant)


# ---------------------------------------------------------------------------------------
# batches


class EmbeddingBatchSampler:
    """Batches for contrastive training: one task per batch, no text twice in a global batch.

    In-batch negatives make a repeated text a false negative (the same positive counted as wrong
    for another query), so with `no_duplicates` an example whose query or positive is already in
    the global batch waits for a later one (unless no later batch has room). Each task's examples
    fill ceil(n / global batch) batches, so the number of batches never depends on the shuffle.

    With `world_size` W > 1 every global batch is yielded as W consecutive per-process batches:
    accelerate's BatchSamplerShard gives batch i to process i % W, so all processes work on the
    same task at each step (their embeddings are gathered into one global batch) and every
    process gets a batch. The order is a function of (seed, epoch): resuming replays it.
    """

    def __init__(
        self,
        examples: Sequence[EmbeddingExample],
        batch_size: int,
        *,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        no_duplicates: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1:
            raise ValueError("batch_size and world_size must be at least 1")
        self.world_size = world_size
        self.global_size = batch_size * world_size
        self.seed, self.shuffle, self.epoch = seed, shuffle, 0
        self.groups: dict[str | None, list[int]] = {}
        for index, example in enumerate(examples):
            self.groups.setdefault(example.task, []).append(index)
        self.keys = [{e.query.key, e.positive.key} for e in examples] if no_duplicates else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.world_size * sum(math.ceil(len(g) / self.global_size) for g in self.groups.values())

    def global_batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        batches: list[list[int]] = []
        for indices in self.groups.values():
            order = list(indices)
            if self.shuffle:
                rng.shuffle(order)
            batches.extend(self._fill(order))
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            yield from _split(batch, self.world_size)

    def _fill(self, order: list[int]) -> list[list[int]]:
        size = self.global_size
        batches: list[list[int]] = [[] for _ in range(math.ceil(len(order) / size))]
        seen: list[set[tuple[str, str]]] = [set() for _ in batches]
        first_open = 0
        for index in order:
            while len(batches[first_open]) == size:
                first_open += 1
            target = first_open
            if self.keys is not None:
                keys = self.keys[index]
                target = next(
                    (b for b in range(first_open, len(batches)) if len(batches[b]) < size and not keys & seen[b]),
                    first_open,
                )
                seen[target] |= keys
            batches[target].append(index)
        return batches


def _split(batch: list[int], parts: int) -> list[list[int]]:
    """`parts` near-equal contiguous pieces; a batch smaller than `parts` is repeated to fill them."""
    if parts == 1:
        return [batch]
    while len(batch) < parts:
        batch = batch + batch
    base, extra = divmod(len(batch), parts)
    out, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        out.append(batch[start:end])
        start = end
    return out
