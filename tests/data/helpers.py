"""Helpers for the data tests: tiny tokenizers trained on the fly (no network), file writers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# SmolLM2-135M-Instruct's template, verbatim: ChatML with a default system prompt and
# no {% generation %} markers, so transformers' assistant mask is all zeros for it.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face",
    "system user assistant tool",
    "What is the capital of France? The capital of France is Paris.",
    "Describe a process of making crepes. Mix flour, eggs and milk, then cook thin layers.",
    "Hello! I am a small assistant. How can I help you today?",
    "Translate to French: good morning. Bonjour.",
    "The quick brown fox jumps over the lazy dog. 1 2 3 4 5 6 7 8 9 10",
    '{"name": "search_recipes", "arguments": {"ingredients": ["chicken", "rice"]}}',
]
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]


def make_tokenizer(chat_template: str | None = SMOLLM2_TEMPLATE) -> Any:
    """A byte-level BPE (like SmolLM2's and Qwen2's) trained on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|im_end|>", pad_token="<pad>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")
    return path


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path
