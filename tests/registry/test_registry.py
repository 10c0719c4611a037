"""The registry file and its entries: where it is, import, registry: resolution, schema, locking."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import pytest
import torch

from runner.registry import (
    Registry,
    RegistryError,
    SourceError,
    find_registry,
    import_model,
    resolve_source,
    sha256_file,
)
from runner.registry.entries import ModelEntry
from runner.registry.folder_facts import count_parameters
from runner.registry.schema import SCHEMA_PATH, registry_schema, render_schema

from .tiny_models import copy_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def registry(home: Path, _private_registry: Path) -> Registry:
    return Registry(_private_registry, home=home)


@pytest.fixture
def local_model(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """A private copy with a model card, as a user's folder would be."""
    folder = copy_model(tiny_model_dir, tmp_path / "my-model")
    (folder / "README.md").write_text("---\nlicense: mit\nlanguage: en\n---\n# my model\n")
    return folder


# ---- where the registry file is -------------------------------------------------------------


def test_registry_location_rules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = tmp_path / "project"
    (project / "jobs" / "team").mkdir(parents=True)
    (project / "registry").mkdir()
    committed = project / "registry" / "registry.json"
    committed.write_text('{"version": 1, "models": {}}')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.delenv("RUNNER_REGISTRY")

    # nearest registry/registry.json above the job file's folder, however deep
    assert find_registry(start=project / "jobs" / "team") == committed
    # nothing above the current folder: ./registry/registry.json, created on first write
    assert find_registry() == elsewhere / "registry" / "registry.json"
    monkeypatch.chdir(project / "jobs")
    assert find_registry() == committed  # from a sub-folder of the project, like git
    # the environment beats the search, an explicit path beats both
    monkeypatch.setenv("RUNNER_REGISTRY", str(tmp_path / "env.json"))
    assert find_registry(start=project / "jobs") == tmp_path / "env.json"
    assert find_registry("other.json", start=project / "jobs") == project / "jobs" / "other.json"


def test_committed_registry_and_schema_are_in_sync() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), "run: python -m runner.registry.schema"
    validator = jsonschema.Draft202012Validator(registry_schema())
    committed = json.loads((ROOT / "registry" / "registry.json").read_text())
    assert list(validator.iter_errors(committed)) == []
    bad = {"version": 1, "models": {"Bad Alias": {"source": "x"}}}
    messages = " ".join(e.message for e in validator.iter_errors(bad))
    assert "does not match" in messages and "'kind' is a required property" in messages


# ---- import and resolve ---------------------------------------------------------------------


def test_import_local_copies_into_the_store_with_every_field(registry: Registry, local_model: Path, home: Path) -> None:
    result = import_model(registry, f"local:{local_model}", "tiny", progress=False)
    entry = registry.get("tiny")
    assert result.action == "registered"
    store = home / "models" / entry.revision  # type: ignore[operator]
    assert result.path == store and registry.store_path(entry) == store
    assert entry.source == f"local:{local_model}"
    assert entry.kind == "causal-lm" and entry.architecture == "LlamaForCausalLM" and entry.model_type == "llama"
    assert (entry.license, entry.license_from) == ("mit", "model card")
    from transformers import AutoModelForCausalLM

    reference = AutoModelForCausalLM.from_pretrained(local_model)
    assert entry.parameters == sum(p.numel() for p in reference.parameters()) > 0  # tied weights counted once
    names = {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"}
    assert names <= set(entry.files)
    assert "README.md" not in entry.files
    for name, digest in entry.files.items():
        assert digest == sha256_file(local_model / name) == sha256_file(store / name)
    assert entry.size_bytes == sum((store / n).stat().st_size for n in entry.files)
    # the file on disk is the typed registry, sorted and readable
    raw = json.loads(registry.path.read_text())
    assert raw["version"] == 1 and list(raw["models"]) == ["tiny"]

    # the registered copy does not follow later edits of the user's folder
    (local_model / "model.safetensors").write_bytes(b"changed")
    resolved = resolve_source("registry:tiny", home=home, progress=False)
    assert resolved.path == store and resolved.alias == "tiny" and resolved.revision == entry.revision
    assert dict(resolved.files) == entry.files


def test_reimport_is_a_no_op_and_an_alias_is_not_silently_taken(
    registry: Registry, local_model: Path, tmp_path: Path, tiny_model_dir: Path
) -> None:
    import_model(registry, f"local:{local_model}", "tiny", progress=False)
    before = registry.path.read_text()
    assert import_model(registry, f"local:{local_model}", "tiny", progress=False).action == "unchanged"
    assert registry.path.read_text() == before

    other = copy_model(tiny_model_dir, tmp_path / "other")
    config = json.loads((other / "config.json").read_text())
    config["rms_norm_eps"] = 1e-3
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(RegistryError, match=r"already registered for local:.*--force"):
        import_model(registry, f"local:{other}", "tiny", progress=False)
    replaced = import_model(registry, f"local:{other}", "tiny", progress=False, force=True)
    assert replaced.action == "replaced" and registry.get("tiny").source == f"local:{other}"


def test_registry_source_loads_the_same_weights(registry: Registry, local_model: Path, home: Path) -> None:
    from transformers import AutoModelForCausalLM

    import_model(registry, f"local:{local_model}", "tiny", progress=False)
    resolved = resolve_source("registry:tiny", home=home, progress=False)
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(resolved.path)(ids).logits
        want = AutoModelForCausalLM.from_pretrained(local_model)(ids).logits
    assert torch.equal(got, want)


def test_unknown_alias_says_what_is_registered(registry: Registry, local_model: Path, home: Path) -> None:
    import_model(registry, f"local:{local_model}", "tiny-model", progress=False)
    with pytest.raises(SourceError) as info:
        resolve_source("registry:tiny-modle", home=home, progress=False)
    assert "did you mean 'tiny-model'" in str(info.value) and "runner models import" in str(info.value)


def test_a_changed_store_file_is_refused_at_resolve(registry: Registry, local_model: Path, home: Path) -> None:
    result = import_model(registry, f"local:{local_model}", "tiny", progress=False)
    weights = result.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(SourceError) as info:
        resolve_source("registry:tiny", home=home, progress=False)
    assert "no longer match the registry: model.safetensors: sha256" in str(info.value)
    assert "runner models validate tiny" in str(info.value)


def test_a_missing_store_is_rebuilt_from_the_pinned_source(registry: Registry, local_model: Path, home: Path) -> None:
    import shutil

    result = import_model(registry, f"local:{local_model}", "tiny", progress=False)
    shutil.rmtree(result.path)  # another machine, or a cleaned cache
    resolved = resolve_source("registry:tiny", home=home, progress=False)
    assert resolved.path == result.path and (result.path / "model.safetensors").is_file()


def test_pickle_only_folders_are_refused(registry: Registry, tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "pickled")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(SourceError, match=r"only pickle weights .* can run arbitrary code"):
        import_model(registry, f"local:{folder}", "pickled", progress=False)
    assert not registry.path.exists()


def test_gguf_import_uses_the_converted_snapshot(registry: Registry, tiny_gguf: Path, home: Path) -> None:
    result = import_model(registry, f"gguf:{tiny_gguf}", "tiny-gguf", progress=False)
    entry = result.entry
    sha = sha256_file(tiny_gguf)
    assert entry.store == f"snapshots/{sha}" and entry.revision == sha
    assert entry.format_note == "converted from GGUF Q8_0"
    assert entry.kind == "causal-lm" and entry.parameters == count_parameters(home / "snapshots" / sha)
    assert resolve_source("registry:tiny-gguf", home=home, progress=False).path == home / "snapshots" / sha


# ---- two writers ----------------------------------------------------------------------------

_WRITER = """
import sys, time
from pathlib import Path
from runner.registry.registry_file import Registry
from runner.registry.entries import ModelEntry
path, prefix, count, start = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])
while not start.exists():
    time.sleep(0.001)
registry = Registry(path, home=path.parent / "home")
for i in range(count):
    with registry.edit() as models:
        models[f"{prefix}-{i}"] = ModelEntry(source=f"local:/m/{prefix}/{i}", kind="causal-lm", size_bytes=i,
                                             store=f"models/{prefix}{i}", files={"config.json": "0" * 64},
                                             imported_at="2025-01-01T00:00:00+00:00")
"""


def test_two_processes_writing_at_once_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "registry" / "registry.json"
    start = tmp_path / "start"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    count = 40
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), prefix, str(count), str(start)], env=env)
        for prefix in ("a", "b")
    ]
    time.sleep(0.5)  # both interpreters up and waiting
    start.touch()
    torn = 0
    while any(w.poll() is None for w in writers):  # a reader meanwhile never sees a torn file
        try:
            json.loads(path.read_text())
        except FileNotFoundError:
            pass
        except ValueError:
            torn += 1
    assert [w.wait(timeout=60) for w in writers] == [0, 0]
    assert torn == 0
    models = Registry(path, home=tmp_path / "home").entries()
    assert sorted(models) == sorted(f"{p}-{i}" for p in ("a", "b") for i in range(count))
    assert isinstance(models["a-0"], ModelEntry)
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp-")]
