"""`POST /jobs`: a job file checked like `runner validate`, then written into the jobs folder.

* Cheap bounds first (the spec loader's pre-scan, `runner.spec.prescan`): a body nesting deeper or
  holding more keys than the limits is refused before any parser builds anything from it.
* Which file a job lives in comes from `JobIndex`: the folder is listed on each submission (new
  and removed files are seen at once), the file a submission writes (and `<job>.toml`) is checked
  on its own every time, and the other known files are stat-ed a batch per submission, in turn;
  a file is read and its name parsed only when it is new or changed. So a submission costs about
  the same with 20 or 2,000 files in the folder, where it used to read and parse every one of
  them. (A file edited in place to take another job's name is seen after a few submissions; until
  then the write re-checks its own target, so nothing is overwritten unseen.)
* Concurrent submissions of one job: each is checked against the folder as it was when the
  request arrived; if another submission (or an editor) changed that job's file in between,
  this one gets 409 and nothing is written (the order is `runner.api.guard.arrival`: when the
  request head was complete versus when the write happened). Of N submissions racing to create a job, exactly one
  creates it; a later submission (one that saw the file) replaces it as before.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.api.confine import job_paths_outside
from runner.api.errors import ApiError
from runner.api.guard import arrival
from runner.api.settings import ApiSettings
from runner.fsutil import atomic_write_bytes
from runner.outputs.runs import list_runs, read_status
from runner.spec import JobSpecError, parse_job
from runner.spec.prescan import prescan
from runner.watch.scan import fallback_job_name, is_spec_path

__all__ = ["JOB_NAME", "JobIndex", "submit_job"]

JOB_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RESTAT_BATCH = 64  # known files stat-ed per submission, in turn, to see edits in place
REBUILD_AFTER = 60.0  # seconds between rebuilds of the index from a fresh listing


@dataclass(frozen=True)
class _Entry:
    stamp: tuple[int, int, int, int]  # inode, size, mtime, ctime (ns)
    job: str
    sha256: str


class JobIndex:
    """Job name -> the files of the jobs folder that define it (the rules of `runner.watch.scan`)."""

    def __init__(self, jobs_dir: Path) -> None:
        self.jobs_dir = jobs_dir
        self._entries: dict[str, _Entry] = {}  # job file (relative, '/'-separated) -> what it defines
        self._folders: dict[str, tuple[frozenset[str], set[str]]] = {}  # prefix -> (names, sub-folders)
        self._written: dict[str, int] = {}  # file -> arrival number taken when a submission last wrote it
        self._statted = -1e9  # when the index was last rebuilt from a fresh listing (monotonic)
        self._cursor = 0  # where the next batch of stat-ing known files starts
        self.lock = threading.Lock()  # held while deciding and writing; also guards the tables

    def refresh(self) -> None:
        """List each folder and compare the names with the last listing (set operations, in C): only
        new names are looked at, a new job file is read and its name parsed. Edits in place of
        known files are caught by stat-ing `RESTAT_BATCH` of them per refresh, in turn (and all of
        them, from a fresh listing, once a minute)."""
        previous = self._entries
        if time.monotonic() - self._statted >= REBUILD_AFTER:
            self._statted = time.monotonic()
            self._folders, self._entries = {}, {}
        folders: dict[str, tuple[frozenset[str], set[str]]] = {}
        pending = [""]
        while pending:
            prefix = pending.pop()
            path = os.path.join(self.jobs_dir, prefix)
            try:
                names = frozenset(os.listdir(path))
            except OSError:
                continue
            old_names, old_dirs = self._folders.get(prefix, (frozenset(), set()))
            dirs = old_dirs & names
            for name in old_names - names:
                self._entries.pop(prefix + name, None)
            for name in names - old_names:
                self._add(prefix, path, name, dirs, previous)
            folders[prefix] = (names, dirs)
            pending.extend(f"{prefix}{d}/" for d in dirs)
        gone = self._folders.keys() - folders.keys()
        if gone:
            self._entries = {
                rel: e for rel, e in self._entries.items() if rel.rpartition("/")[0] + "/" not in gone or "/" not in rel
            }
        self._folders = folders
        self._restat_some()

    def _restat_some(self) -> None:
        known = list(self._entries)
        if not known:
            return
        start = self._cursor % len(known)
        for relative in (known[start:] + known[:start])[:RESTAT_BATCH]:
            self.update(relative)
        self._cursor = start + RESTAT_BATCH

    def _add(self, prefix: str, path: str, name: str, dirs: set[str], previous: dict[str, _Entry]) -> None:
        if name.startswith("."):
            return
        relative, full = prefix + name, os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            dirs.add(name)
        elif is_spec_path(relative):
            entry = self._current(full, relative, previous.get(relative))
            if entry is not None:
                self._entries[relative] = entry

    def _current(self, path: str, relative: str, known: _Entry | None) -> _Entry | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        return known if known is not None and known.stamp == stamp else self._read(path, relative, stamp)

    def update(self, relative: str) -> None:
        """Bring one file's entry up to date (it is new, changed or gone)."""
        fresh = self._current(str(self.jobs_dir / relative), relative, self._entries.get(relative))
        if fresh is None:
            self._entries.pop(relative, None)
        else:
            self._entries[relative] = fresh

    @staticmethod
    def _read(path: str, relative: str, stamp: tuple[int, int, int, int]) -> _Entry | None:
        try:
            data = Path(path).read_bytes()
        except OSError:
            return None
        return _Entry(stamp, fallback_job_name(data, Path(relative).stem), hashlib.sha256(data).hexdigest())

    def owners(self, job: str) -> list[str]:
        return sorted(rel for rel, entry in self._entries.items() if entry.job == job)

    def sha256(self, relative: str) -> str | None:
        entry = self._entries.get(relative)
        return entry.sha256 if entry else None

    def target(self, job: str, named_inside: bool) -> tuple[Path, str | None]:
        """Where the job goes and the sha256 of what is there now (None: a new file); 409 on a clash.

        The file that already defines the job, else `<job>.toml`; a clash: another file defines the
        job under another file name while the submitted text has no `name` of its own, `<job>.toml`
        belongs to another job, or the folder has two files for this job.
        """
        self.refresh()
        self.update(f"{job}.toml")
        owners = self.owners(job)
        if len(owners) > 1:
            raise ApiError(409, f"job '{job}' is defined by several files ({', '.join(owners)}); keep one of them")
        if owners:
            owner = owners[0]
            if named_inside or Path(owner).stem == job:
                return self.jobs_dir / owner, self.sha256(owner)
            raise ApiError(
                409,
                f"job '{job}' is defined by {owner}; add name = \"{job}\" to the submitted file "
                "so it can replace that file's content",
            )
        relative = f"{job}.toml"
        if relative in self._entries:
            raise ApiError(
                409,
                f"{relative} in the jobs folder defines job '{self._entries[relative].job}', "
                f"not '{job}'; choose another name",
            )
        return self.jobs_dir / relative, None

    def write(self, target: Path, data: bytes, seen: str | None, arrived: int) -> bool:
        """Write `data` unless the file changed since the request arrived; False: it was already `data`."""
        relative = target.relative_to(self.jobs_dir).as_posix()
        with self.lock:
            self.update(relative)
            now = self.sha256(relative)
            if now == hashlib.sha256(data).hexdigest():
                return False
            if now != seen or self._written.get(relative, 0) > arrived:
                job = Path(relative).stem
                raise ApiError(
                    409,
                    f"{relative} was {'created' if seen is None else 'changed'} by another "
                    "submission while this one was being checked; nothing was written. Look at "
                    f"GET /jobs/{job} and submit again to replace it",
                )
            atomic_write_bytes(target, data)
            self._written[relative] = arrival()  # requests that arrived before this write conflict with it
            st = target.stat()
            self._entries[relative] = _Entry(
                (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                fallback_job_name(data, target.stem),
                hashlib.sha256(data).hexdigest(),
            )
            return True


def _prescan(settings: ApiSettings, data: bytes) -> None:
    """The spec loader's pre-scan (`runner.spec.prescan`, the limits of `runner.spec.limits`), plus
    this API's own `--api-job-max-depth` / `--api-job-max-keys` when set lower: 422 before any parser
    builds anything from the body."""
    text = data.decode("utf-8", "replace").removeprefix("\ufeff")
    shape = prescan(text)
    limits = settings.limits
    if shape.problem is not None:
        offset, message = shape.problem
    elif shape.depth > limits.job_max_depth:
        offset, message = (
            len(text),
            (
                f"nested {shape.depth} levels deep; this server takes job files at most "
                f"{limits.job_max_depth} deep (--api-job-max-depth)"
            ),
        )
    elif shape.keys > limits.job_max_keys:
        offset, message = (
            len(text),
            (
                f"{shape.keys} keys; this server takes job files of at most "
                f"{limits.job_max_keys} keys (--api-job-max-keys)"
            ),
        )
    else:
        return
    line = text.count("\n", 0, offset) + 1
    raise ApiError(
        422,
        f"the job file is refused before parsing: {message}; nothing was written",
        errors=[
            {
                "file": "submitted",
                "line": line,
                "column": offset - (text.rfind("\n", 0, offset) + 1) + 1,
                "path": "",
                "message": message,
            }
        ],
    )


def _count_files(raw: dict[str, Any], limit: int) -> None:
    data = found if isinstance(found := raw.get("data"), dict) else {}
    count = sum(len(v) if isinstance(v, list) else 1 for v in (data.get("train"), data.get("eval")) if v is not None)
    if count > limit:
        raise ApiError(
            422,
            f"the job file names {count} data files (data.train + data.eval); a job submitted "
            f"through the API may name at most {limit} (--api-max-files); nothing was written",
        )


def _job_name(data: bytes, name: str | None, max_files: int) -> tuple[str | None, bool, bool]:
    """(the job name, whether the file names it, whether the text parsed)."""
    try:
        raw: dict[str, Any] | None = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, RecursionError):
        raw = None  # parse_job below reports where
    if raw is not None:
        _count_files(raw, max_files)
    declared = raw.get("name") if raw is not None and isinstance(raw.get("name"), str) else None
    if declared is not None and name is not None and declared != name:
        raise ApiError(
            422,
            f"the file says name = \"{declared[:100]}\" but the request asks for job '{name}'; "
            "drop ?name= or make them agree",
        )
    if name is not None and not re.fullmatch(JOB_NAME, name):
        raise ApiError(
            422,
            f"?name={name[:100]!r} is not a valid job name (letters, digits, '.', '_', '-'; "
            "starting with a letter or digit; at most 64)",
        )
    job_name = declared or name
    if job_name is None and raw is not None:
        raise ApiError(422, 'the job has no name: set name = "..." in the file or pass ?name=NAME')
    return job_name, declared is not None, raw is not None


def submit_job(
    settings: ApiSettings, index: JobIndex, data: bytes, name: str | None, arrived: int
) -> tuple[int, dict[str, Any]]:
    """Validate a job file like `runner validate`, then write it atomically into the jobs folder.

    Idempotent: the same bytes again change nothing (200); a new or changed file is written
    (201) and the daemon queues it as it queues any file it finds there.
    """
    _prescan(settings, data)
    job_name, named_inside, _ = _job_name(data, name, settings.limits.max_files)
    seen: str | None = None
    if job_name is not None and re.fullmatch(JOB_NAME, job_name):
        with index.lock:
            target, seen = index.target(job_name, named_inside)
    else:  # unnamed and unparseable, or an invalid name: parse_job says what is wrong, where
        stem = job_name if job_name and re.fullmatch(r"[^/\\\x00]{1,64}", job_name) else "submitted"
        target = settings.jobs_dir / f"{stem}.toml"
    display = target.relative_to(settings.jobs_dir.parent).as_posix()
    limit = settings.limits.max_errors
    try:
        job = parse_job(data, display=display, default_name=job_name or "submitted", path=target)
    except JobSpecError as exc:
        raise ApiError(
            422,
            f"{display} is not a valid job file ({len(exc.issues)} problem(s)); nothing was written",
            errors=exc.issues,
            max_errors=limit,
        ) from None
    except RecursionError:
        raise ApiError(422, f"{display} nests too deeply to be read; nothing was written") from None
    outside = job_paths_outside(job, data.decode("utf-8"), display, settings.data_roots, located=limit)
    if outside:
        raise ApiError(
            403,
            f"{display} names paths outside the allowed data roots or unusable paths; nothing was written",
            errors=outside,
            max_errors=limit,
        )
    created = index.write(target, data, seen, arrived)
    sha256 = hashlib.sha256(data).hexdigest()
    existing = None
    for run in reversed(list_runs(settings.runs_root, job.name)):
        status = read_status(run)
        if status is not None and status.spec_sha256 == sha256:
            existing = {"run_id": run.name, "state": str(status.state)}
            break
    body = {
        "job": job.name,
        "file": display,
        "sha256": sha256,
        "created": created,
        "status_url": f"/jobs/{job.name}",
        "existing_run": existing,
        "detail": (
            "written; the daemon queues it once it sees the file"
            if created
            else "unchanged: the jobs folder already holds this exact file"
        ),
    }
    return (201 if created else 200), body
