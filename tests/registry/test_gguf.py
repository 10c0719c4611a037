"""GGUF -> safetensors snapshots on a tiny real GGUF: converted once, complete-or-absent, locked."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
import torch

from runner.fsutil import TMP_PREFIX
from runner.registry import (
    SourceError,
    ensure_gguf_snapshot,
    gguf_convert,
    gguf_quant_name,
    resolve_source,
    sha256_file,
)
from runner.registry import checksums as checksums_mod

from .tiny_models import CHAT_TEMPLATE


@pytest.fixture
def conversions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Count real conversions."""
    done: list[Path] = []
    real = gguf_convert.convert_gguf

    def counting(file: Path, out_dir: Path) -> None:
        done.append(file)
        real(file, out_dir)

    monkeypatch.setattr(gguf_convert, "convert_gguf", counting)
    return done


def _leftovers(home: Path) -> list[str]:
    return [p.name for p in (home / "snapshots").iterdir() if p.name.startswith(TMP_PREFIX)]


def test_converts_once_into_a_loadable_snapshot(tiny_gguf: Path, home: Path, conversions: list[Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sha = sha256_file(tiny_gguf)
    resolved = resolve_source(f"gguf:{tiny_gguf.parent}#{tiny_gguf.name}", home=home, progress=False)
    assert resolved.path == home / "snapshots" / sha
    assert resolved.revision == sha
    assert resolved.format_note == "converted from GGUF Q8_0"
    assert resolved.source == f"gguf:{tiny_gguf.parent}#{tiny_gguf.name}"
    assert {
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    } <= set(resolved.files)
    assert resolved.files["model.safetensors"] == sha256_file(resolved.path / "model.safetensors")
    assert conversions == [tiny_gguf]
    assert _leftovers(home) == []
    manifest = json.loads((resolved.path / gguf_convert.SNAPSHOT_MANIFEST).read_text())
    assert manifest["sha256"] == sha and manifest["quant"] == "Q8_0"

    # a plain checkpoint: no GGUF quantisation left in the config
    config = json.loads((resolved.path / "config.json").read_text())
    assert "quantization_config" not in config

    snap_model = AutoModelForCausalLM.from_pretrained(resolved.path)
    snap_tok = AutoTokenizer.from_pretrained(resolved.path)
    gguf_model = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    gguf_tok = AutoTokenizer.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    text = "the thin hat in the inn"
    assert snap_tok(text).input_ids == gguf_tok(text).input_ids
    assert snap_tok.chat_template == CHAT_TEMPLATE
    ids = snap_tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(snap_model(ids).logits, gguf_model(ids).logits, atol=1e-5)


def test_second_resolve_reuses_without_rehash_or_reconvert(
    tiny_gguf: Path, home: Path, conversions: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    hashed: list[Path] = []
    real = checksums_mod.sha256_file
    monkeypatch.setattr(checksums_mod, "sha256_file", lambda p, **kw: hashed.append(Path(p)) or real(p, **kw))

    started = time.perf_counter()
    second = resolve_source(f"gguf:{tiny_gguf.parent}#{tiny_gguf.name}", home=home, progress=False)
    assert time.perf_counter() - started < 1.0
    assert second == first
    assert conversions == [tiny_gguf] and hashed == []

    # a touched file (same bytes, new mtime) is hashed again, but finds the same snapshot
    os.utime(tiny_gguf, ns=(time.time_ns(), time.time_ns() + 10**9))
    third = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert hashed == [tiny_gguf] and third.path == first.path and conversions == [tiny_gguf]


@pytest.mark.parametrize("interruption", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_interrupted_conversion_leaves_nothing(
    tiny_gguf: Path, home: Path, conversions: list[Path], monkeypatch: pytest.MonkeyPatch, interruption: BaseException
) -> None:
    """The model weights are already written when the tokenizer save fails: still no snapshot."""
    from transformers import PreTrainedTokenizerBase

    real_save = PreTrainedTokenizerBase.save_pretrained
    written: list[list[str]] = []

    def failing_save(
        self: PreTrainedTokenizerBase, save_directory: str | Path, *args: object, **kwargs: object
    ) -> None:
        written.append(sorted(os.listdir(save_directory)))
        raise interruption

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", failing_save)
    final = home / "snapshots" / sha256_file(tiny_gguf)
    with pytest.raises(type(interruption)):
        resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert "model.safetensors" in written[0]  # it did fail mid-way
    assert not final.exists()
    assert _leftovers(home) == []

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", real_save)
    resolved = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert resolved.path == final and (final / "tokenizer.json").is_file()
    assert len(conversions) == 2  # converted again, from scratch


def test_leftover_of_a_killed_conversion_is_pruned(tiny_gguf: Path, home: Path) -> None:
    sha = sha256_file(tiny_gguf)
    dead = home / "snapshots" / f"{TMP_PREFIX}{sha}-dead0001"
    dead.mkdir(parents=True)
    (dead / "model.safetensors").write_bytes(b"half")
    resolved = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert not dead.exists() and resolved.path.name == sha


def test_a_foreign_folder_in_place_is_replaced(tiny_gguf: Path, home: Path) -> None:
    final = home / "snapshots" / sha256_file(tiny_gguf)
    final.mkdir(parents=True)
    (final / "junk").write_text("not a snapshot")
    resolved = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert resolved.path == final and not (final / "junk").exists()
    assert (final / gguf_convert.SNAPSHOT_MANIFEST).is_file()


def test_two_concurrent_resolves_convert_once(tiny_gguf: Path, home: Path) -> None:
    """flock makes the second caller wait and reuse; a fake slow converter keeps it deterministic."""
    calls: list[int] = []
    inside = threading.Event()

    def slow_convert(file: Path, out_dir: Path) -> None:
        calls.append(threading.get_ident())
        inside.set()
        time.sleep(0.5)
        (out_dir / "config.json").write_text("{}")
        (out_dir / "model.safetensors").write_bytes(b"")

    results: dict[str, gguf_convert.GGUFSnapshot] = {}

    def run(name: str) -> None:
        results[name] = ensure_gguf_snapshot(tiny_gguf, home=home, progress=False, convert=slow_convert)

    first = threading.Thread(target=run, args=("a",))
    first.start()
    assert inside.wait(10)
    second = threading.Thread(target=run, args=("b",))
    second.start()
    first.join(10)
    second.join(10)
    assert len(calls) == 1
    assert results["a"].converted and not results["b"].converted
    assert results["a"].path == results["b"].path
    assert (results["a"].path / "config.json").read_text() == "{}"


def test_missing_gguf_file(tmp_path: Path, home: Path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        resolve_source(f"gguf:{tmp_path}#absent.gguf", home=home)


def test_pkg_with_one_gguf_converts_it(
    tiny_gguf: Path, tmp_path: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "site" / "tiny_gguf_pkg_zz"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / tiny_gguf.name).write_bytes(tiny_gguf.read_bytes())
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    resolved = resolve_source("pkg:tiny_gguf_pkg_zz", home=home, progress=False)
    assert resolved.revision == sha256_file(tiny_gguf)
    assert resolved.source == "pkg:tiny_gguf_pkg_zz"
    assert resolved.format_note == "converted from GGUF Q8_0"
    # naming the file explicitly lands on the same snapshot
    assert resolve_source(f"pkg:tiny_gguf_pkg_zz/{tiny_gguf.name}", home=home, progress=False).path == resolved.path


def test_quant_name_from_header_or_file_name(tiny_gguf: Path, tmp_path: Path) -> None:
    assert gguf_quant_name(tiny_gguf) == "Q8_0"
    broken = tmp_path / "Model-7B.Q5_K_M.gguf"
    broken.write_bytes(b"not a gguf")
    assert gguf_quant_name(broken) == "Q5_K_M"
    (tmp_path / "x.gguf").write_bytes(b"")
    assert gguf_quant_name(tmp_path / "x.gguf") == "unknown"


def test_progress_reports_conversion(tiny_gguf: Path, home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="runner.registry")
    resolve_source(f"gguf:{tiny_gguf}", home=home, progress=True)
    text = caplog.text
    assert "converting GGUF (Q8_0) -> safetensors" in text and str(home / "snapshots") in text
    assert "converted tiny.Q8_0.gguf in" in text


def test_quantizer_is_cleared_when_transformers_keeps_it(
    tiny_gguf: Path, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loaded the default way, a GGUF model carries a quantizer that makes save_pretrained refuse."""
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tiny_gguf.parent, gguf_file=tiny_gguf.name)
    if getattr(plain, "hf_quantizer", None) is not None:
        with pytest.raises(ValueError, match="not serializable"):
            plain.save_pretrained(home / "refused")
    monkeypatch.setattr(gguf_convert, "_gguf_load_kwargs", lambda: {})
    resolved = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert "quantization_config" not in json.loads((resolved.path / "config.json").read_text())
    reloaded = AutoModelForCausalLM.from_pretrained(resolved.path)
    assert getattr(reloaded, "hf_quantizer", None) is None
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        assert torch.allclose(reloaded(ids).logits, plain(ids).logits, atol=1e-5)


def test_a_snapshot_emptied_by_hand_is_converted_again(tiny_gguf: Path, home: Path, conversions: list[Path]) -> None:
    first = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    (first.path / "model.safetensors").unlink()
    again = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    assert again.path == first.path and (again.path / "model.safetensors").is_file()
    assert len(conversions) == 2
    assert again.files == first.files  # same bytes as the first conversion


def test_snapshot_files_get_ordinary_permissions(tiny_gguf: Path, home: Path) -> None:
    """A RUNNER_HOME shared by several users: no 0600 files from the savers."""
    resolved = resolve_source(f"gguf:{tiny_gguf}", home=home, progress=False)
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in resolved.path.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes
