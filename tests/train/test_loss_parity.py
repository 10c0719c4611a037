"""The loss the runner trains on is the model's own causal-LM loss over response tokens only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainingArguments

from runner.data.causal import tokenize_conversation
from runner.data.collate import make_collator
from runner.train.trainers.causal import CausalTrainer

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "2 + 2 = 4."}],
    [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello! How can I help you today?"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
]


def _reference_loss(model: torch.nn.Module, examples: list[dict]) -> torch.Tensor:
    """Each sequence alone, float64 cross-entropy over its shifted response labels, token-averaged."""
    total, count = torch.zeros((), dtype=torch.float64), 0
    for example in examples:
        ids = torch.tensor([example["input_ids"]])
        labels = torch.tensor(example["labels"])
        logits = model(input_ids=ids).logits[0].double()
        target = labels[1:]
        mask = target != -100
        total = total + F.cross_entropy(logits[:-1][mask], target[mask], reduction="sum")
        count += int(mask.sum())
    return total / count


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_trainer_loss_equals_reference_and_hf_loss(tiny_model_dir: Path, tmp_path: Path, packing: bool) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
    model.config.use_cache = False
    model.eval()
    examples = [tokenize_conversation(tokenizer, conv, max_length=256) for conv in CONVERSATIONS]
    assert all(any(label != -100 for label in e["labels"]) for e in examples)
    batch = make_collator(tokenizer, packing=packing)(examples)
    trainer = CausalTrainer(
        model=model, args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    )

    with torch.no_grad():
        ours = trainer.compute_loss(model, dict(batch))
        hf = model(**batch).loss
        reference = _reference_loss(model, examples)
    assert abs(float(ours) - float(reference)) <= 1e-4
    assert abs(float(hf) - float(reference)) <= 1e-4
    # prompt tokens carry no loss: the response-only loss differs from the all-token loss
    all_tokens = [{**e, "labels": list(e["input_ids"])} for e in examples]
    with torch.no_grad():
        assert abs(float(_reference_loss(model, all_tokens)) - float(reference)) > 1e-3


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("count", [False, True], ids=["mean", "num_items_in_batch"])
def test_loss_positions_only_equals_the_stock_loss_and_gradients(
    tiny_model_dir: Path, tmp_path: Path, packing: bool, count: bool
) -> None:
    """The LM head applied only where a label counts gives the stock loss and the same gradients."""
    from runner.train.attention import use_packed_sdpa

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = [tokenize_conversation(tokenizer, conv, max_length=256) for conv in CONVERSATIONS]
    batch = make_collator(tokenizer, packing=packing)(examples)
    n_items = (batch["labels"][:, 1:] != -100).sum() if count else None
    results = []
    for fast in (False, True):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
        model.config.use_cache = False
        if fast and packing:
            use_packed_sdpa(model)
        trainer = CausalTrainer(
            model=model,
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
            loss_positions_only=fast,
        )
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=n_items)
        loss.backward()
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        results.append((float(loss.detach()), grads))
    assert abs(results[0][0] - results[1][0]) <= 1e-5
    assert (results[0][1] - results[1][1]).abs().max() <= 1e-5
    with torch.no_grad():
        assert abs(results[1][0] - float(_reference_loss(model.eval(), examples))) <= 1e-4


@pytest.mark.parametrize("budget", [1, 40, 10_000])
def test_micro_batches_give_the_batch_loss_and_gradients(tiny_model_dir: Path, tmp_path: Path, budget: int) -> None:
    """A packed batch cut into parts of at most `token_budget` tokens: same loss, same gradients."""
    from runner.train.attention import use_packed_sdpa

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    examples = [tokenize_conversation(tokenizer, conv, max_length=256) for conv in CONVERSATIONS]
    batch = make_collator(tokenizer, packing=True)(examples)
    n_items = (batch["labels"][:, 1:] != -100).sum()
    results = []
    for cut in (None, budget):
        model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), attn_implementation="sdpa")
        model.config.use_cache = False
        use_packed_sdpa(model)
        trainer = CausalTrainer(
            model=model,
            args=TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True),
            loss_positions_only=True,
            token_budget=cut,
        )
        parts = trainer.micro_batches(dict(batch), n_items)
        if cut == 1:
            assert len(parts) == len(examples)  # one part per sequence, none split
        loss = trainer.training_step(model, dict(batch), num_items_in_batch=n_items)
        grads = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
        results.append((float(loss), grads))
    assert abs(results[0][0] - results[1][0]) <= 1e-5
    assert (results[0][1] - results[1][1]).abs().max() <= 1e-5
