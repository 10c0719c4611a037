"""Per-sequence attention on flattened batches equals the dense block-diagonal mask, and each
sequence alone; anything that is not a flattened batch is left to transformers' SDPA."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from runner.train.attention import PACKED_SDPA, sequence_bounds, use_packed_sdpa

LENGTHS = [5, 17, 1, 9]


def tiny(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    size = dict(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512)
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
            alone.append(model(input_ids=ids[:, start:start + n]).logits)
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
    model = LlamaForCausalLM._from_config(LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32,
                                                      num_hidden_layers=1, num_attention_heads=2),
                                          attn_implementation="eager")
    assert not use_packed_sdpa(model)
    assert model.config._attn_implementation == "eager"
