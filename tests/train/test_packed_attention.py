"""Per-sequence attention on flattened batches equals the dense block-diagonal mask, and each
sequence alone; anything that is not a flattened batch is left to transformers' SDPA."""

from __future__ import annotations

import itertools
import sys
import types

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from runner.train.attention import (
    FLASH_VARLEN,
    PACKED_SDPA,
    PER_SEQUENCE_SDPA,
    cu_seqlens,
    grouped_bidirectional,
    length_groups,
    packed_kernel,
    sequence_bounds,
    use_packed_sdpa,
)

LENGTHS = [5, 17, 1, 9]


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    size = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    config = LlamaConfig(**size) if kind == "llama" else Qwen2Config(**size)
    cls = LlamaForCausalLM if kind == "llama" else Qwen2ForCausalLM
    model = cls._from_config(config, attn_implementation="sdpa").eval()
    model.config.use_cache = False
    return model


def flattened() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    ids = torch.randint(0, 300, (1, sum(LENGTHS)))
    positions = torch.cat([torch.arange(n) for n in LENGTHS])[None]
    return ids, positions


def test_sequence_bounds_follow_position_restarts() -> None:
    _, positions = flattened()
    assert sequence_bounds(positions) == [(0, 5), (5, 22), (22, 23), (23, 32)]
    assert sequence_bounds(torch.arange(7)[None]) == [(0, 7)]


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_equals_dense_mask_and_each_sequence_alone(kind: str) -> None:
    model = tiny(kind)
    ids, positions = flattened()
    with torch.no_grad():
        dense = model(input_ids=ids, position_ids=positions).logits
        assert use_packed_sdpa(model) and model.config._attn_implementation == PACKED_SDPA
        packed = model(input_ids=ids, position_ids=positions).logits
        alone, start = [], 0
        for n in LENGTHS:
            alone.append(model(input_ids=ids[:, start : start + n]).logits)
            start += n
    assert (packed - dense).abs().max() < 1e-5
    assert (packed - torch.cat(alone, dim=1)).abs().max() < 1e-5


def test_gradients_match_the_dense_mask() -> None:
    ids, positions = flattened()
    grads = []
    for packed in (False, True):
        model = tiny("llama").train()
        if packed:
            use_packed_sdpa(model)
        model(input_ids=ids, position_ids=positions, labels=ids).loss.backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None]))
    assert (grads[0] - grads[1]).abs().max() < 1e-5


def test_padded_batches_still_use_their_mask() -> None:
    model = tiny("llama")
    use_packed_sdpa(model)
    torch.manual_seed(2)
    ids = torch.randint(0, 300, (2, 10))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    with torch.no_grad():
        batch = model(input_ids=ids, attention_mask=mask).logits
        alone = model(input_ids=ids[1:, :6]).logits
    assert (batch[1, :6] - alone[0]).abs().max() < 1e-5


def test_eager_models_are_left_alone() -> None:
    model = LlamaForCausalLM._from_config(
        LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2),
        attn_implementation="eager",
    )
    assert not use_packed_sdpa(model)
    assert model.config._attn_implementation == "eager"


# --- the GPU kernel choice (no GPU here: the selection and the plumbing are what can be tested) ---


class _CudaLike:
    """Stands in for a CUDA tensor in `packed_kernel`'s checks (device and dtype only)."""

    def __init__(self, dtype: torch.dtype, cuda: bool = True) -> None:
        self.is_cuda, self.dtype = cuda, dtype


def test_flash_varlen_is_chosen_only_for_half_precision_cuda_rows_with_flash_attn_installed() -> None:
    assert packed_kernel(_CudaLike(torch.bfloat16), flash_importable=True) == FLASH_VARLEN
    assert packed_kernel(_CudaLike(torch.float16), flash_importable=True) == FLASH_VARLEN
    assert packed_kernel(_CudaLike(torch.float32), flash_importable=True) == PER_SEQUENCE_SDPA  # flash-attn: no fp32
    assert packed_kernel(_CudaLike(torch.bfloat16), flash_importable=False) == PER_SEQUENCE_SDPA
    assert packed_kernel(_CudaLike(torch.bfloat16, cuda=False), flash_importable=True) == PER_SEQUENCE_SDPA
    assert packed_kernel(torch.zeros(1, dtype=torch.bfloat16)) == PER_SEQUENCE_SDPA  # a CPU tensor


def test_cu_seqlens_are_the_sequence_bounds_as_cumulative_offsets() -> None:
    _, positions = flattened()
    starts, longest = cu_seqlens(sequence_bounds(positions))
    assert starts.dtype == torch.int32 and starts.tolist() == [0, 5, 22, 23, 32] and longest == 17


def _fake_flash_attn() -> types.ModuleType:
    """flash-attn's `flash_attn_varlen_func` contract ((T, H, D) tensors, cumulative offsets, GQA by
    head count), computed with SDPA per sequence: checks the layout the runner hands it."""

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, dropout_p=0.0, softmax_scale=None, causal=False):
        assert q.dim() == 3 and cu_q.dtype == torch.int32 and torch.equal(cu_q, cu_k) and max_q == max_k
        ends = cu_q.tolist()
        assert max_q == max(b - a for a, b in itertools.pairwise(ends))
        outs = []
        for a, b in itertools.pairwise(ends):
            outs.append(
                F.scaled_dot_product_attention(
                    q[a:b].transpose(0, 1),
                    k[a:b].transpose(0, 1),
                    v[a:b].transpose(0, 1),
                    scale=softmax_scale,
                    is_causal=causal,
                    enable_gqa=k.shape[1] != q.shape[1],
                ).transpose(0, 1)
            )
        return torch.cat(outs)

    module = types.ModuleType("flash_attn")
    module.flash_attn_varlen_func = flash_attn_varlen_func  # type: ignore[attr-defined]
    return module


def test_the_flash_varlen_path_gives_what_the_per_sequence_sdpa_path_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    import runner.train.attention as attention

    model = tiny("llama")
    ids, positions = flattened()
    assert use_packed_sdpa(model)
    with torch.no_grad():
        per_sequence = model(input_ids=ids, position_ids=positions).logits
        monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn())
        monkeypatch.setattr(attention, "packed_kernel", lambda query, flash_importable=None: FLASH_VARLEN)
        varlen = model(input_ids=ids, position_ids=positions).logits
    assert (varlen - per_sequence).abs().max() < 1e-5


def test_flash_attention_models_switch_to_the_packed_path_and_pick_the_kernel_per_call() -> None:
    model = tiny("llama")
    model.config._attn_implementation = "flash_attention_2"  # as choose_device sets it on a GPU with flash-attn
    assert use_packed_sdpa(model) and model.config._attn_implementation == PACKED_SDPA


def test_length_groups_hold_every_text_once_short_ones_within_twice_the_shortest_long_ones_within_16_tokens() -> None:
    sizes = [12, 3, 40, 7, 6, 25, 1, 13, 64, 2, 300, 290, 330, 318, 512]
    groups = length_groups(sizes)
    assert sorted(i for g in groups for i in g) == list(range(len(sizes)))
    for group in groups:
        lengths = [sizes[i] for i in group]
        assert max(lengths) <= 2 * min(lengths) and max(lengths) <= min(lengths) + 16
    # sorted by length, cut past twice the shortest (short texts) or 16 tokens more (long ones)
    assert groups == [[6, 9], [1, 4], [3, 0, 7], [5, 2], [8], [11, 10], [13, 12], [14]]
    assert length_groups([5, 5, 5]) == [[0, 1, 2]]


@pytest.mark.parametrize("gqa", [False, True])
def test_grouped_bidirectional_attention_equals_one_call_per_text_with_its_gradients(gqa: bool) -> None:
    torch.manual_seed(3)
    sizes = [12, 3, 40, 7, 6, 25, 1, 13]  # several length groups, texts out of length order
    total, heads, kv_heads, dim = sum(sizes), 4, (2 if gqa else 4), 8
    q = torch.randn(1, heads, total, dim, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, kv_heads, total, dim, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, kv_heads, total, dim, dtype=torch.float64, requires_grad=True)
    bounds = sequence_bounds(torch.cat([torch.arange(n) for n in sizes])[None])
    grouped = grouped_bidirectional(q, k, v, bounds, dropout=0.0, scaling=0.3, gqa=gqa)
    alone = torch.cat(
        [
            F.scaled_dot_product_attention(
                q[:, :, s:e], k[:, :, s:e], v[:, :, s:e], scale=0.3, enable_gqa=gqa
            ).transpose(1, 2)
            for s, e in bounds
        ],
        dim=1,
    )
    assert grouped.shape == alone.shape == (1, total, heads, dim)
    torch.testing.assert_close(grouped, alone, atol=1e-12, rtol=1e-10)
    weights = torch.randn_like(alone)
    first = torch.autograd.grad((grouped * weights).sum(), (q, k, v))
    second = torch.autograd.grad((alone * weights).sum(), (q, k, v))
    for a, b in zip(first, second, strict=True):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


def test_grouped_attention_with_dropout_keeps_each_text_to_itself() -> None:
    """Dropout draws its masks per group; a text's output still depends on no other text."""
    torch.manual_seed(4)
    sizes = [5, 9, 4]
    q, k, v = (torch.randn(1, 2, sum(sizes), 8, requires_grad=True) for _ in range(3))
    bounds = sequence_bounds(torch.cat([torch.arange(n) for n in sizes])[None])
    out = grouped_bidirectional(q, k, v, bounds, dropout=0.5, scaling=None, gqa=False)
    (grad_v,) = torch.autograd.grad(out[0, 5:14].sum(), (v,))  # the second text's outputs
    assert grad_v[0, :, :5].abs().sum() == 0 and grad_v[0, :, 14:].abs().sum() == 0
    assert grad_v[0, :, 5:14].abs().sum() > 0
