"""Attention for padding-free (flattened) batches that costs what the sequences cost, not the row.

A flattened batch is one row of T tokens holding several sequences, with position ids restarting
at 0 for each. transformers 5 turns that into a dense T x T block-diagonal mask and hands it to
SDPA, which then computes every block, masked or not, and (on the CPU, with a mask) takes the
kernel that materialises the scores: for 8 alpaca examples of ~220 tokens that is ~6x the
attention work of the sequences alone (sum of T^2 per batch vs sum of L_i^2), plus a T x T score
buffer per head and layer kept for the backward pass.

`packed_sdpa` runs SDPA once per sequence with `is_causal=True` instead (the CPU flash kernel, no
mask, no score buffer); an encoder's bidirectional attention (a module with `is_causal` False, e.g.
BERT for padding-free embedding batches) runs per sequence the same way without the causal mask. transformers has the equivalent only for flash-attn (cu_seqlens from
position ids, CUDA); this is the same idea with torch's own SDPA, so it works on every device.
The result equals the dense masked computation to float rounding (tests/train/test_packed_attention.py).

It is registered under `PACKED_SDPA` and selected with `use_packed_sdpa(model)` for runs whose
batches are flattened. Anything else that reaches it (a padding mask, a kv-cache, a batch of
several rows) goes to transformers' own `sdpa` path, so the model stays correct for any input.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

PACKED_SDPA = "runner_packed_sdpa"


def sequence_bounds(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """(start, end) of each sequence in a flattened row: a new one starts wherever the position
    id does not continue the previous one (the rule transformers uses to detect packing)."""
    pos = position_ids.reshape(-1)
    starts = [0]
    if pos.numel() > 1:
        starts += (torch.nonzero(pos[1:] != pos[:-1] + 1).reshape(-1) + 1).tolist()
    ends = starts[1:] + [pos.numel()]
    return list(zip(starts, ends))


_last_bounds: tuple[torch.Tensor, int, list[tuple[int, int]]] | None = None


def _bounds_for_layer(position_ids: torch.Tensor) -> list[tuple[int, int]]:
    """`sequence_bounds`, computed once per forward pass rather than once per layer: every layer
    receives the same position-ids tensor, and reading the bounds to the host is a device sync on
    a GPU. Keyed on the tensor itself and its version counter, so a new or modified tensor is
    read again."""
    global _last_bounds
    if _last_bounds is not None and _last_bounds[0] is position_ids and _last_bounds[1] == position_ids._version:
        return _last_bounds[2]
    bounds = sequence_bounds(position_ids)
    _last_bounds = (position_ids, position_ids._version, bounds)
    return bounds


def packed_sdpa_forward(
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
    q_len, kv_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (attention_mask is not None or position_ids is None or query.shape[0] != 1 or q_len != kv_len
            or kwargs.get("position_bias") is not None or kwargs.get("softcap") is not None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1  # kv heads shared by several query heads
    bounds = _bounds_for_layer(position_ids)
    if len(bounds) == 1:
        out = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling, is_causal=causal,
                                             enable_gqa=gqa)
    else:
        out = torch.cat([
            F.scaled_dot_product_attention(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], dropout_p=dropout,
                                           scale=scaling, is_causal=causal, enable_gqa=gqa)
            for s, e in bounds
        ], dim=2)
    return out.transpose(1, 2).contiguous(), None


def packed_sdpa_mask(*args: Any, **kwargs: Any) -> torch.Tensor | None:
    """No mask when there is no padding and no cache offset (`packed_sdpa_forward` derives the
    sequences from the position ids); otherwise transformers' own SDPA mask."""
    from transformers.masking_utils import sdpa_mask

    no_padding = kwargs.get("attention_mask") is None
    no_offset = not kwargs.get("q_offset") and not kwargs.get("kv_offset")
    if no_padding and no_offset and kwargs.get("q_length") == kwargs.get("kv_length"):
        return None
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Make `PACKED_SDPA` a valid `attn_implementation` (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(PACKED_SDPA, packed_sdpa_forward)
    AttentionMaskInterface.register(PACKED_SDPA, packed_sdpa_mask)


def use_packed_sdpa(model: Any) -> bool:
    """Switch a model that runs SDPA to `PACKED_SDPA`; returns whether it switched.

    Only SDPA models switch (eager and flash-attn keep their own kernels; flash-attn already handles
    packed rows). A model whose modeling code does not go through transformers' attention interface
    keeps its attention, and the dense mask, which is slower but equally correct.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    register()
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    setter(PACKED_SDPA)
    return config._attn_implementation == PACKED_SDPA

