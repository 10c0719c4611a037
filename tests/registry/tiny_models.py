"""Tiny models built offline for the registry tests: a safetensors folder, a GGUF file, a Hub cache."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

CHAT_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"


def save_tiny_model(folder: Path, *, seed: int = 0) -> Path:
    """A 1-layer, 16-wide llama with a word-level tokenizer, written by save_pretrained (safetensors)."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    words = ["[UNK]", "[PAD]", "</s>", "hello", "world", "the", "model", "is", "tiny", "."]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>"
    )
    config = LlamaConfig(
        vocab_size=len(words),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=1,
        eos_token_id=2,
        bos_token_id=2,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _byte_level_alphabet() -> list[str]:
    """GPT-2's bytes -> printable characters table (the base vocabulary of a 'gpt2' GGUF tokenizer)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = list(keep), 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def write_tiny_gguf(path: Path, *, seed: int = 0) -> Path:
    """A 2-layer llama GGUF (Q8_0 matrices, F32 norms) with a byte-level BPE tokenizer and a chat template.

    Same layout as SmolLM2's file (tied embeddings, 'gpt2' tokenizer), 100 KB, loads in about a second.
    """
    import gguf

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = ["Ġ t", "h e", "Ġt he", "i n"]
    tokens = specials + _byte_level_alphabet() + ["Ġt", "he", "Ġthe", "in"]
    d, ff, layers, heads, kv_heads = 64, 128, 2, 4, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-test")
    writer.add_block_count(layers)
    writer.add_context_length(128)
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(len(tokens))
    writer.add_rope_dimension_count(d // heads)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(specials) + [1] * (len(tokens) - len(specials)))
    writer.add_token_merges(merges)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)
    rng = np.random.default_rng(seed)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def tensor(name: str, shape: tuple[int, ...], quantize: bool = True) -> None:
        data = (rng.standard_normal(shape) * 0.05).astype(np.float32)
        if quantize:
            writer.add_tensor(name, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, data)

    tensor("token_embd.weight", (len(tokens), d))
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", (d,), quantize=False)
        tensor(f"blk.{i}.ffn_norm.weight", (d,), quantize=False)
        tensor(f"blk.{i}.attn_q.weight", (d, d))
        tensor(f"blk.{i}.attn_k.weight", (kv_heads * d // heads, d))
        tensor(f"blk.{i}.attn_v.weight", (kv_heads * d // heads, d))
        tensor(f"blk.{i}.attn_output.weight", (d, d))
        tensor(f"blk.{i}.ffn_gate.weight", (ff, d))
        tensor(f"blk.{i}.ffn_up.weight", (ff, d))
        tensor(f"blk.{i}.ffn_down.weight", (d, ff))
    tensor("output_norm.weight", (d,), quantize=False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def add_to_hub_cache(
    cache: Path,
    repo_id: str,
    files: dict[str, Path | bytes],
    commit: str,
    refs: tuple[str, ...] = ("main",),
    listing: dict[str, int] | None = None,
) -> Path:
    """Lay out files the way huggingface_hub caches a download: blobs/, snapshots/<commit>/ symlinks, refs/.

    ``listing`` (name -> size) also writes the tree listing snapshot_download caches after listing a repo.
    """
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = storage / "snapshots" / commit
    for rel, content in files.items():
        data = content if isinstance(content, bytes) else Path(content).read_bytes()
        blob = storage / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    for ref in refs:
        (storage / "refs" / ref).write_text(commit)
    if listing is not None:
        import json

        trees = storage / "trees"
        trees.mkdir(parents=True, exist_ok=True)
        entries: dict[str, Any] = {n: {"size": s, "blob_id": "0" * 40} for n, s in listing.items()}
        (trees / f"{commit}.json").write_text(json.dumps({"format_version": 1, "files": entries}))
    return snapshot


def model_folder_files(folder: Path) -> dict[str, Path]:
    """Every file of a saved model folder, by relative name (what a Hub repo of it would hold)."""
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
