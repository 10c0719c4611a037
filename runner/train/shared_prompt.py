"""Attention for rows in which several replies share one prompt (preference batches).

runner.data.preference_collate lays a pair out as ``[prompt, chosen, rejected]`` with position ids
0..P-1, P..P+C-1 and P..P+R-1. The position ids alone say what attends to what:

- a segment is a run of consecutive position ids; one that starts at 0 begins a new group;
- a segment that starts at p > 0 is a branch: its tokens attend to the first p tokens of their
  group (the prompt) and, causally, to their own, at positions continuing from the prompt.

So the chosen reply simply continues the prompt (one causal sequence), and the rejected reply
attends to ``[prompt keys, own keys]`` with the causal mask aligned to the lower right (query i of
the reply sees the whole prompt and reply tokens 0..i; torch.nn.attention.bias.causal_lower_right).
Both replies then see exactly what they would see with the prompt repeated in front of each, and
the prompt's keys and values, projections and MLPs are computed once per pair instead of twice.
The gradients add up the same way (the prompt's activations receive the sum of what the two copies
would receive): tests/train/test_shared_prompt.py checks log-probabilities and gradients against
each sequence computed alone.

Rows without branches (position ids only restarting at 0) are plain packed rows, computed per
sequence as runner.train.attention does. Anything else (a padding mask, a kv-cache, several rows)
goes to transformers' own `sdpa` path. Registered under `SHARED_PROMPT_SDPA`; selected with
`use_shared_prompt_sdpa(model)`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right

SHARED_PROMPT_SDPA = "runner_shared_prompt_sdpa"

Segment = tuple[int, int, int, int]  # (start, end, prefix start, prefix end); an empty prefix for a group start


def segments(position_ids: torch.Tensor) -> list[Segment]:
    """The segments of a row (see the module docstring), with the prompt each branch attends to."""
    pos = position_ids.reshape(-1)
    starts = [0]
    if pos.numel() > 1:
        starts += (torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1).tolist()
    ends = [*starts[1:], pos.numel()]
    first = pos[starts].tolist()
    out: list[Segment] = []
    group = 0
    for start, end, p in zip(starts, ends, first, strict=True):
        if p == 0:
            group = start
            out.append((start, end, start, start))
        elif p <= start - group:
            out.append((start, end, group, group + p))
        else:
            raise ValueError(
                f"positions {start}..{end} continue from position {p}, but their group holds only "
                f"{start - group} tokens before them"
            )
    return out


Branch = tuple[Segment, Any]  # a segment and the mask its branch attends with (None: plain causal)
_last: tuple[torch.Tensor, int, torch.device, list[Branch]] | None = None


def _branch_mask(segment: Segment, device: torch.device) -> Any:
    """The lower-right causal mask of a branch over ``[prompt keys, own keys]``. On the CPU torch
    materialises a `causal_lower_right` bias on every call (no fused kernel takes it there), so the
    same boolean mask is built here once per forward pass and shared by every layer; elsewhere the
    bias object goes to SDPA, which can run it fused."""
    start, end, prefix_start, prefix_end = segment
    if prefix_end == prefix_start:
        return None
    length, keys = end - start, prefix_end - prefix_start + end - start
    if device.type != "cpu":
        return causal_lower_right(length, keys)
    return torch.ones(length, keys, dtype=torch.bool, device=device).tril(diagonal=keys - length)


def _branches_for_layer(position_ids: torch.Tensor, device: torch.device) -> list[Branch]:
    """`segments` and their masks, worked out once per forward pass (every layer gets the same
    tensor), keyed on the tensor and its version counter as runner.train.attention does."""
    global _last
    if _last is not None and _last[0] is position_ids and _last[1] == position_ids._version and _last[2] == device:
        return _last[3]
    found = [(segment, _branch_mask(segment, device)) for segment in segments(position_ids)]
    _last = (position_ids, position_ids._version, device, found)
    return found


def shared_prompt_sdpa_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Same contract as transformers' `sdpa_attention_forward` (query (B, H, T, D) in, (B, T, H, D) out)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.get("position_ids")
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (
        attention_mask is not None
        or position_ids is None
        or query.shape[0] != 1
        or query.shape[2] != key.shape[2]
        or not causal
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    gqa = getattr(module, "num_key_value_groups", 1) > 1  # kv heads shared by several query heads
    parts = []
    for (start, end, prefix_start, prefix_end), mask in _branches_for_layer(position_ids, query.device):
        q = query[:, :, start:end]
        if mask is None:
            parts.append(
                F.scaled_dot_product_attention(
                    q,
                    key[:, :, start:end],
                    value[:, :, start:end],
                    dropout_p=dropout,
                    scale=scaling,
                    is_causal=True,
                    enable_gqa=gqa,
                )
            )
            continue
        k = torch.cat([key[:, :, prefix_start:prefix_end], key[:, :, start:end]], dim=2)
        v = torch.cat([value[:, :, prefix_start:prefix_end], value[:, :, start:end]], dim=2)
        parts.append(
            F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling, enable_gqa=gqa)
        )
    out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=2)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make `SHARED_PROMPT_SDPA` a valid `attn_implementation` (idempotent); its mask function is the
    packed one (no mask without padding or a cache offset)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    from runner.train.attention import packed_sdpa_mask

    AttentionInterface.register(SHARED_PROMPT_SDPA, shared_prompt_sdpa_forward)
    AttentionMaskInterface.register(SHARED_PROMPT_SDPA, packed_sdpa_mask)


def use_shared_prompt_sdpa(model: Any) -> bool:
    """Switch a model that runs SDPA to `SHARED_PROMPT_SDPA`; whether it switched (models on other
    kernels, or whose code does not go through the attention interface, keep theirs)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    setter(SHARED_PROMPT_SDPA)
    return config._attn_implementation == SHARED_PROMPT_SDPA
