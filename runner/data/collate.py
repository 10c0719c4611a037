"""Batch tokenised examples: pad-to-longest, or padding-free packing.

Packing uses transformers' own `DataCollatorWithFlattening` (5.23 does exactly what we
need): the batch becomes one row, ``position_ids`` restart at 0 for every sequence,
there is no ``attention_mask`` (the model derives the per-sequence causal mask from the
position_ids restarts), and the first label of each sequence is -100 so no sequence is
trained to predict the start of the next one.

The model MUST run with ``use_cache=False`` on packed batches: with a cache, transformers
5 does not split the row into sequences and attention leaks across them (measured
max |Δlogit| ≈ 30 on SmolLM2, against ≈ 1e-5 without a cache). Setting
``model.config.use_cache = False`` is enough; transformers 5.23's Trainer does it
(``TrainingArguments.use_cache`` defaults to False). Custom loops must do the same.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DataCollatorWithFlattening

from runner.data.causal import IGNORE_INDEX
from runner.data.report import DataError

Features = Sequence[Mapping[str, Sequence[int]]]


class EmptyBatchError(DataError):
    """A batch in which no label contributes to the loss (the loss would be NaN)."""


def trainable_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Labels that count in the loss: not -100, and not the first of a row (labels are shifted)."""
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def require_trainable_tokens(batch: Mapping[str, torch.Tensor]) -> int:
    """Return the number of trainable tokens, or raise EmptyBatchError if there are none."""
    n = trainable_tokens(batch)
    if n == 0:
        raise EmptyBatchError(
            "batch has no trainable tokens (every label is -100), so its loss would be NaN; "
            "check that responses survive truncation (data.max_length) and that the assistant mask is not empty"
        )
    return n


@dataclass
class PadCollator:
    """Pad right to the longest example of the batch (optionally to a multiple of N).

    Padding gets attention_mask 0 and label -100, so it is neither attended nor trained.
    """

    pad_token_id: int
    pad_to_multiple_of: int | None = None
    check: bool = True

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        longest = max(len(f["input_ids"]) for f in features)
        if self.pad_to_multiple_of:
            m = self.pad_to_multiple_of
            longest = -(-longest // m) * m
        input_ids = torch.full((len(features), longest), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(features), longest), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(features), longest), dtype=torch.long)
        for row, f in enumerate(features):
            n = len(f["input_ids"])
            input_ids[row, :n] = torch.as_tensor(list(f["input_ids"]))
            labels[row, :n] = torch.as_tensor(list(f.get("labels", f["input_ids"])))
            attention_mask[row, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
        if self.check:
            require_trainable_tokens(batch)
        return batch


@dataclass
class PackingCollator:
    """Padding-free batches via `DataCollatorWithFlattening` (see module docstring; use_cache=False!)."""

    check: bool = True
    _flatten: DataCollatorWithFlattening = field(
        init=False,
        repr=False,
        default_factory=lambda: DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE_INDEX),
    )

    def __call__(self, features: Features) -> dict[str, torch.Tensor]:
        # only the keys the flattening collator understands; attention_mask must not reach the model
        batch = self._flatten([{k: f[k] for k in ("input_ids", "labels") if k in f} for f in features])
        if self.check:
            require_trainable_tokens(batch)
        return batch


def pad_token_id_for(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its eos id (padding is masked, so any id works)."""
    for candidate in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    raise DataError("the tokenizer has neither a pad nor an eos token; set one to pad batches")


def make_collator(tokenizer: Any, *, packing: bool, pad_to_multiple_of: int | None = None) -> Any:
    """The collator a trainer passes to its DataLoader / Trainer(data_collator=...)."""
    if packing:
        return PackingCollator()
    return PadCollator(pad_token_id_for(tokenizer), pad_to_multiple_of)


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Example order in which each batch holds similar lengths (less padding), batches shuffled.

    Sorts within random mega-batches of 50 batches, like transformers' group_by_length,
    so the order still changes from epoch to epoch (pass epoch into the seed).
    """
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(lengths), generator=rng).tolist()
    mega = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=rng).tolist()
    return [i for b in shuffled for i in batches[b]]
