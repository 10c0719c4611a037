"""Tiny causal LMs saved as model folders (config + safetensors + tokenizer), built offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data.helpers import make_tokenizer


def save_tiny_causal_lm(
    folder: Path,
    *,
    family: str = "llama",
    seed: int = 0,
    tie_word_embeddings: bool = True,
    before_save: Callable[[Any, Any], None] | None = None,
) -> Path:
    """A 2-layer, 64-wide model with a byte-level BPE tokenizer and a ChatML template;
    `before_save(model, tokenizer)` may edit the weights before they are written."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    tokenizer = make_tokenizer()
    common: dict[str, Any] = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=tie_word_embeddings,
    )
    config = LlamaConfig(**common) if family == "llama" else Qwen2Config(**common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")
    if before_save is not None:
        before_save(model, tokenizer)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
