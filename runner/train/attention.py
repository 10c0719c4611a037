"""Attention for padding-free (flattened) batches that costs what the sequences cost, not the row.

A flattened batch is one row of T tokens holding several sequences, with position ids restarting
at 0 for each. transformers 5 turns that into a dense T x T block-diagonal mask and hands it to
SDPA, which then computes every block, masked or not, and (on the CPU, with a mask) takes the
kernel that materialises the scores: for 8 alpaca examples of ~220 tokens that is ~6x the
attention work of the sequences alone (sum of T^2 per batch vs sum of L_i^2), plus a T x T score
buffer per head and layer kept for the backward pass.

`packed_sdpa` runs SDPA once per sequence with `is_causal=True` instead (the CPU flash kernel, no
mask, no score buffer). An encoder's bidirectional attention (a module whose `is_causal` is False,
e.g. BERT for padding-free embedding batches) attends within each text too, but its many short
texts are grouped by length and each group padded for one call (`grouped_bidirectional`).
transformers has the equivalent only for flash-attn (cu_seqlens from position ids, CUDA);
this is the same idea with torch's own SDPA, so it works on every device. The result equals the
dense masked computation to float rounding (tests/train/test_packed_attention.py).

On a CUDA GPU with flash-attn installed, half-precision rows go to flash-attn's variable-length
kernel instead (`flash_varlen`: the same sequence bounds, as cumulative offsets; untimed, as this
machine has no GPU). It is registered under `PACKED_SDPA` and selected with `use_packed_sdpa(model)`
for runs whose batches are flattened. Anything else that reaches it (a padding mask, a kv-cache, a
batch of several rows) goes to transformers' own `sdpa` path, so the model stays correct for any
input.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    ends = [*starts[1:], pos.numel()]
    return list(zip(starts, ends, strict=True))


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
    if (
        attention_mask is not None
        or position_ids is None
        or query.shape[0] != 1
        or q_len != kv_len
        or kwargs.get("position_bias") is not None
        or kwargs.get("softcap") is not None
    ):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    gqa = getattr(module, "num_key_value_groups", 1) > 1  # kv heads shared by several query heads
    bounds = _bounds_for_layer(position_ids)
    if packed_kernel(query) == FLASH_VARLEN:
        return flash_varlen(query, key, value, bounds, causal=causal, dropout=dropout, scaling=scaling), None
    if len(bounds) == 1:
        out = F.scaled_dot_product_attention(
            query, key, value, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=gqa
        )
        return out.transpose(1, 2).contiguous(), None
    if not causal:  # an encoder's short texts: a few padded calls by length, not one call per text
        return grouped_bidirectional(query, key, value, bounds, dropout=dropout, scaling=scaling, gqa=gqa), None
    # split, not one slice per sequence: a slice's backward writes a zero-filled gradient of the whole
    # row and every sequence's gradients are added up (one full pass per sequence, for q, k and v);
    # split's backward is a single concatenation. The outputs are joined in (1, T, H, D), the layout
    # the caller wants, by one copy instead of a concatenation and a transposed copy.
    sizes = [e - s for s, e in bounds]
    return torch.cat(
        [
            F.scaled_dot_product_attention(
                q, k, v, dropout_p=dropout, scale=scaling, is_causal=causal, enable_gqa=gqa
            ).transpose(1, 2)
            for q, k, v in zip(
                query.split(sizes, dim=2), key.split(sizes, dim=2), value.split(sizes, dim=2), strict=True
            )
        ],
        dim=1,
    ), None


# A group's longest text is at most LENGTH_SPREAD times its shortest and at most LENGTH_SLACK tokens
# longer: short texts group widely (their attention is cheap next to the linear layers), long ones
# tightly (attention dominates them, and with dropout its probabilities are kept for the backward
# pass, so padding there costs memory as well as time).
LENGTH_SPREAD = 2.0
LENGTH_SLACK = 16


@dataclass(frozen=True)
class _GroupPlan:
    """Where every token goes, as two index vectors, so that laying the row out in padded groups and
    back costs one gather each way (and one scatter each way in the backward pass).

    `gather`: for every slot of every group's (texts x longest) layout, the groups one after the
    other, the row's token it holds. A padding slot holds the first token of the row: its key is
    masked and its query's output is never read, so its content does not matter and no gradient
    reaches it (tests/train/test_packed_attention.py). `back`: for every token of the row, its slot.
    """

    gather: torch.Tensor
    back: torch.Tensor
    shapes: tuple[tuple[int, int], ...]  # (texts, longest) of each group
    keys: tuple[torch.Tensor, ...]  # (texts, 1, 1, longest) bool of each group: a real token, to attend to


def length_groups(sizes: list[int], spread: float = LENGTH_SPREAD, slack: int = LENGTH_SLACK) -> list[list[int]]:
    """Indices of the texts of a packed row, grouped for one padded attention call per group:
    sorted by length, a new group starts where a text is longer than `spread` times the group's
    shortest or more than `slack` tokens longer. A group's padded score cells are then at most
    min(spread, 1 + slack / shortest)^2 times its texts' own."""
    groups: list[list[int]] = []
    for i in sorted(range(len(sizes)), key=lambda i: sizes[i]):
        shortest = sizes[groups[-1][0]] if groups else 0
        if groups and sizes[i] <= min(spread * max(shortest, 1), shortest + slack):
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _group_plan(bounds: list[tuple[int, int]], device: torch.device) -> _GroupPlan:
    gather, back = [], torch.empty(bounds[-1][1], dtype=torch.long)
    shapes, keys = [], []
    offset = 0
    for members in length_groups([end - start for start, end in bounds]):
        longest = max(bounds[i][1] - bounds[i][0] for i in members)
        slots = torch.zeros(len(members), longest, dtype=torch.long)  # padding: the row's first token
        for j, i in enumerate(members):
            start, end = bounds[i]
            slots[j, : end - start] = torch.arange(start, end)
            back[start:end] = offset + j * longest + torch.arange(end - start)
        lengths = torch.tensor([bounds[i][1] - bounds[i][0] for i in members])
        keys.append(((torch.arange(longest)[None] < lengths[:, None])[:, None, None, :]).to(device))
        gather.append(slots.reshape(-1))
        shapes.append((len(members), longest))
        offset += len(members) * longest
    return _GroupPlan(torch.cat(gather).to(device), back.to(device), tuple(shapes), tuple(keys))


_last_plan: tuple[list[tuple[int, int]], _GroupPlan] | None = None


def _plan_for_layer(bounds: list[tuple[int, int]], device: torch.device) -> _GroupPlan:
    """`_group_plan`, once per forward pass: every layer gets the same bounds list."""
    global _last_plan
    if _last_plan is None or _last_plan[0] is not bounds:
        _last_plan = (bounds, _group_plan(bounds, device))
    return _last_plan[1]


def grouped_bidirectional(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: list[tuple[int, int]],
    *,
    dropout: float,
    scaling: float | None,
    gqa: bool,
) -> torch.Tensor:
    """Bidirectional attention within each text of a packed row: (1, H, T, D) in, (1, T, H, D) out.

    The texts of an embedding batch are short and many (64 STS-B sentences of ~12 tokens), and an
    encoder trains with attention dropout, which sends SDPA to its unfused kernel; one call per text
    then costs a few dozen small operators per text and layer, more than the attention itself. So
    the texts are grouped by length (`length_groups`) and each group is padded to its longest text
    for one SDPA call with a key mask, the padding confined to attention (the linear layers stay
    padding-free). Without dropout the result equals one call per text to float rounding
    (tests/train/test_packed_attention.py); with dropout the masks are drawn per group instead of
    per text, from the same distribution."""
    plan = _plan_for_layer(bounds, query.device)
    sizes = [texts * longest for texts, longest in plan.shapes]
    # (T, H, D) views of (1, H, T, D) -> every group's padded slots in one gather -> per group views
    laid_out = [t[0].transpose(0, 1).index_select(0, plan.gather).split(sizes) for t in (query, key, value)]
    outs = []
    for (texts, longest), keys, q, k, v in zip(plan.shapes, plan.keys, *laid_out, strict=True):
        q, k, v = (t.view(texts, longest, t.shape[1], t.shape[2]).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=dropout, scale=scaling, enable_gqa=gqa)
        outs.append(out.transpose(1, 2).reshape(texts * longest, out.shape[1], out.shape[3]))
    joined = torch.cat(outs) if len(outs) > 1 else outs[0]
    return joined.index_select(0, plan.back)[None]


FLASH_VARLEN = "flash-attn varlen"
PER_SEQUENCE_SDPA = "sdpa per sequence"


def packed_kernel(query: torch.Tensor, flash_importable: bool | None = None) -> str:
    """The kernel a packed row's attention runs on: flash-attn's variable-length kernel for fp16 /
    bf16 tensors on a CUDA GPU when flash-attn is installed (one call for every sequence of the
    row), else SDPA once per sequence (every device and dtype)."""
    if not query.is_cuda or query.dtype not in (torch.float16, torch.bfloat16):
        return PER_SEQUENCE_SDPA
    if flash_importable is None:
        flash_importable = _flash_attn_importable()
    return FLASH_VARLEN if flash_importable else PER_SEQUENCE_SDPA


def _flash_attn_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def cu_seqlens(bounds: list[tuple[int, int]], device: torch.device | str = "cpu") -> tuple[torch.Tensor, int]:
    """flash-attn's cumulative sequence starts ([0, end_1, ..., end_n], int32) and the longest sequence."""
    ends = [0] + [end for _, end in bounds]
    return torch.tensor(ends, dtype=torch.int32, device=device), max(end - start for start, end in bounds)


def flash_varlen(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    bounds: list[tuple[int, int]],
    *,
    causal: bool,
    dropout: float,
    scaling: float | None,
) -> torch.Tensor:
    """Attention within each sequence of a packed row with flash-attn's `flash_attn_varlen_func`
    (same bounds as the SDPA path): (1, H, T, D) in, (1, T, H, D) out. GQA needs no repeated kv
    heads: flash-attn shares them itself."""
    from flash_attn import flash_attn_varlen_func

    starts, longest = cu_seqlens(bounds, query.device)
    out = flash_attn_varlen_func(
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        starts,
        starts,
        longest,
        longest,
        dropout_p=dropout,
        softmax_scale=scaling,
        causal=causal,
    )
    return out[None]


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
    """Switch a model that runs SDPA or flash-attn to `PACKED_SDPA`; returns whether it switched.

    SDPA and flash-attention 2 models switch: the packed path then picks its kernel per call
    (`packed_kernel`: flash-attn's varlen kernel for half-precision CUDA tensors, SDPA per sequence
    otherwise) from the same sequence bounds. Eager attention keeps its own kernel. A model whose
    modeling code does not go through transformers' attention interface keeps its attention, and
    the dense mask, which is slower but equally correct.
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "_attn_implementation", None) not in ("sdpa", "flash_attention_2"):
        return False
    register()
    setter = getattr(model, "set_attn_implementation", None)
    if setter is None or not getattr(model, "_can_set_attn_implementation", lambda: False)():
        return False
    setter(PACKED_SDPA)
    return config._attn_implementation == PACKED_SDPA
