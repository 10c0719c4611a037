"""The daemon's own files: its lock, what it has seen, and requests from the CLI.

Layout (`state_dir`, default `<jobs folder's parent>/.runner/watch-<jobs folder name>/`)::

    lock          flock'ed by the running daemon; never replaced (a new inode would be a new lock)
    daemon.json   who holds the lock: pid, host, start time, folders, command line
    state.json    per spec file the version last acted on and its run; the seen-order counter;
                  the queue as last computed (for people; the run folders are the truth)
    requests/     `runner cancel` requests, one file each, deleted once applied

Beside the jobs folder rather than in it, so writing state never wakes the daemon, and keyed
by the jobs folder rather than by the runs root, since "one daemon per jobs folder" is the
rule the lock enforces. The folder is named after the jobs folder's real path (symlinks
resolved), so a second daemon reaching the same folder through another path meets the same lock.

In the runs folder, `.watchers/<key>.lock` and `<key>.json` (key: a hash of the real jobs folder
path) say which daemons write runs there: a second daemon of the same jobs folder is refused
there too, whatever its `--state-dir`, and one of another jobs folder is warned about. Every file
is written with runner.fsutil (temp + fsync + rename), so a kill at any instant leaves the previous
or the next version, never a torn one.

The per-run state (queued, running, ...) is not here: it lives in each run's status.json, and
the daemon rebuilds its queue from the run folders it owns when it starts.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_json
from runner.outputs.runs import LOG_FILE, SPEC_SNAPSHOT  # the run folder's names, kept importable from here

try:
    import fcntl
except ImportError:  # pragma: no cover - the daemon is POSIX-only
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "LOG_FILE",
    "SPEC_SNAPSHOT",
    "STATE_FORMAT",
    "WATCHERS",
    "CancelRequest",
    "DaemonLock",
    "KnownFile",
    "Locked",
    "WatchState",
    "default_state_dir",
    "load_state",
    "other_watchers",
    "pending_requests",
    "request_cancel",
    "save_state",
    "watcher_lock",
]

STATE_FORMAT = 1


WATCHERS = ".watchers"  # in the runs folder: one lock per jobs folder whose daemon writes runs there


def default_state_dir(jobs_dir: Path) -> Path:
    """`.runner/watch-<name>` beside the real jobs folder, whatever path (a symlink) names it."""
    jobs_dir = jobs_dir.resolve()
    return jobs_dir.parent / ".runner" / f"watch-{jobs_dir.name}"


class Locked(RuntimeError):
    """Another daemon holds the lock of this jobs folder."""

    def __init__(self, lock_path: Path, holder: dict[str, Any] | None) -> None:
        self.holder = holder
        if holder:
            who = (
                f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}, "
                f"watching {holder.get('jobs_dir')} (command: {' '.join(holder.get('command') or [])})"
            )
        else:
            who = "a process that has not written daemon.json yet"
        super().__init__(f"another `runner watch` holds the lock {lock_path}: {who}; stop it first")


class DaemonLock:
    """One daemon per jobs folder: an flock on `state_dir/lock`, released by the kernel on exit;
    `daemon.json` beside it says who holds it (other names: the runs folder's watcher locks)."""

    def __init__(self, state_dir: Path, *, name: str = "lock", info: str = "daemon.json") -> None:
        self.state_dir = state_dir
        self.path = state_dir / name
        self.info_path = state_dir / info
        self._fd: int | None = None

    def try_acquire(self) -> bool:
        """Take the lock if it is free; False if another process holds it."""
        assert fcntl is not None, "runner watch needs a POSIX system (fcntl)"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self, info: dict[str, Any], *, wait: float = 1.0) -> None:
        """Take the lock (retrying for `wait` seconds: `runner cancel` holds it for a moment when no
        daemon runs) and publish who holds it; `Locked` if another daemon does."""
        deadline = time.monotonic() + wait
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                raise Locked(self.path, self.holder())
            time.sleep(0.05)
        atomic_write_json(self.info_path, info)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def holder(self) -> dict[str, Any] | None:
        """The last holder's daemon.json (it may be stale if no daemon runs now)."""
        try:
            data = json.loads(self.info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None


def watcher_lock(runs_root: Path, jobs_dir: Path) -> DaemonLock:
    """The runs folder's lock for the daemon of this (real) jobs folder."""
    key = hashlib.sha256(str(jobs_dir.resolve()).encode()).hexdigest()[:16]
    return DaemonLock(runs_root / WATCHERS, name=f"{key}.lock", info=f"{key}.json")


def other_watchers(runs_root: Path, mine: DaemonLock) -> list[dict[str, Any]]:
    """Who else runs a daemon writing to this runs folder now (from another jobs folder)."""
    assert fcntl is not None, "runner watch needs a POSIX system (fcntl)"
    found = []
    for path in sorted((runs_root / WATCHERS).glob("*.lock")):
        if path == mine.path:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # free: nobody holds it now
        except BlockingIOError:
            found.append(DaemonLock(path.parent, name=path.name, info=f"{path.stem}.json").holder() or {})
        finally:
            os.close(fd)  # (and with it the probe's shared lock)
    return found


def holder_info(jobs_dir: Path, runs_root: Path) -> dict[str, Any]:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "jobs_dir": str(jobs_dir),
        "runs_root": str(runs_root),
        "command": list(sys.argv),
    }


@dataclass
class KnownFile:
    """The version of a spec file the daemon last acted on (queued it or recorded it invalid)."""

    sha256: str
    job: str
    run_id: str
    seen: str  # when this version was first seen (UTC, ISO-8601)
    seq: int  # the daemon-wide order in which versions were first seen
    valid: bool = True  # False: recorded invalid (then it does not hold its job name against other files)


@dataclass
class WatchState:
    files: dict[str, KnownFile] = field(default_factory=dict)
    next_seq: int = 1
    queue: list[dict[str, Any]] = field(default_factory=list)  # informational snapshot
    dirty: bool = field(default=False, compare=False, repr=False)  # changed since last saved (not saved itself)

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        self.dirty = True
        return seq


def load_state(path: Path) -> WatchState:
    """The saved state, or a fresh one if there is none (a lost state.json costs no duplicate runs:
    the daemon then compares each file with its job's newest run)."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return WatchState()
    except (OSError, ValueError) as exc:
        print(f"warning: ignoring unreadable {path}: {exc}", file=sys.stderr)
        return WatchState()
    files = {name: KnownFile(**entry) for name, entry in (raw.get("files") or {}).items()}
    return WatchState(files=files, next_seq=int(raw.get("next_seq", 1)), queue=list(raw.get("queue") or []))


def save_state(path: Path, state: WatchState) -> None:
    atomic_write_json(
        path,
        {
            "format": STATE_FORMAT,
            "files": {name: asdict(known) for name, known in sorted(state.files.items())},
            "next_seq": state.next_seq,
            "queue": state.queue,
        },
    )


@dataclass(frozen=True)
class CancelRequest:
    job: str
    run_id: str
    path: Path

    @property
    def key(self) -> str:
        return f"{self.job}/{self.run_id}"


def request_cancel(state_dir: Path, job: str, run_id: str) -> Path:
    """Leave a cancel request for the daemon (it applies it on its next wake-up or start)."""
    path = state_dir / "requests" / f"cancel--{job}--{run_id}.json"
    atomic_write_json(
        path, {"job": job, "run_id": run_id, "requested": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "by_pid": os.getpid()}
    )
    return path


def pending_requests(state_dir: Path) -> list[CancelRequest]:
    folder = state_dir / "requests"
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        if name.startswith("cancel--") and name.endswith(".json"):
            job, _, run_id = name[len("cancel--") : -len(".json")].rpartition("--")  # run ids have no "--"
            if job and run_id:
                found.append(CancelRequest(job, run_id, folder / name))
    return found
