"""hf: through the real huggingface_hub.snapshot_download, offline, on a hand-made Hub cache."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError

from runner.registry import SourceError, resolve_source, sha256_file
from runner.registry import sources as sources_mod

from .tiny_models import add_to_hub_cache, model_folder_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"
OTHER = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture
def cached_repo(home: Path, tiny_model_dir: Path) -> Path:
    """org/tiny at COMMIT (refs/main), as snapshot_download would have left it."""
    return add_to_hub_cache(home / "hub", "org/tiny", model_folder_files(tiny_model_dir), COMMIT)


@pytest.fixture
def spy_downloads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every snapshot_download call while still running the real one."""
    calls: list[dict[str, Any]] = []
    real = huggingface_hub.snapshot_download

    def spy(*args: Any, **kwargs: Any) -> str:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return calls


def test_cached_repo_resolves_offline(
    cached_repo: Path, home: Path, tiny_model_dir: Path, spy_downloads: list[dict[str, Any]]
) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source("hf:org/tiny", home=home, progress=False)
    assert resolved.path == cached_repo
    assert resolved.path == home / "hub" / "models--org--tiny" / "snapshots" / COMMIT
    assert resolved.revision == COMMIT
    assert resolved.source == "hf:org/tiny"
    assert resolved.format_note == "Hugging Face Hub snapshot"
    assert resolved.files["model.safetensors"] == sha256_file(tiny_model_dir / "model.safetensors")
    assert set(resolved.files) >= {"config.json", "tokenizer.json", "tokenizer_config.json"}
    # the cache was asked first, and only the cache
    assert [c.get("local_files_only", False) for c in spy_downloads] == [True]
    assert Path(spy_downloads[0]["cache_dir"]) == home / "hub"

    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = AutoTokenizer.from_pretrained(resolved.path)("hello tiny world", return_tensors="pt").input_ids
    assert ids.tolist() == [[3, 8, 4]]
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


def test_cached_repo_by_commit(cached_repo: Path, home: Path) -> None:
    resolved = resolve_source(f"hf:org/tiny@{COMMIT}", home=home, progress=False)
    assert resolved.path == cached_repo and resolved.revision == COMMIT
    assert resolved.source == f"hf:org/tiny@{COMMIT}"


def test_tag_resolves_through_refs(cached_repo: Path, home: Path, tiny_model_dir: Path) -> None:
    files = model_folder_files(tiny_model_dir)
    files["config.json"] = files["config.json"].read_bytes().replace(b"{", b'{\n  "note": "v2",', 1)
    add_to_hub_cache(home / "hub", "org/tiny", files, OTHER, refs=("v2",))
    v2 = resolve_source("hf:org/tiny@v2", home=home, progress=False)
    main = resolve_source("hf:org/tiny", home=home, progress=False)
    assert (v2.revision, main.revision) == (OTHER, COMMIT)
    assert v2.files["config.json"] != main.files["config.json"]
    assert v2.files["model.safetensors"] == main.files["model.safetensors"]


def test_uncached_repo_offline_gives_clear_error(home: Path, spy_downloads: list[dict[str, Any]]) -> None:
    with pytest.raises(SourceError) as info:
        resolve_source("hf:org/missing", home=home, progress=False)
    message = str(info.value)
    assert "hf:org/missing: not in the cache and offline" in message
    assert "run with network or import it first" in message
    assert [c.get("local_files_only", False) for c in spy_downloads] == [True]  # never tried the network


def test_unknown_commit_offline(cached_repo: Path, home: Path) -> None:
    with pytest.raises(SourceError, match="not in the cache and offline"):
        resolve_source(f"hf:org/tiny@{OTHER}", home=home, progress=False)


def test_cached_pickle_only_repo_is_refused(home: Path, tiny_model_dir: Path) -> None:
    files = model_folder_files(tiny_model_dir)
    files["pytorch_model.bin"] = files.pop("model.safetensors")
    add_to_hub_cache(home / "hub", "org/pickled", files, COMMIT)
    with pytest.raises(SourceError) as info:
        resolve_source("hf:org/pickled", home=home, progress=False)
    assert "only pickle weights (pytorch_model.bin)" in str(info.value)
    assert "can run arbitrary code" in str(info.value)


# ---- the network branch, with snapshot_download's network half replaced ----------------------


@pytest.fixture
def online(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)


def _fake_hub(monkeypatch: pytest.MonkeyPatch, repo_files: dict[str, Path | bytes]) -> list[dict[str, Any]]:
    """snapshot_download whose network half 'downloads' repo_files filtered like the real one would.

    Cache look-ups (local_files_only=True) run the real function on the real cache.
    """
    calls: list[dict[str, Any]] = []
    real = huggingface_hub.snapshot_download

    def fake(**kwargs: Any) -> str:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            return real(**kwargs)
        allow, ignore = kwargs["allow_patterns"], kwargs["ignore_patterns"]
        wanted = {
            name: data
            for name, data in repo_files.items()
            if any(fnmatch.fnmatch(name, p) for p in allow) and not any(fnmatch.fnmatch(name, p) for p in ignore)
        }
        listing = {
            name: len(data) if isinstance(data, bytes) else Path(data).stat().st_size
            for name, data in repo_files.items()
        }
        add_to_hub_cache(Path(kwargs["cache_dir"]), kwargs["repo_id"], wanted, COMMIT, listing=listing)
        return real(**{**kwargs, "local_files_only": True})

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


@pytest.mark.usefixtures("online")
def test_network_only_after_a_cache_miss_and_only_model_files(
    home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = model_folder_files(tiny_model_dir) | {
        "pytorch_model.bin": b"pickle",
        "onnx/model.onnx": b"onnx",
        "model.Q4_0.gguf": b"gguf",
        "README.md": b"# tiny",
        "checkpoints/step1/model.safetensors": b"old",
    }
    calls = _fake_hub(monkeypatch, repo)
    first = resolve_source("hf:org/tiny", home=home, progress=False)
    assert [c.get("local_files_only", False) for c in calls] == [True, False]  # cache, then network
    assert first.revision == COMMIT
    downloaded = {p.name for p in first.path.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= downloaded
    assert not downloaded & {"pytorch_model.bin", "onnx", "model.Q4_0.gguf", "README.md", "checkpoints"}

    calls.clear()
    second = resolve_source("hf:org/tiny", home=home, progress=False)
    assert [c.get("local_files_only", False) for c in calls] == [True]  # cached now: no network call
    assert second == first


@pytest.mark.usefixtures("online")
def test_pickle_only_repo_is_refused_after_listing(
    home: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = model_folder_files(tiny_model_dir)
    repo["pytorch_model.bin"] = repo.pop("model.safetensors")
    _fake_hub(monkeypatch, repo)
    with pytest.raises(SourceError) as info:
        resolve_source("hf:org/pickled", home=home, progress=False)
    assert "only pickle weights (pytorch_model.bin)" in str(info.value)
    # and the pickle was never downloaded
    snapshot = home / "hub" / "models--org--pickled" / "snapshots" / COMMIT
    assert (snapshot / "config.json").exists() and not (snapshot / "pytorch_model.bin").exists()


@pytest.mark.usefixtures("online")
def test_unreachable_hub_gives_clear_error(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreachable(**kwargs: Any) -> str:
        raise LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(
        SourceError, match="not in the cache and the Hub cannot be reached; run with network or import it first"
    ):
        resolve_source("hf:org/tiny", home=home, progress=False)


def test_offline_flag_is_read_at_call_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    assert not sources_mod.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert sources_mod.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    assert sources_mod.hub_offline()
