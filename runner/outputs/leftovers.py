"""What a killed attempt leaves half-written in its run folder, and its removal.

Complete-or-absent (runner.fsutil, runner.outputs.checkpoints) means a kill never leaves a torn
result under a result's name: half-written things only exist under names nobody reads as results,

* the Trainer's staging folder (`.trainer/`, where checkpoint-N is written before it is marked
  complete and renamed into checkpoints/),
* temp names of atomic writes (`.tmp-<name>-<hex>`, e.g. `.tmp-adapter-1a2b3c4d` for the final
  adapter, `.tmp-status.json-...`), anywhere in the run folder.

Nothing half-written must outlive the attempt either: `remove_leftovers` is called once no process
works on the run any more -- when an attempt ends (the daemon, a Slurm submitter, `runner run`
itself), when a daemon takes over a run a killed one left, and before an attempt resumes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from runner.fsutil import file_lock, is_tmp_name
from runner.outputs.runs import STAGING_DIR, run_paths
from runner.outputs.status import StatusFile

__all__ = ["find_leftovers", "remove_leftovers"]


def find_leftovers(run_dir: Path | str) -> list[Path]:
    """The staging folder and every temp-named entry under the run folder (not inside one another)."""
    run_dir = Path(run_dir)
    found: list[Path] = []
    for folder, dirs, files in os.walk(run_dir):
        here = Path(folder)
        for name in sorted(dirs):
            if is_tmp_name(name) or (here == run_dir and name == STAGING_DIR):
                found.append(here / name)
        dirs[:] = [d for d in dirs if here / d not in found and not os.path.islink(here / d)]
        found.extend(here / name for name in sorted(files) if is_tmp_name(name))
    return found


def remove_leftovers(run_dir: Path | str) -> list[str]:
    """Remove what `find_leftovers` finds; returns the removed names, relative to the run folder.

    Call it only when no process works on the run. It holds the status file's lock meanwhile, so a
    status write by someone else (`runner cancel`, a daemon) never loses its temp file to it.
    """
    run_dir = Path(run_dir)
    if not find_leftovers(run_dir):
        return []
    removed = []
    with file_lock(StatusFile(run_paths(run_dir).status).lock_path):
        for path in find_leftovers(run_dir):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path.relative_to(run_dir).as_posix())
    return removed
