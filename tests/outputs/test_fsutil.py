"""Atomic writes: a reader or a crash never sees a half-written file or folder."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from runner import fsutil
from runner.fsutil import atomic_dir, atomic_write_json, atomic_write_text


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".tmp-"))


def test_atomic_write_text_replaces_content_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "status.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert leftovers(tmp_path) == []


def test_atomic_write_fsyncs_the_file_and_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(fsutil.os, "fsync", spy)
    atomic_write_text(tmp_path / "status.json", "x")
    assert len(synced) == 2
    assert Path(synced[0]).name.startswith(".tmp-status.json-"), "data synced before the rename"
    assert Path(synced[1]) == tmp_path, "then the folder, so the rename itself is durable"


def test_atomic_write_creates_missing_parent_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "manifest.json"
    atomic_write_json(target, {"x": 1})
    assert json.loads(target.read_text()) == {"x": 1}


def test_crash_at_replace_keeps_old_file_and_removes_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "status.json"
    atomic_write_json(target, {"state": "running"})

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(fsutil.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        atomic_write_json(target, {"state": "succeeded"})

    assert json.loads(target.read_text()) == {"state": "running"}
    assert leftovers(tmp_path) == []


def test_unserialisable_object_never_touches_the_file(tmp_path: Path) -> None:
    target = tmp_path / "manifest.json"
    atomic_write_json(target, {"ok": True})
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert json.loads(target.read_text()) == {"ok": True}
    assert leftovers(tmp_path) == []


def test_written_files_are_readable_by_others_not_0600(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "f", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644


def test_atomic_dir_publishes_only_on_clean_exit(tmp_path: Path) -> None:
    final = tmp_path / "step-5"
    with atomic_dir(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-step-5-")
        (tmp / "weights.bin").write_bytes(b"123")
        assert not final.exists(), "must not be visible before the block ends"
    assert (final / "weights.bin").read_bytes() == b"123"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_atomic_dir_removes_temp_on_exception(tmp_path: Path, exc: type[BaseException]) -> None:
    final = tmp_path / "step-5"
    with pytest.raises(exc), atomic_dir(final) as tmp:
        (tmp / "half.bin").write_bytes(b"1")
        raise exc()
    assert not final.exists()
    assert leftovers(tmp_path) == []


def test_atomic_dir_refuses_to_overwrite_by_default(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    final.mkdir()
    (final / "keep").write_text("old")
    with pytest.raises(FileExistsError), atomic_dir(final):
        pytest.fail("should fail before doing any work")
    assert (final / "keep").read_text() == "old"
    assert leftovers(tmp_path) == []


def test_atomic_dir_replace_swaps_whole_folder(tmp_path: Path) -> None:
    final = tmp_path / "adapter"
    with atomic_dir(final) as tmp:
        (tmp / "old-only").write_text("1")
        (tmp / "w").write_text("old")
    with atomic_dir(final, replace=True) as tmp:
        (tmp / "w").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["w"]
    assert (final / "w").read_text() == "new"
    assert leftovers(tmp_path) == []


def test_atomic_dir_replace_that_fails_to_move_in_restores_old(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "adapter"
    with atomic_dir(final) as tmp:
        (tmp / "w").write_text("old")
    real_rename = os.rename

    def flaky_rename(src: str | Path, dst: str | Path) -> None:
        if Path(src).name.startswith(".tmp-adapter-") and "-old-" not in Path(src).name:
            raise OSError("simulated crash moving the new folder in")
        real_rename(src, dst)

    monkeypatch.setattr(fsutil.os, "rename", flaky_rename)
    with pytest.raises(OSError, match="simulated"), atomic_dir(final, replace=True) as tmp:
        (tmp / "w").write_text("new")
    assert (final / "w").read_text() == "old"
    assert leftovers(tmp_path) == []
