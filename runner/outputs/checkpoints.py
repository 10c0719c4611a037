"""Checkpoint folders that are complete-or-absent.

Two independent rules, because not every saver is ours:

1. Savers we control build the folder under a ``.tmp-`` name and rename it
   into place (:func:`new_checkpoint`), so a crash leaves only a temp folder,
   which listing ignores and :func:`prune` deletes.
2. Every complete checkpoint holds a ``COMPLETE`` marker written *last*, with
   the step, the time and the size + sha256 of each file.  This catches savers
   that write in place (transformers' Trainer writes ``checkpoint-N/`` file by
   file): a folder without a valid marker, or whose files no longer match it,
   is reported incomplete with the reason.  Call :func:`mark_complete` after
   such a saver returns.

Functions take the folder and a glob of checkpoint names (``step-*`` by
default, ``checkpoint-*`` for Trainer's); the step is the trailing integer.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.fsutil import TMP_PREFIX, atomic_dir, atomic_write_json, is_tmp_name
from runner.outputs.status import format_utc, utc_now

__all__ = [
    "BASE_RECORD",
    "COMPLETE_MARKER",
    "DEFAULT_PATTERN",
    "CheckpointInfo",
    "check_complete",
    "find_resume_point",
    "latest_complete",
    "list_checkpoints",
    "mark_complete",
    "new_checkpoint",
    "prune",
]

COMPLETE_MARKER = "COMPLETE"
# In every checkpoint: the base model it was trained on (alias, source, revision, file sha256,
# fine_tuned_from), so a resume can insist on exactly that base.
BASE_RECORD = "runner_base.json"
DEFAULT_PATTERN = "step-*"
MARKER_FORMAT = 1
_TRAILING_INT = re.compile(r"(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    complete: bool
    why_incomplete: str | None = None


def _step_from_name(name: str) -> int | None:
    m = _TRAILING_INT.search(name)
    return int(m.group(1)) if m else None


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _payload_files(folder: Path) -> list[Path]:
    """Everything the saver wrote: not the marker, nor a leftover temp of an earlier marker write."""

    def is_marker(p: Path) -> bool:
        return p.parent == folder and (
            p.name == COMPLETE_MARKER or p.name.startswith(f"{TMP_PREFIX}{COMPLETE_MARKER}-")
        )

    return sorted(p for p in folder.rglob("*") if p.is_file() and not is_marker(p))


def mark_complete(folder: Path | str, step: int | None = None, *, now: datetime | None = None) -> dict[str, Any]:
    """Write the ``COMPLETE`` marker for an already-written folder; returns its content.

    Call it only after the saver has returned: the marker is the promise that
    everything before it is on disk.  ``step`` defaults to the folder name's
    trailing integer.
    """
    folder = Path(folder)
    if step is None:
        step = _step_from_name(folder.name)
        if step is None:
            raise ValueError(f"cannot tell the step of {folder}; pass step=")
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": _sha256_file(p)}
        for p in _payload_files(folder)
    }
    marker = {"format": MARKER_FORMAT, "step": step, "time": format_utc(now or utc_now()), "files": files}
    atomic_write_json(folder / COMPLETE_MARKER, marker)
    return marker


@contextmanager
def new_checkpoint(
    checkpoints_dir: Path | str, step: int, *, name: str = "step-{step}", replace: bool = False
) -> Iterator[Path]:
    """Save a checkpoint under both rules: yield a temp folder to write into; on
    clean exit mark it complete and rename it to ``checkpoints_dir/step-N``.

    ``replace=True`` lets a re-save of the same step overwrite the old folder
    (see :func:`runner.fsutil.atomic_dir`); by default it is an error.
    """
    final = Path(checkpoints_dir) / name.format(step=step)
    with atomic_dir(final, replace=replace) as tmp:
        yield tmp
        mark_complete(tmp, step)


def check_complete(folder: Path, step: int, *, verify_hashes: bool = False) -> str | None:
    """Why ``folder`` is not a usable checkpoint, or None if it is.

    Sizes are always checked (cheap, catches truncation); sha256 only with
    ``verify_hashes`` since full fine-tune checkpoints can be many GB.
    """
    marker_path = folder / COMPLETE_MARKER
    try:
        marker = json.loads(marker_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {COMPLETE_MARKER} marker (save interrupted or never finished)"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"unreadable {COMPLETE_MARKER} marker: {e}"
    if not isinstance(marker, dict) or not isinstance(marker.get("files"), dict):
        return f"malformed {COMPLETE_MARKER} marker"
    if marker.get("step") != step:
        return f"{COMPLETE_MARKER} marker is for step {marker.get('step')}, folder is step {step}"
    for rel, meta in marker["files"].items():
        p = folder / rel
        try:
            size = p.stat().st_size
        except FileNotFoundError:
            return f"missing file {rel}"
        if not isinstance(meta, dict):
            return f"malformed {COMPLETE_MARKER} entry for {rel}"
        if size != meta.get("size"):
            return f"{rel} is {size} bytes, marker says {meta.get('size')}"
        if verify_hashes and _sha256_file(p) != meta.get("sha256"):
            return f"{rel} sha256 differs from the marker"
    return None


def list_checkpoints(
    checkpoints_dir: Path | str, pattern: str = DEFAULT_PATTERN, *, verify_hashes: bool = False
) -> list[CheckpointInfo]:
    """Every checkpoint folder matching ``pattern``, oldest step first, complete or not.

    Temp folders (``.tmp-*``) are not checkpoints and are never listed; a
    missing ``checkpoints_dir`` lists as empty.
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    found: list[CheckpointInfo] = []
    for p in root.glob(pattern):
        if not p.is_dir() or is_tmp_name(p.name):
            continue
        step = _step_from_name(p.name)
        if step is None:
            continue
        why = check_complete(p, step, verify_hashes=verify_hashes)
        found.append(CheckpointInfo(step=step, path=p, complete=why is None, why_incomplete=why))
    found.sort(key=lambda c: (c.step, c.path.name))
    return found


def find_resume_point(
    checkpoints_dir: Path | str, pattern: str = DEFAULT_PATTERN, *, verify_hashes: bool = False
) -> tuple[CheckpointInfo | None, list[CheckpointInfo]]:
    """The newest complete checkpoint, and the newer incomplete ones passed over (newest first).

    The skipped list is for the caller to tell the user *why* training restarts
    from an older step than they might expect.
    """
    skipped: list[CheckpointInfo] = []
    for info in reversed(list_checkpoints(checkpoints_dir, pattern, verify_hashes=verify_hashes)):
        if info.complete:
            return info, skipped
        skipped.append(info)
    return None, skipped


def latest_complete(
    checkpoints_dir: Path | str, pattern: str = DEFAULT_PATTERN, *, verify_hashes: bool = False
) -> CheckpointInfo | None:
    return find_resume_point(checkpoints_dir, pattern, verify_hashes=verify_hashes)[0]


def prune(checkpoints_dir: Path | str, keep_last: int, pattern: str = DEFAULT_PATTERN) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints; returns what was removed.

    Also removes ``.tmp-*`` leftovers of crashed saves, and incomplete folders
    older than the newest complete checkpoint (they can never be resumed
    from).  Newer incomplete folders are kept: one may be a save in progress
    by a non-atomic saver, or evidence worth looking at.  Call it only when no
    save is in progress in this folder.
    """
    if keep_last < 0:
        raise ValueError("keep_last must be >= 0")
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    removed: list[Path] = []
    for p in sorted(root.iterdir()):
        if is_tmp_name(p.name):
            _remove(p)
            removed.append(p)
    infos = list_checkpoints(root, pattern)
    complete = [c for c in infos if c.complete]
    newest_complete = complete[-1].step if complete else None
    doomed = complete[: max(0, len(complete) - keep_last)]
    if newest_complete is not None:
        doomed += [c for c in infos if not c.complete and c.step < newest_complete]
    for c in sorted(doomed, key=lambda c: c.step):
        _remove(c.path)
        removed.append(c.path)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)
