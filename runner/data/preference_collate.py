"""Preference batches: prompts and their replies in one padding-free row, the prompt once per pair.

A batch of pairs becomes one row of tokens. With `shared_prompt` each pair is laid out as
``[prompt, chosen, rejected]``: position ids run 0..P-1 over the prompt, continue P.. over the
chosen reply, and start again at P for the rejected reply, which tells the attention kernel
(runner.train.shared_prompt) that the rejected reply attends to the prompt's keys and values and
its own, not to the chosen reply's. Without it each reply is a sequence of its own,
``[prompt, chosen], [prompt, rejected]``, with position ids restarting at 0 (the packed layout of
SFT, understood by every attention kernel).

Either way the row comes with `logit_index` (the row positions whose logits predict a reply
token: the last prompt token predicts the first token of every reply), `targets` (those tokens)
and `reply_index` (which reply each target belongs to), so the LM head runs on reply positions only
and the log-probabilities are summed per reply. Replies are numbered group by group: for pairs
the chosen reply of pair i is 2i and the rejected one 2i + 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

Group = tuple[Sequence[int], Sequence[Sequence[int]]]  # (prompt ids, [reply ids, ...])


def pack_groups(groups: Sequence[Group], *, shared_prompt: bool) -> dict[str, torch.Tensor]:
    """One padding-free row of the groups (see the module docstring)."""
    ids: list[int] = []
    positions: list[int] = []
    logit_index: list[int] = []
    targets: list[int] = []
    reply_index: list[int] = []
    reply_tokens: list[int] = []
    reply = 0
    for prompt, replies in groups:
        n = len(prompt)
        if shared_prompt:
            last_prompt = len(ids) + n - 1
            ids.extend(prompt)
            positions.extend(range(n))
        for tokens in replies:
            if not shared_prompt:  # the prompt again, positions from 0: a sequence of its own
                last_prompt = len(ids) + n - 1
                ids.extend(prompt)
                positions.extend(range(n))
            start = len(ids)
            ids.extend(tokens)
            positions.extend(range(n, n + len(tokens)))
            logit_index.append(last_prompt)  # the prompt's last token predicts the reply's first
            logit_index.extend(range(start, start + len(tokens) - 1))
            targets.extend(tokens)
            reply_index.extend([reply] * len(tokens))
            reply_tokens.append(len(tokens))
            reply += 1
    return {
        "input_ids": torch.tensor([ids], dtype=torch.long),
        "position_ids": torch.tensor([positions], dtype=torch.long),
        "logit_index": torch.tensor([logit_index], dtype=torch.long),
        "targets": torch.tensor(targets, dtype=torch.long),
        "reply_index": torch.tensor(reply_index, dtype=torch.long),
        "reply_tokens": torch.tensor(reply_tokens, dtype=torch.long),
    }


def sequence_tokens(groups: Sequence[Group]) -> int:
    """Tokens of the groups as separate sequences (the prompt once per reply): what the batch holds
    whatever the layout, so throughput compares across layouts and tools."""
    return sum(len(prompt) * len(replies) + sum(len(r) for r in replies) for prompt, replies in groups)


def group_tokens(feature: Mapping[str, Any], shared_prompt: bool) -> int:
    """Tokens one example takes in the row."""
    replies = [feature[k] for k in ("chosen", "rejected", "completion") if k in feature]
    prompt = len(feature["prompt"]) * (1 if shared_prompt else len(replies))
    return prompt + sum(len(r) for r in replies)


def split_by_budget(
    features: Sequence[Mapping[str, Any]], budget: int | None, shared_prompt: bool
) -> list[list[Mapping[str, Any]]]:
    """Consecutive examples in parts of at most `budget` row tokens (an example longer than the
    budget is a part of its own); one part when there is no budget."""
    if not budget:
        return [list(features)]
    parts: list[list[Mapping[str, Any]]] = []
    used = 0
    for feature in features:
        size = group_tokens(feature, shared_prompt)
        if parts and used + size <= budget:
            parts[-1].append(feature)
            used += size
        else:
            parts.append([feature])
            used = size
    return parts


@dataclass
class PreferenceCollator:
    """Examples -> {"parts": [part, ...], "items": examples in the batch, "chosen_tokens": chosen
    reply tokens in the batch}. The batch is cut into parts of at most `token_budget` row tokens
    (between examples), which training forwards and backpropagates one at a time to bound memory.

    A part of pairs: {"policy": packed row, "tokens", and "ref_logps" when the reference
    log-probabilities were computed before training}. A part of unpaired (KTO) examples also has a
    "kl" row (each prompt with another example's completion), the "label"s and, unless
    precomputed, a "reference" row holding both completions per prompt (the reference model scores
    them in one pass)."""

    shared_prompt: bool = True
    token_budget: int | None = None

    def __call__(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        pack = self._unpaired if "completion" in features[0] else self._paired
        chosen = sum(len(f["chosen"]) if "chosen" in f else len(f["completion"]) * bool(f["label"]) for f in features)
        return {
            "parts": [pack(part) for part in split_by_budget(features, self.token_budget, self.shared_prompt)],
            "items": torch.tensor(len(features)),
            "chosen_tokens": torch.tensor(chosen),
        }

    def _paired(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        groups = [(f["prompt"], (f["chosen"], f["rejected"])) for f in features]
        part: dict[str, Any] = {
            "policy": pack_groups(groups, shared_prompt=self.shared_prompt),
            "tokens": torch.tensor(sequence_tokens(groups)),
        }
        if "ref_logps" in features[0]:
            part["ref_logps"] = torch.tensor([v for f in features for v in f["ref_logps"]], dtype=torch.float32)
        return part

    def _unpaired(self, features: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        main = [(f["prompt"], (f["completion"],)) for f in features]
        kl = [(f["prompt"], (f["kl_completion"],)) for f in features]
        part: dict[str, Any] = {
            "policy": pack_groups(main, shared_prompt=self.shared_prompt),
            "kl": pack_groups(kl, shared_prompt=self.shared_prompt),
            "label": torch.tensor([bool(f["label"]) for f in features]),
            "tokens": torch.tensor(sequence_tokens(main)),
        }
        if "ref_logps" in features[0]:  # per example: (completion, kl completion)
            part["ref_logps"] = torch.tensor([v for f in features for v in f["ref_logps"]], dtype=torch.float32)
        else:
            both = [(f["prompt"], (f["completion"], f["kl_completion"])) for f in features]
            part["reference"] = pack_groups(both, shared_prompt=self.shared_prompt)
        return part
