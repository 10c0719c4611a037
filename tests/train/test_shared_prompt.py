"""Chosen and rejected replies in one padding-free row, the prompt computed once: the same
log-probabilities (within 1e-4) and the same gradients as each prompt + reply computed alone, for
Llama and Qwen2 layers, with and without a LoRA adapter; the reference with the adapter switched off
gives the base model's log-probabilities exactly."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from runner.data.preference_collate import PreferenceCollator, pack_groups, split_by_budget
from runner.train.reference import AdapterOff, reply_logps
from runner.train.shared_prompt import SHARED_PROMPT_SDPA, segments, use_shared_prompt_sdpa

# (prompt, chosen, rejected) token ids: prompts of different lengths, replies of different lengths
PAIRS = [
    ([5, 17, 33, 2, 9, 41], [7, 7, 8, 100], [12, 250, 3]),
    ([1, 2], [60, 61, 62, 63, 64, 65, 66], [9]),
    ([80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90], [14, 15], [16, 17, 18, 19, 20]),
]


def tiny(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
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


def alone_logps(model: torch.nn.Module) -> torch.Tensor:
    """Each prompt + reply as its own batch of one, the reply's token log-probabilities summed."""
    out = []
    for prompt, *replies in PAIRS:
        for reply in replies:
            ids = torch.tensor([prompt + reply])
            logps = model(input_ids=ids).logits[0, :-1].float().log_softmax(-1)
            targets = ids[0, 1:]
            token = logps.gather(1, targets[:, None])[:, 0]
            out.append(token[len(prompt) - 1 :].sum())
    return torch.stack(out)


def packed_row(shared: bool) -> dict[str, torch.Tensor]:
    return pack_groups([(p, (c, r)) for p, c, r in PAIRS], shared_prompt=shared)


def test_the_shared_layout_repeats_no_prompt_and_branches_the_rejected_reply_from_it() -> None:
    row = packed_row(shared=True)
    (p0, c0, r0), (_p1, _c1, _r1), _ = PAIRS
    assert row["input_ids"][0, : len(p0) + len(c0) + len(r0)].tolist() == p0 + c0 + r0
    assert row["position_ids"][0, :13].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 6, 7, 8]
    assert segments(row["position_ids"])[:3] == [(0, 10, 0, 0), (10, 13, 0, 6), (13, 22, 13, 13)]
    # the last prompt token predicts the first token of both replies
    assert row["logit_index"][0, [0, len(c0)]].tolist() == [5, 5]
    assert row["targets"][: len(c0) + len(r0)].tolist() == c0 + r0
    assert row["reply_tokens"].tolist() == [4, 3, 7, 1, 2, 5]
    plain = packed_row(shared=False)
    assert plain["input_ids"].shape[1] == row["input_ids"].shape[1] + sum(len(p) for p, _, _ in PAIRS)
    assert torch.equal(plain["targets"], row["targets"]) and torch.equal(plain["reply_index"], row["reply_index"])


def test_a_branch_longer_than_its_group_is_refused() -> None:
    with pytest.raises(ValueError, match="continue from position 5"):
        segments(torch.tensor([[0, 1, 2, 5, 6]]))


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
@pytest.mark.parametrize("shared", [True, False])
def test_packed_reply_logps_equal_each_sequence_alone(kind: str, shared: bool) -> None:
    model = tiny(kind)
    with torch.no_grad():
        expected = alone_logps(model)
        assert use_shared_prompt_sdpa(model) and model.config._attn_implementation == SHARED_PROMPT_SDPA
        got = reply_logps(model, packed_row(shared))
    assert got.shape == (6,)
    assert (got - expected).abs().max() < 1e-4


def _grads(model: torch.nn.Module, logps: torch.Tensor) -> dict[str, torch.Tensor]:
    weights = torch.tensor([1.0, -1.0, 0.5, -2.0, 0.25, -0.75])  # a DPO-like mix of chosen and rejected
    model.zero_grad()
    (logps * weights).sum().backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_gradients_of_the_shared_prompt_row_equal_the_per_pair_computation(kind: str) -> None:
    plain = tiny(kind).train()
    expected = _grads(plain, alone_logps(plain))
    shared = tiny(kind).train()
    assert use_shared_prompt_sdpa(shared)
    got = _grads(shared, reply_logps(shared, packed_row(shared=True)))
    assert expected.keys() == got.keys()
    for name in expected:
        scale = expected[name].abs().max().clamp(min=1e-3)
        assert (got[name] - expected[name]).abs().max() / scale < 1e-4, name


def test_gradients_reach_a_lora_adapter_through_the_shared_prompt_as_through_the_plain_rows() -> None:
    from peft import LoraConfig, get_peft_model

    grads = []
    for shared in (False, True):
        model = tiny("llama")
        use_shared_prompt_sdpa(model)
        peft = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.0, init_lora_weights=False)
        )
        grads.append(_grads(peft, reply_logps(peft, packed_row(shared))))
    assert grads[0].keys() == grads[1].keys() and all("lora_" in n for n in grads[0])
    for name in grads[0]:
        scale = grads[0][name].abs().max().clamp(min=1e-3)
        assert (grads[0][name] - grads[1][name]).abs().max() / scale < 1e-4, name


def test_the_reference_with_the_adapter_switched_off_is_exactly_the_base_model() -> None:
    from peft import LoraConfig, get_peft_model

    model = tiny("llama")
    use_shared_prompt_sdpa(model)
    row = packed_row(shared=True)
    with torch.no_grad():
        base = reply_logps(model, row)
    # non-zero LoRA weights from the start, so the adapted model really differs from its base
    peft = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", lora_dropout=0.1, init_lora_weights=False)
    )
    peft.train()
    with torch.no_grad():
        adapted = reply_logps(peft, row)
    reference = AdapterOff()(peft, row)
    assert (adapted - base).abs().max() > 1e-3
    assert torch.equal(reference, base)
    assert not reference.requires_grad


def test_a_batch_is_cut_between_pairs_within_the_token_budget() -> None:
    features = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PAIRS]
    sizes = [len(p) + len(c) + len(r) for p, c, r in PAIRS]  # 13, 10, 18
    assert [len(part) for part in split_by_budget(features, 24, shared_prompt=True)] == [2, 1]
    assert [len(part) for part in split_by_budget(features, 5, shared_prompt=True)] == [1, 1, 1]
    assert split_by_budget(features, None, shared_prompt=True) == [features]
    batch = PreferenceCollator(shared_prompt=True, token_budget=24)(features)
    assert [p["policy"]["input_ids"].shape[1] for p in batch["parts"]] == [sizes[0] + sizes[1], sizes[2]]
    assert int(batch["items"]) == 3 and int(batch["chosen_tokens"]) == 4 + 7 + 2
    # throughput counts the pairs as separate sequences, whatever the layout
    assert sum(int(p["tokens"]) for p in batch["parts"]) == sum(2 * len(p) + len(c) + len(r) for p, c, r in PAIRS)


def test_a_branch_mask_built_once_per_pass_is_torchs_lower_right_causal_mask() -> None:
    from torch.nn.attention.bias import causal_lower_right

    from runner.train.shared_prompt import _branch_mask, _branches_for_layer

    row = packed_row(shared=True)
    branches = _branches_for_layer(row["position_ids"], torch.device("cpu"))
    assert [s for s, _ in branches] == segments(row["position_ids"])
    assert _branches_for_layer(row["position_ids"], torch.device("cpu")) is branches  # every layer: the same masks
    for (start, end, prefix_start, prefix_end), mask in branches:
        if prefix_end == prefix_start:
            assert mask is None
            continue
        keys = prefix_end - prefix_start + end - start
        assert torch.equal(mask, causal_lower_right(end - start, keys)._materialize(torch.device("cpu")))
    assert _branch_mask((10, 13, 0, 6), torch.device("cpu"))[0].tolist() == [True] * 7 + [False] * 2
