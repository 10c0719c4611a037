"""The data as the run will see it: tokenized examples (as runner.data builds them, cached), the
batch shapes they make, and the number of optimizer steps."""

from __future__ import annotations

import hashlib
import json
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from runner.data.reading import digest_source

if TYPE_CHECKING:
    from runner.spec import LoadedJob

__all__ = ["BatchShape", "DataStats", "batch_shape", "data_stats", "optimizer_steps"]

CACHE_FORMAT = 1


@dataclass(frozen=True)
class DataStats:
    """The tokenized data as the run will see it."""

    format: str
    records: int  # training records read
    train_examples: int
    eval_examples: int
    train_lengths: tuple[int, ...]
    eval_lengths: tuple[int, ...]
    trainable_tokens: int
    truncated: int
    bad_records: int
    max_length: int

    @property
    def train_tokens(self) -> int:
        return sum(self.train_lengths)

    @property
    def eval_tokens(self) -> int:
        return sum(self.eval_lengths)


@dataclass(frozen=True)
class BatchShape:
    """Tokens one micro-batch puts through the model: its largest (memory) and average (time)."""

    peak_tokens: int  # rows x columns of the largest micro-batch, padding included
    peak_rows: int
    peak_columns: int
    mean_tokens: float
    real_fraction: float  # non-padding share of the tokens computed
    peak_logit_tokens: int | None = None  # positions of the largest micro-batch the LM head runs on (None: all)


def batch_shape(
    lengths: Sequence[int], batch_size: int, *, packing: bool, seed: int = 0, trials: int = 8
) -> BatchShape:
    """The largest micro-batch (memory) and the mean one (time), over shuffled epochs.

    Padded batches are rows x (longest row): the batch that holds the longest example is always
    that example's length wide, so the peak is batch x longest. Packed batches are one row of the
    summed lengths; their peak is the largest sum seen over `trials` shuffled epochs (the top-k
    lengths rarely land in one batch)."""
    if not lengths:
        return BatchShape(0, 0, 0, 0.0, 1.0)
    b = max(1, min(batch_size, len(lengths)))
    rng = random.Random(seed)
    computed = []
    for _ in range(trials):
        order = list(lengths)
        rng.shuffle(order)
        for start in range(0, len(order), b):
            chunk = order[start : start + b]
            computed.append(sum(chunk) if packing else len(chunk) * max(chunk))
    if packing:
        peak = max(computed)
        return BatchShape(peak, 1, peak, statistics.fmean(computed), 1.0)
    longest = max(lengths)
    real = sum(lengths) * trials
    return BatchShape(b * longest, b, longest, statistics.fmean(computed), real / max(1, sum(computed)))


def optimizer_steps(
    train_examples: int, *, batch_size: int, nproc: int, grad_accum: int, epochs: float, max_steps: int | None
) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch), as the Trainer counts them: each process
    takes ceil(examples / (batch x processes)) micro-batches per epoch."""
    per_rank_batches = math.ceil(train_examples / (batch_size * nproc)) if train_examples else 0
    per_epoch = max(per_rank_batches // grad_accum + int(per_rank_batches % grad_accum > 0), 1)
    steps = max_steps if max_steps else math.ceil(epochs * per_epoch)
    return steps, per_epoch


def data_stats(
    job: LoadedJob, tokenizer: Any, model_files: dict[str, str] | None = None, *, cache: bool = True
) -> tuple[DataStats, bool]:
    """Tokenize the job's data as the run does (runner.data), or read the cached result.
    Returns (stats, came from the cache)."""
    from runner.paths import runner_home
    from runner.train.causal_lm import prepare_causal_data

    key = _data_key(job, model_files or {})
    cache_file = runner_home() / "plan-cache" / f"{key}.json"
    if cache and cache_file.is_file():
        try:
            raw = json.loads(cache_file.read_text(encoding="utf-8"))
            if raw.get("format_version") == CACHE_FORMAT:
                raw.pop("format_version")
                raw["train_lengths"] = tuple(raw["train_lengths"])
                raw["eval_lengths"] = tuple(raw["eval_lengths"])
                return DataStats(**raw), True
        except (OSError, ValueError, TypeError):
            pass
    data = prepare_causal_data(job, tokenizer, progress=False, cache=cache)
    report = data.train_report
    stats = DataStats(
        format=report.format,
        records=report.records_read,
        train_examples=len(data.train),
        eval_examples=len(data.eval),
        train_lengths=tuple(len(e["input_ids"]) for e in data.train),
        eval_lengths=tuple(len(e["input_ids"]) for e in data.eval),
        trainable_tokens=report.trainable_tokens,
        truncated=report.truncated,
        bad_records=len(report.bad_records),
        max_length=job.spec.data.max_length,
    )
    if cache:
        from runner.fsutil import atomic_write_json

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, {"format_version": CACHE_FORMAT, **asdict(stats)})
    return stats, False


def _data_key(job: LoadedJob, model_files: dict[str, str]) -> str:
    """Changes when the data files, the tokenizer or any setting that shapes examples changes."""
    data = job.spec.data
    digest = hashlib.sha256()
    for name in [*data.train, *data.eval]:
        source = job.resolve_data(name)
        digest.update(source.encode())
        digest_source(digest, source)
    tokenizer_files = {
        k: v for k, v in sorted(model_files.items()) if "token" in k or "template" in k or k == "config.json"
    }
    settings = data.model_dump(mode="json", exclude={"train", "eval", "shuffle", "packing", "image_root", "image_size"})
    digest.update(
        json.dumps(
            {"tokenizer": tokenizer_files, "settings": settings, "seed": job.spec.train.seed}, sort_keys=True
        ).encode()
    )
    return digest.hexdigest()[:32]
