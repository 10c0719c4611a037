"""Preference jobs (DPO, IPO, ORPO, SimPO, KTO) in the plan.

What differs from SFT, and how it is counted:
- two replies per record: each pair puts its prompt once (train.speed.shared_prompt) or twice,
  and both replies, into the padding-free row; KTO puts a prompt and its completion;
- the batch is forwarded in parts of at most train.speed.token_budget row tokens (one process,
  no gradient checkpointing), cut between examples, as runner.data.preference_collate does: the
  peak is the largest part, not the whole batch;
- the LM head runs on reply positions only: the logits (and their gradient) are those of the
  largest part's reply tokens;
- the reference: with the adapter switched off (or a frozen copy), a forward pass without gradients
  runs while the policy's activations are kept, adding its logits (and log-softmax) at the peak; a
  frozen copy also holds a second set of weights; precomputed, it costs nothing while training;
- time: the reference pass is forward only (about a third of a forward + backward pass per
  token), and KTO adds a forward pass over the mismatched (KL) completions.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runner.plan.data import BatchShape, DataStats
from runner.plan.shape import ModelShape

if TYPE_CHECKING:
    from runner.spec import JobSpec, LoadedJob

__all__ = [
    "PreferenceRows",
    "passes_per_token",
    "preference_batch",
    "preference_stats",
    "reference_bytes",
    "reference_kind",
]

FORWARD_SHARE = 1 / 3  # a forward pass without gradients, as a share of a forward + backward pass


@dataclass(frozen=True)
class PreferenceRows:
    """Per training example: the tokens it puts in the policy's row, and how many of them are reply
    tokens (positions the LM head runs on)."""

    row_lengths: tuple[int, ...]
    reply_lengths: tuple[int, ...]


def _row(example: dict[str, Any], shared: bool) -> tuple[int, int]:
    prompt = len(example["prompt"])
    replies = [len(example[k]) for k in ("chosen", "rejected", "completion") if k in example]
    return prompt * (1 if shared else len(replies)) + sum(replies), sum(replies)


def preference_stats(job: LoadedJob, tokenizer: Any) -> tuple[DataStats, PreferenceRows]:
    """The job's preference data tokenised as the run does it (runner.train.preference)."""
    from runner.train.preference import prepare_preference_job_data

    spec = job.spec
    data = prepare_preference_job_data(job, tokenizer, progress=False)
    shared = spec.train.speed.shared_prompt
    train = [_row(e, shared) for e in data.train]
    report = data.train_report
    stats = DataStats(
        format=report.format,
        records=report.records_read,
        train_examples=len(data.train),
        eval_examples=len(data.eval),
        train_lengths=tuple(r for r, _ in train),
        eval_lengths=tuple(_row(e, shared)[0] for e in data.eval),
        trainable_tokens=report.trainable_tokens,
        truncated=report.truncated,
        bad_records=len(report.bad_records),
        max_length=spec.data.max_length,
    )
    return stats, PreferenceRows(tuple(r for r, _ in train), tuple(n for _, n in train))


def token_budget(spec: JobSpec) -> int:
    """The budget the run cuts batches with (0: whole batches), as runner.train.preference sets it."""
    if spec.resources.world_size > 1 or spec.train.gradient_checkpointing:
        return 0
    return spec.train.speed.token_budget


def preference_batch(
    rows: PreferenceRows, batch_size: int, budget: int, *, seed: int = 0, trials: int = 8
) -> BatchShape:
    """The largest part (memory) over `trials` shuffled epochs, and the mean batch (time)."""
    if not rows.row_lengths:
        return BatchShape(0, 0, 0, 0.0, 1.0, 0)
    b = max(1, min(batch_size, len(rows.row_lengths)))
    rng = random.Random(seed)
    peak, peak_replies, totals = 0, 0, []
    for _ in range(trials):
        order = list(range(len(rows.row_lengths)))
        rng.shuffle(order)
        for start in range(0, len(order), b):
            batch = order[start : start + b]
            totals.append(sum(rows.row_lengths[i] for i in batch))
            for part in _parts(batch, rows.row_lengths, budget):
                size = sum(rows.row_lengths[i] for i in part)
                if size > peak:
                    peak, peak_replies = size, sum(rows.reply_lengths[i] for i in part)
    return BatchShape(peak, 1, peak, statistics.fmean(totals), 1.0, peak_replies)


def _parts(batch: list[int], lengths: tuple[int, ...], budget: int) -> list[list[int]]:
    """runner.data.preference_collate.split_by_budget over indices."""
    if not budget:
        return [batch]
    parts: list[list[int]] = []
    used = 0
    for i in batch:
        if parts and used + lengths[i] <= budget:
            parts[-1].append(i)
            used += lengths[i]
        else:
            parts.append([i])
            used = lengths[i]
    return parts


def reference_kind(spec: JobSpec, method: str) -> str | None:
    """Where the reference comes from if the job trained with `method` (the job's own setting where it
    applies; otherwise what 'auto' picks for that method); None for reference-free losses."""
    if spec.reference is None:
        return None
    chosen = spec.loss.reference
    if method == "full":
        return chosen if chosen in ("copy", "precompute") else "precompute"
    return "precompute" if chosen == "precompute" else "adapter-off"


def reference_bytes(shape: ModelShape, kind: str | None, batch: BatchShape, weight_bytes: int) -> int:
    """What the reference holds at the peak: its pass's logits and log-softmax over the largest part's
    reply positions (computed while the policy's activations are kept), and a frozen copy's weights."""
    if kind is None or kind == "precompute":
        return 0
    logits = 2 * (batch.peak_logit_tokens or 0) * shape.vocab_size * 4
    return logits + (shape.parameters * weight_bytes if kind == "copy" else 0)


def passes_per_token(spec: JobSpec, kind: str | None) -> float:
    """Forward + backward passes' worth of work per policy-row token: 1, plus the reference pass
    (forward only) when it runs every step, plus KTO's pass over the KL completions (and their
    share of the reference pass)."""
    passes = 1.0
    if kind in ("adapter-off", "copy"):
        passes += FORWARD_SHARE
    if spec.loss_type == "kto":
        passes += FORWARD_SHARE * (2 if kind in ("adapter-off", "copy") else 1)
    return passes


def notes(spec: JobSpec, kind: str | None, budget: int) -> list[str]:
    shared = "once" if spec.train.speed.shared_prompt else "once per reply"
    holds = "prompts with their completions" if spec.loss_type == "kto" else f"each prompt {shared} and both replies"
    cut = f"in parts of at most {budget} tokens" if budget else "whole"
    reference = {
        None: "none (reference-free)",
        "adapter-off": "the base with the adapter off, a no-grad pass per step",
        "copy": "a frozen copy of the base, a no-grad pass per step",
        "precompute": "computed once before training (not counted in the training peak)",
    }[kind]
    return [
        f"preference ({spec.loss_type}): padding-free rows of {holds}, forwarded {cut}, the LM head on reply "
        f"positions only; reference: {reference}"
    ]


def suggest_preference(
    shape: ModelShape,
    spec: JobSpec,
    rows: PreferenceRows,
    estimate_peak: Callable[..., int],
    budget: int,
    qlora_ok: bool,
) -> list[str]:
    """Changes to a preference job that bring its peak under `budget`, each with the peak it gives.
    `estimate_peak(method, batch, checkpointing, reference_kind)` is the plan's memory estimate."""
    from runner.units import format_binary_size

    adapter, train = spec.adapter, spec.train
    current = token_budget(spec)

    def peak(
        method: str = adapter.method,
        batch_size: int = train.batch_size,
        budget_: int = current,
        checkpointing: bool = train.gradient_checkpointing,
        kind: str | None = "job",
    ) -> int:
        kind = reference_kind(spec, method) if kind == "job" else kind
        batch = preference_batch(rows, batch_size, 0 if checkpointing else budget_, seed=train.seed)
        return estimate_peak(method, batch, checkpointing, kind)

    ideas: list[tuple[str, int]] = []
    if current > 256:
        ideas.append(
            (f"train.speed.token_budget = {current // 2} (smaller parts of each batch)", peak(budget_=current // 2))
        )
    if reference_kind(spec, adapter.method) in ("adapter-off", "copy"):
        ideas.append(
            ('loss.reference = "precompute" (the reference computed once, before training)', peak(kind="precompute"))
        )
    if not train.gradient_checkpointing:
        ideas.append(
            (
                "train.gradient_checkpointing = true (recompute activations in the backward pass)",
                peak(checkpointing=True),
            )
        )
    b, smallest = train.batch_size, 2 if spec.loss_type == "kto" else 1  # KTO's reference point needs 2
    while b // 2 >= smallest:
        b //= 2
        ideas.append(
            (
                f"train.batch_size = {b}, train.grad_accum = {train.grad_accum * (train.batch_size // b)} "
                "(same global batch)",
                peak(batch_size=b),
            )
        )
        if ideas[-1][1] <= budget:
            break
    order = ["full", "lora", "qlora"] if qlora_ok else ["full", "lora"]
    for method in order[order.index(adapter.method) + 1 :] if adapter.method in order else []:
        ideas.append((f'adapter.method = "{method}"', peak(method=method)))
    fitting = [(text, value) for text, value in ideas if value <= budget]
    chosen = fitting or sorted(ideas, key=lambda item: item[1])[:2]
    return [f"{text}: peak ~{format_binary_size(value)}" for text, value in chosen]
