"""What is in the jobs folder right now: spec file -> sha256, job name, priority, dependencies.

Functions and one small value-keeping class, no daemon state. The daemon rescans after every
wake-up because filesystem events are only hints: they coalesce, arrive for editors' temp
files, and are lost when the kernel queue overflows, while the folder's content is the truth.
A spec *version* is the sha256 of the file's bytes, the same hash `load_job` records.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from runner.spec import JobSpecError, SpecIssue, parse_job, read_toml
from runner.spec.limits import MAX_JOB_FILE_BYTES

__all__ = [
    "Settler",
    "SpecFile",
    "SpecInfo",
    "fallback_job_name",
    "inspect_spec",
    "is_spec_path",
    "job_dependencies",
    "scan_folder",
]

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class SpecFile:
    """One job file as read in one scan; `data` is kept so the version queued is the one hashed."""

    path: str  # relative to the jobs folder, '/'-separated: the key of a spec file
    sha256: str
    data: bytes = field(repr=False, compare=False)


@dataclass(frozen=True)
class SpecInfo:
    """What the daemon needs from a spec: who it is, where it goes in the queue, what it waits for."""

    job: str
    priority: int = 0
    depends_on: tuple[str, ...] = ()
    errors: tuple[SpecIssue, ...] = ()

    @property
    def valid(self) -> bool:
        return not self.errors


def is_spec_path(relative: str) -> bool:
    """A job file: `*.toml`, with no hidden part (editor swap/temp files, `.git`, `.runner`)."""
    parts = relative.split("/")
    return relative.endswith(".toml") and not any(p.startswith((".", "#")) or p.endswith("~") for p in parts)


def scan_folder(jobs_dir: Path) -> dict[str, SpecFile]:
    """Every job file under `jobs_dir` (recursively, like `runner validate DIR`), read and hashed.

    A file that vanishes or cannot be read between listing and reading is left out: its
    deletion (or the next change) wakes the daemon again. A folder that cannot be listed raises
    OSError instead of reading as empty: an unmounted network share is not "every job deleted".
    """
    if not jobs_dir.is_dir():
        raise FileNotFoundError(f"jobs folder {jobs_dir} is missing or not a folder")
    found: dict[str, SpecFile] = {}

    def fail(error: OSError) -> None:
        raise error

    for dirpath, dirnames, filenames in os.walk(jobs_dir, onerror=fail):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            relative = Path(full).relative_to(jobs_dir).as_posix()
            if not is_spec_path(relative):
                continue
            try:
                with open(full, "rb") as handle:
                    data = handle.read(MAX_JOB_FILE_BYTES + 1)  # a larger file is invalid: not read whole
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
            found[relative] = SpecFile(relative, hashlib.sha256(data).hexdigest(), data)
    return found


def job_dependencies(source: str) -> tuple[str, ...]:
    """The jobs a model source waits for: `job:NAME` -> (NAME,); anything else -> ()."""
    scheme, colon, rest = source.strip().partition(":")
    return (rest.strip(),) if colon and scheme == "job" and rest.strip() else ()


def inspect_spec(jobs_dir: Path, spec: SpecFile) -> SpecInfo:
    """Validate one version (the full `runner validate` check) and pull out the queue facts."""
    path = jobs_dir / spec.path
    stem = Path(spec.path).stem
    try:
        job = parse_job(spec.data, display=str(path), default_name=stem, path=path)
    except JobSpecError as exc:
        return SpecInfo(job=fallback_job_name(spec.data, stem), errors=tuple(exc.issues))
    return SpecInfo(job=job.name, priority=job.spec.priority, depends_on=job_dependencies(job.spec.model.source))


def fallback_job_name(data: bytes, stem: str) -> str:
    """A run folder name for an invalid spec: its `name` if readable and valid, else the file stem."""
    try:
        name = read_toml(data, display=stem)[0].get("name")  # bounded: never the parser's worst case
    except JobSpecError:
        name = None
    if isinstance(name, str) and _JOB_NAME.fullmatch(name):
        return name
    if _JOB_NAME.fullmatch(stem):
        return stem
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).lstrip("-._")[:64]
    return cleaned or "unnamed"


class Settler:
    """Acts on a file only once its bytes have stayed the same for a quiet period.

    Debouncing events is not enough: a slow writer (network copy, `cat > x.toml`) can pause
    longer than the debounce, and on a network filesystem the events come late or not at all.
    Content-based, so it needs no clock agreement with a file server (mtimes are not used).
    """

    def __init__(self) -> None:
        self._first_seen: dict[str, tuple[str, float]] = {}

    def wait(self, path: str, sha256: str, now: float, quiet: float) -> float:
        """Seconds until `path` with this content counts as settled (0: it does now)."""
        seen = self._first_seen.get(path)
        if seen is None or seen[0] != sha256:
            self._first_seen[path] = (sha256, now)
            return quiet if quiet > 0 else 0.0
        return max(0.0, seen[1] + quiet - now)

    def forget(self, path: str) -> None:
        self._first_seen.pop(path, None)

    def keep_only(self, paths: set[str]) -> None:
        """Drop what is known about files that are gone."""
        for path in list(self._first_seen):
            if path not in paths:
                del self._first_seen[path]
