"""Batching: padding, padding-free packing, and proof that packing changes nothing for the model."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from runner.data import (
    IGNORE_INDEX,
    EmptyBatchError,
    PackingCollator,
    PadCollator,
    length_grouped_order,
    make_collator,
    tokenize_conversation,
)

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Bonjour."}],
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "Translate to French: good morning"},
        {"role": "assistant", "content": "Bonjour."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Describe a process of making crepes."},
        {"role": "assistant", "content": "Mix flour, eggs and milk, then cook thin layers."},
    ],
]


@pytest.fixture(scope="module")
def examples(tokenizer: Any) -> list[dict[str, list[int]]]:
    out = [tokenize_conversation(tokenizer, c, max_length=256) for c in CONVERSATIONS]
    assert len({len(e["input_ids"]) for e in out}) == 3  # three different lengths
    return out


def tiny_model(kind: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    size = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**size, attn_implementation="sdpa"))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**size, attn_implementation="sdpa"))
    return model.eval()


def alone(model: torch.nn.Module, example: dict[str, list[int]]) -> Any:
    return model(
        input_ids=torch.tensor([example["input_ids"]]), labels=torch.tensor([example["labels"]]), use_cache=False
    )


def n_trainable(example: dict[str, list[int]]) -> int:
    return sum(1 for label in example["labels"][1:] if label != IGNORE_INDEX)


# --- collators ---------------------------------------------------------------------------


def test_pad_collator_pads_right_and_masks_the_padding(examples: list[dict[str, list[int]]]) -> None:
    batch = PadCollator(pad_token_id=3)(examples)
    longest = max(len(e["input_ids"]) for e in examples)
    assert batch["input_ids"].shape == (3, longest)
    for row, e in enumerate(examples):
        n = len(e["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == e["input_ids"]
        assert batch["labels"][row, :n].tolist() == e["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (longest - n)
        assert (batch["input_ids"][row, n:] == 3).all() and (batch["labels"][row, n:] == IGNORE_INDEX).all()
    assert PadCollator(pad_token_id=3, pad_to_multiple_of=64)(examples)["input_ids"].shape[1] % 64 == 0


def test_packing_collator_makes_one_row_with_restarting_positions(examples: list[dict[str, list[int]]]) -> None:
    batch = PackingCollator()(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert batch["input_ids"].shape == (1, sum(lengths)) and "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [i for n in lengths for i in range(n)]
    starts = [sum(lengths[:k]) for k in range(3)]
    # the first token of each sequence has no target: nothing learns to predict across a boundary
    assert [batch["labels"][0, s].item() for s in starts] == [IGNORE_INDEX] * 3
    assert batch["labels"][0].tolist() == [x for e in examples for x in [IGNORE_INDEX, *e["labels"][1:]]]


def test_make_collator_picks_by_packing_and_uses_the_tokenizer_pad_id(tokenizer: Any) -> None:
    assert isinstance(make_collator(tokenizer, packing=True), PackingCollator)
    collator = make_collator(tokenizer, packing=False)
    assert isinstance(collator, PadCollator) and collator.pad_token_id == tokenizer.pad_token_id


@pytest.mark.parametrize("collator", [PadCollator(pad_token_id=0), PackingCollator()])
def test_a_batch_without_trainable_tokens_is_a_clear_error(collator: Any) -> None:
    features = [{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX] * 3}, {"input_ids": [5], "labels": [5]}]
    with pytest.raises(EmptyBatchError, match="no trainable tokens"):
        collator(features)


def test_length_grouped_order_is_a_permutation_of_similar_length_batches() -> None:
    lengths = [5, 50, 6, 49, 7, 48, 8, 47]
    order = length_grouped_order(lengths, batch_size=2, seed=0)
    assert sorted(order) == list(range(8))
    batches = [order[i : i + 2] for i in range(0, 8, 2)]
    assert all(abs(lengths[a] - lengths[b]) <= 1 for a, b in batches)
    assert order == length_grouped_order(lengths, batch_size=2, seed=0)


# --- the model sees the same thing packed or alone ---------------------------------------


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_packed_logits_and_loss_match_each_sequence_alone(
    kind: str, tokenizer: Any, examples: list[dict[str, list[int]]]
) -> None:
    model = tiny_model(kind, len(tokenizer))
    batch = PackingCollator()(examples)
    with torch.no_grad():
        # use_cache=False is required: with a cache, attention leaks across packed sequences
        packed = model(**batch, use_cache=False)
        singles = [alone(model, e) for e in examples]

    start = 0
    for e, single in zip(examples, singles, strict=True):
        n = len(e["input_ids"])
        delta = (packed.logits[0, start : start + n] - single.logits[0]).abs().max().item()
        assert delta <= 1e-4, f"sequence of {n} tokens differs by {delta} when packed"
        start += n

    # what Trainer does (TrainingArguments.use_cache=False) is equivalent
    model.config.use_cache = False
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, packed.logits)

    weights = [n_trainable(e) for e in examples]
    weighted_mean = sum(s.loss.item() * w for s, w in zip(singles, weights, strict=True)) / sum(weights)
    assert packed.loss.item() == pytest.approx(weighted_mean, abs=1e-4)


def test_padded_logits_match_each_sequence_alone(tokenizer: Any, examples: list[dict[str, list[int]]]) -> None:
    model = tiny_model("llama", len(tokenizer))
    batch = PadCollator(pad_token_id=tokenizer.pad_token_id)(examples)
    with torch.no_grad():
        padded = model(**batch, use_cache=False)
        for row, e in enumerate(examples):
            n = len(e["input_ids"])
            assert (padded.logits[row, :n] - alone(model, e).logits[0]).abs().max().item() <= 1e-4
