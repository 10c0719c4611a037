"""Reply log-probabilities, and where the reference model's come from (DPO, IPO, KTO).

`reply_logps` runs a model over a packed preference row (runner.data.preference_collate) with the
LM head only at the positions that predict a reply token, and sums each reply's token
log-probabilities. The reference model's log-probabilities come from one of:

- `AdapterOff` (LoRA, QLoRA): the trained model itself with its adapter switched off (peft's
  `disable_adapter`), which *is* the base model, so no second copy is held;
- `FrozenCopy` (full fine-tuning): a copy of the base taken before training, frozen;
- precomputed (`precompute_reference`): computed once before training, with either of the above,
  stored on each example as ``ref_logps`` and cached under ``RUNNER_HOME/reference-logps/`` by the
  content of the tokenised data, the base model's files and the settings that change the numbers,
  so a rerun or a resumed run reads them instead of computing them again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Row = Mapping[str, torch.Tensor]
CACHE_VERSION = 1


def reply_logps(model: Any, row: Row) -> torch.Tensor:
    """[replies] float32: the summed log-probability of each reply's tokens given what precedes it."""
    index = row["logit_index"]
    outputs = model(input_ids=row["input_ids"], position_ids=row["position_ids"], logits_to_keep=index, use_cache=False)
    logits = outputs.logits
    if logits.shape[1] != index.shape[1]:  # a model that ignores logits_to_keep returns every position
        logits = logits[:, index[0]]
    token_logps = -F.cross_entropy(logits[0].float(), row["targets"], reduction="none")
    sums = torch.zeros(row["reply_tokens"].shape[0], dtype=token_logps.dtype, device=token_logps.device)
    return sums.index_add(0, row["reply_index"], token_logps)


class AdapterOff:
    """The reference is the model being trained with its LoRA adapter switched off: the base model."""

    kind = "adapter-off"

    def __call__(self, model: Any, row: Row) -> torch.Tensor:
        with torch.no_grad(), model.disable_adapter():
            return reply_logps(model, row)


class FrozenCopy:
    """The reference is a frozen copy of the base model, taken before training."""

    kind = "copy"

    def __init__(self, model: Any) -> None:
        self.model = model.eval().requires_grad_(False)

    def __call__(self, model: Any, row: Row) -> torch.Tensor:
        device = row["input_ids"].device
        if next(self.model.parameters()).device != device:  # follows the trained model onto its device
            self.model.to(device)
        with torch.no_grad():
            return reply_logps(self.model, row)


Reference = Callable[[Any, Row], torch.Tensor]


def base_reference(model: Any, method: str) -> AdapterOff | Callable[[Any, Row], torch.Tensor]:
    """How to score with the base model before training starts: the adapter switched off, or (full
    fine-tuning) the model itself, which is still the base."""
    if method == "full":

        def plain(m: Any, row: Row) -> torch.Tensor:
            with torch.no_grad():
                return reply_logps(m, row)

        return plain
    return AdapterOff()


# ---------------------------------------------------------------------------------------------
# computed once, cached


def reference_cache_dir() -> Path:
    from runner.paths import runner_home

    return runner_home() / "reference-logps"


def reference_cache_key(
    datasets: Sequence[Sequence[Mapping[str, Any]]], model_files: Mapping[str, str], settings: Mapping[str, Any]
) -> str:
    """Changes when a token of the data, a file of the base model or a setting that changes the
    numbers (dtype, device, attention layout, quantisation) changes."""
    digest = hashlib.sha256(f"reference-logps {CACHE_VERSION}".encode())
    for examples in datasets:
        digest.update(b"\0set\0")
        for example in examples:
            for key in ("prompt", "chosen", "rejected", "completion", "kl_completion"):
                if key in example:
                    digest.update(key.encode())
                    digest.update(np.asarray(example[key], dtype=np.int32).tobytes())
    digest.update(
        json.dumps({"model": dict(model_files), "settings": dict(settings)}, sort_keys=True, default=str).encode()
    )
    return digest.hexdigest()[:40]


def _batches(examples: Sequence[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    for start in range(0, len(examples), size):
        yield list(examples[start : start + size])


def compute_reference_logps(
    examples: Sequence[Mapping[str, Any]],
    score: Callable[[Row], torch.Tensor],
    collate: Callable[[list[Mapping[str, Any]]], dict[str, Any]],
    batch_size: int,
    device: Any,
    progress: bool = False,
) -> np.ndarray:
    """[examples, 2] reference log-probabilities: (chosen, rejected) of each pair, or (completion,
    KL completion) of each unpaired example."""
    from accelerate.utils import send_to_device
    from tqdm.auto import tqdm

    out = []
    total = -(-len(examples) // batch_size)
    for batch in tqdm(
        _batches(examples, batch_size), total=total, desc="reference log-probabilities", disable=not progress
    ):
        collated = send_to_device(collate(batch), device)
        for part in collated["parts"]:
            row = part.get("reference", part["policy"])
            out.append(score(row).float().cpu().reshape(-1, 2))
    return torch.cat(out).numpy() if out else np.zeros((0, 2), dtype=np.float32)


def precompute_reference(
    datasets: Sequence[list[dict[str, Any]]],
    compute: Callable[[Sequence[Mapping[str, Any]]], np.ndarray],
    key: str,
    *,
    folder: Path | None = None,
) -> bool:
    """Put ``ref_logps`` on every example of `datasets` (train, eval), from the cache entry `key`
    when there is one, else computed with `compute` and stored. Returns whether it was a cache hit."""
    folder = folder or reference_cache_dir()
    path = folder / f"{key}.npz"
    values = _load(path, [len(d) for d in datasets])
    hit = values is not None
    if values is None:
        values = [compute(examples) for examples in datasets]
        with contextlib.suppress(OSError):  # an unwritable cache costs a recomputation next time, nothing else
            _save(path, values)
    for examples, logps in zip(datasets, values, strict=True):
        for example, pair in zip(examples, logps.tolist(), strict=True):
            example["ref_logps"] = pair
    return hit


def _load(path: Path, sizes: Sequence[int]) -> list[np.ndarray] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as arrays:
            values = [arrays[f"set{i}"] for i in range(len(sizes))]
    except (OSError, ValueError, KeyError):
        return None
    if [len(v) for v in values] != list(sizes):
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return values


def _save(path: Path, values: Sequence[np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, **{f"set{i}": np.asarray(v, dtype=np.float32) for i, v in enumerate(values)})  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)
