"""Checkpoints are complete-or-absent, and we can tell which is which."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.outputs.checkpoints import (
    COMPLETE_MARKER,
    find_resume_point,
    latest_complete,
    list_checkpoints,
    mark_complete,
    new_checkpoint,
    prune,
)


def save(ckpts: Path, step: int, payload: bytes = b"weights") -> Path:
    with new_checkpoint(ckpts, step) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(payload)
        (tmp / "optimizer").mkdir()
        (tmp / "optimizer" / "state.pt").write_bytes(b"adam")
    return ckpts / f"step-{step}"


def half_written(ckpts: Path, step: int) -> Path:
    """What a non-atomic saver leaves when killed mid-save: the folder, no marker."""
    folder = ckpts / f"step-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"wei")
    return folder


def test_saved_checkpoint_has_a_marker_with_step_and_file_hashes(tmp_path: Path) -> None:
    folder = save(tmp_path, 10)
    marker = json.loads((folder / COMPLETE_MARKER).read_text())
    assert marker["step"] == 10 and marker["time"].endswith("Z")
    assert set(marker["files"]) == {"adapter_model.safetensors", "optimizer/state.pt"}
    assert len(marker["files"]["optimizer/state.pt"]["sha256"]) == 64
    [info] = list_checkpoints(tmp_path)
    assert (info.step, info.complete, info.why_incomplete) == (10, True, None)


def test_crash_during_save_leaves_no_checkpoint_and_no_temp(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), new_checkpoint(tmp_path, 10) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"w")
        raise RuntimeError("killed mid-save")
    assert list(tmp_path.iterdir()) == []


def test_folder_without_marker_is_skipped_and_reported(tmp_path: Path) -> None:
    save(tmp_path, 10)
    half_written(tmp_path, 20)
    chosen, skipped = find_resume_point(tmp_path)
    assert chosen is not None and chosen.step == 10
    assert [s.step for s in skipped] == [20]
    assert skipped[0].why_incomplete is not None and COMPLETE_MARKER in skipped[0].why_incomplete
    assert latest_complete(tmp_path) == chosen


def test_no_complete_checkpoint_means_start_from_scratch(tmp_path: Path) -> None:
    half_written(tmp_path, 5)
    chosen, skipped = find_resume_point(tmp_path)
    assert chosen is None and [s.step for s in skipped] == [5]
    assert find_resume_point(tmp_path / "does-not-exist") == (None, [])


def test_file_truncated_after_marking_makes_checkpoint_incomplete(tmp_path: Path) -> None:
    folder = save(tmp_path, 10)
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    [info] = list_checkpoints(tmp_path)
    assert not info.complete and "adapter_model.safetensors" in (info.why_incomplete or "")


def test_same_size_corruption_is_caught_only_when_hashes_are_verified(tmp_path: Path) -> None:
    folder = save(tmp_path, 10, payload=b"weights")
    (folder / "adapter_model.safetensors").write_bytes(b"WEIGHTS")
    assert list_checkpoints(tmp_path)[0].complete, "default check is sizes only (cheap)"
    [info] = list_checkpoints(tmp_path, verify_hashes=True)
    assert not info.complete and "sha256" in (info.why_incomplete or "")


def test_marker_copied_from_another_step_does_not_count(tmp_path: Path) -> None:
    good = save(tmp_path, 10)
    other = half_written(tmp_path, 20)
    (other / COMPLETE_MARKER).write_bytes((good / COMPLETE_MARKER).read_bytes())
    assert not list_checkpoints(tmp_path)[1].complete


def test_trainer_style_folders_are_marked_after_the_save(tmp_path: Path) -> None:
    folder = tmp_path / "checkpoint-500"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"w")
    assert list_checkpoints(tmp_path, "checkpoint-*")[0].complete is False
    mark_complete(folder)
    [info] = list_checkpoints(tmp_path, "checkpoint-*")
    assert (info.step, info.complete) == (500, True)
    assert list_checkpoints(tmp_path) == [], "default pattern step-* does not see them"


def test_temp_folders_are_not_checkpoints(tmp_path: Path) -> None:
    (tmp_path / ".tmp-step-30-ab12cd34").mkdir()
    save(tmp_path, 10)
    assert [c.step for c in list_checkpoints(tmp_path)] == [10]


def test_checkpoints_are_ordered_by_step_number_not_name(tmp_path: Path) -> None:
    for step in (100, 20, 3):
        save(tmp_path, step)
    assert [c.step for c in list_checkpoints(tmp_path)] == [3, 20, 100]


def test_prune_keeps_newest_complete_and_removes_leftovers(tmp_path: Path) -> None:
    for step in (10, 20, 30, 40):
        save(tmp_path, step)
    half_written(tmp_path, 15)  # older than newest complete: useless
    half_written(tmp_path, 50)  # newer: maybe in progress, keep
    (tmp_path / ".tmp-step-60-deadbeef").mkdir()  # crashed atomic save
    removed = prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == [".tmp-step-60-deadbeef", "step-10", "step-15", "step-20"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-30", "step-40", "step-50"]


def test_prune_with_fewer_checkpoints_than_keep_last_removes_none(tmp_path: Path) -> None:
    save(tmp_path, 10)
    assert prune(tmp_path, keep_last=3) == []
    assert (tmp_path / "step-10").is_dir()


def test_prune_rejects_negative_keep_last(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        prune(tmp_path, keep_last=-1)


def test_resaving_a_step_is_an_error_unless_replace(tmp_path: Path) -> None:
    save(tmp_path, 10, payload=b"one")
    with pytest.raises(FileExistsError):
        save(tmp_path, 10, payload=b"two")
    with new_checkpoint(tmp_path, 10, replace=True) as tmp:
        (tmp / "adapter_model.safetensors").write_bytes(b"two")
    assert (tmp_path / "step-10" / "adapter_model.safetensors").read_bytes() == b"two"
    assert list_checkpoints(tmp_path)[0].complete
