"""`runner watch`: the loop that turns a folder of job files into runs, one at a time.

Shape of the loop (single-threaded; watchdog's thread only writes a byte to a wake-up pipe):

    wait (select on the wake-up pipe + the running child's pidfd, with the next deadline)
    -> reap a child that exited and write its final state (only now: the process is gone)
    -> rescan the folder if an event burst went quiet, a file is due to settle, or periodically
    -> apply `runner cancel` requests
    -> start the next queued run if nothing runs

Signals only set flags (the wake-up pipe gets their number through `signal.set_wakeup_fd`).
Every state change goes through `StatusFile.transition`; the daemon's own bookkeeping goes to
`runner.watch.store`. Policies (documented in README.md, "runner watch"):

* a spec version is queued once: the daemon remembers per file the sha256 it last acted on;
* a newer version of a file cancels that file's runs that have not started ("superseded");
  a started one (running or interrupted) finishes, and the new version runs after it, unless
  `--on-change restart`, which stops the running version (it ends `cancelled`);
* a deleted file's runs that have not started are cancelled; started ones finish;
* an interrupted run is queued again (attempt + 1) up to `--max-attempts`, then fails with
  reason `interrupted`; failures inside a job are never retried.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from runner.fsutil import atomic_write_bytes
from runner.outputs.runs import is_pid_alive, list_runs, new_run_dir, read_status, run_paths
from runner.outputs.status import (
    FailureClass,
    IllegalTransition,
    JobState,
    Status,
    StatusFile,
    format_utc,
    new_status,
    utc_now,
)
from runner.pipeline import OUTCOME_FILE, read_outcome
from runner.spec import SpecIssue
from runner.watch.exits import Final, Intent, classify_exit
from runner.watch.queue import Decision, DepState, Item, decide, queue_order
from runner.watch.scan import Settler, SpecFile, SpecInfo, fallback_job_name, inspect_spec, scan_folder
from runner.watch.store import (
    LOG_FILE,
    SPEC_SNAPSHOT,
    DaemonLock,
    KnownFile,
    Locked,
    WatchState,
    holder_info,
    load_state,
    pending_requests,
    save_state,
)

if TYPE_CHECKING:
    from runner.slurm.executor import SlurmExecutor, Submission

__all__ = ["Daemon", "Locked", "WatchConfig", "cancel_waiting_run", "process_start_ticks"]


@dataclass(frozen=True)
class WatchConfig:
    jobs_dir: Path
    runs_root: Path
    state_dir: Path
    poll: float | None = None  # seconds between polls (network filesystems); None: inotify & co
    debounce: float = 0.1  # quiet time after the last event before a rescan
    max_delay: float = 1.0  # rescan at the latest this long after the first event of a burst
    settle: float = 0.3  # a valid spec keeps its bytes this long before it is queued
    invalid_grace: float = 1.5  # an invalid one this long before it is recorded (a partial write?)
    rescan_every: float = 30.0  # a full rescan even without events: lost events cost at most this
    max_attempts: int = 5
    on_change: str = "queue"  # "queue" | "restart"
    registry: Path | None = None  # passed to every job, as `runner run --registry`
    allow_remote_code: bool = False  # passed to every job, as `runner run --allow-remote-code`
    python: str = field(default_factory=lambda: sys.executable)
    executor: str = "local"  # "local": one child process at a time | "slurm": every ready run is an sbatch job
    slurm_poll: float = 5.0  # seconds between two squeue calls about the submitted jobs


@dataclass
class Tracked:
    """A run this daemon owns that has not reached a terminal state."""

    run_dir: Path
    job: str
    spec_path: str
    sha256: str
    seq: int
    priority: int
    depends_on: tuple[str, ...]

    @property
    def key(self) -> str:
        return f"{self.job}/{self.run_dir.name}"

    @property
    def status_file(self) -> StatusFile:
        return StatusFile(run_paths(self.run_dir).status)

    def item(self) -> Item:
        return Item(self.key, self.job, self.priority, self.seq, self.depends_on)


@dataclass
class Active:
    """A process working on a run: our child, or an orphan of a daemon that died (proc None)."""

    tracked: Tracked
    pid: int
    proc: subprocess.Popen[bytes] | None
    pidfd: int | None
    intent: Intent | None = None
    signalled: bool = False
    killed: bool = False
    lifeline: int | None = None  # write end of the child's parent pipe: closed by the kernel if we die
    slurm: Submission | None = None  # a Slurm job instead of a process (pid 0, proc None): runner.slurm


def process_start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _never_started(status: Status) -> bool:
    return not any(entry.to_state is JobState.RUNNING for entry in status.history)


def cancel_waiting_run(status_file: StatusFile, error: str) -> Status | None:
    """Cancel a run no process is working on (queued, or interrupted via queued); None if it is not waiting."""
    status = status_file.read()
    if status is None or status.state not in (JobState.QUEUED, JobState.INTERRUPTED):
        return None
    if status.state is JobState.INTERRUPTED:
        status_file.transition(JobState.QUEUED)
    return status_file.transition(JobState.CANCELLED, reason=FailureClass.CANCELLED_BY_USER, error=error)


def _log_tail(path: Path, lines: int = 15, limit: int = 64 * 1024) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - limit))
            text = handle.read().decode("utf-8", "replace")
    except OSError:
        return ""
    text = text.replace("\r", "\n")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


class Daemon:
    def __init__(self, config: WatchConfig) -> None:
        self.config = config
        self.jobs_dir = config.jobs_dir.absolute()
        self.runs_root = config.runs_root.absolute()
        self.state_dir = config.state_dir.absolute()
        self.lock = DaemonLock(self.state_dir)
        self.state = WatchState()
        self.tracked: dict[str, Tracked] = {}
        self.active: list[Active] = []
        self.settler = Settler()
        self._infos: dict[str, SpecInfo] = {}  # path + sha256 -> inspection: a version is validated once
        self._waiting: dict[str, str | None] = {}  # key -> the "waiting for" shown by runner status
        self._stop_signals = 0
        self._stopping = False
        self._rescan = True
        self._first_event: float | None = None
        self._last_event = 0.0
        self._last_scan = 0.0
        self._recheck_at: float | None = None
        self._state_dirty = False
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._observer: Any = None
        self.slurm: SlurmExecutor | None = None  # made on first use: --executor slurm, or Slurm runs to follow
        if config.executor == "slurm":
            self._slurm_executor()

    # ------------------------------------------------------------------ lifecycle

    def run(self) -> int:
        """Hold the lock and serve until SIGTERM/SIGINT; `Locked` if another daemon holds it."""
        if not self.jobs_dir.is_dir():
            raise FileNotFoundError(f"jobs folder {self.jobs_dir} does not exist")
        self.lock.acquire(holder_info(self.jobs_dir, self.runs_root))
        try:
            with self._signals():
                self.state = load_state(self.state_dir / "state.json")
                self._log(f"watching {self.jobs_dir} (runs in {self.runs_root}, state in {self.state_dir}, "
                          + (f"polling every {self.config.poll:g} s" if self.config.poll else "filesystem events") + ")")
                self._recover()
                self._start_observer()
                try:
                    self._loop()
                finally:
                    self._stop_observer()
            self._save_state()
        finally:
            self.lock.release()
            self.close()
        self._log("stopped")
        return 0

    def close(self) -> None:
        """Release the wake-up pipe (run() does it on exit)."""
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def _loop(self) -> None:
        while True:
            self._drain_wakeups()
            try:
                if self._step():
                    return
            except Exception:  # one bad file or a full disk must not take the daemon (and its job) down
                self._log("unexpected error; carrying on:\n" + traceback.format_exc().rstrip())
                self._rescan = True
                time.sleep(1.0)
            self._wait(self._timeout(time.monotonic()))

    def _step(self) -> bool:
        """One pass over everything that may need doing; True once it is time to exit."""
        now = time.monotonic()
        if self._stop_signals and not self._stopping:
            self._begin_shutdown()
        if self._stop_signals > 1:
            self._force_stop()
        self._reap()
        if self._stopping and not any(a.proc is not None for a in self.active):
            return True
        if self._scan_due(now):
            self._scan(now)
        self._apply_requests()
        if not self._stopping:
            self._schedule()
        if self._state_dirty:
            self._save_state()
        return False

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self._stop_signals += 1

        def rescan(_signum: int, _frame: FrameType | None) -> None:
            self._rescan = True

        def wake(_signum: int, _frame: FrameType | None) -> None:
            pass  # the wake-up fd does the work; requests are read on every pass

        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)}
        old_fd = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, rescan)
        signal.signal(signal.SIGUSR1, wake)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)

    def _begin_shutdown(self) -> None:
        """First SIGTERM/SIGINT: the running job checkpoints and is marked interrupted; then exit 0."""
        self._stopping = True
        self._log("stopping: the running job saves a checkpoint first"
                  if any(a.proc is not None for a in self.active) else "stopping")
        if any(a.slurm is not None for a in self.active):
            self._log("the submitted Slurm jobs carry on; the next `runner watch` follows them")
        for active in self.active:
            if active.proc is not None:
                if active.intent is None:
                    active.intent = Intent.SHUTDOWN
                self._signal_child(active)

    def _force_stop(self) -> None:
        """Second signal: do not wait for the checkpoint (it resumes from the previous complete one)."""
        for active in self.active:
            if active.proc is not None and not active.killed:
                self._log(f"{active.tracked.key}: second stop signal, killing it")
                active.killed = True
                try:
                    os.killpg(active.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _signal_child(self, active: Active) -> None:
        """Exactly one SIGTERM per process, to its pid only: the child is in its own session, so a
        Ctrl-C in the daemon's terminal never reaches it, and its own handler saves a checkpoint."""
        if active.slurm is not None:  # scancel: Slurm sends SIGTERM (a checkpoint), then SIGKILL after KillWait
            self._slurm_executor().cancel(active.slurm)
            return
        if active.signalled:
            return
        active.signalled = True
        try:
            os.kill(active.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    # --------------------------------------------------------------- waking up

    def _start_observer(self) -> None:
        from watchdog.events import (
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
            FileClosedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileModifiedEvent,
            FileMovedEvent,
            FileSystemEvent,
            FileSystemEventHandler,
        )

        daemon = self

        class Wake(FileSystemEventHandler):
            """Events are hints: note the time and wake the loop, which rescans the folder."""

            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = [os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")]
                if event.is_directory or any(p.endswith(".toml") for p in paths):
                    daemon._note_event()

        if self.config.poll:
            from watchdog.observers.polling import PollingObserver

            observer: Any = PollingObserver(timeout=self.config.poll)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        # opened / closed-without-write events are left out: the daemon's own reads would wake it.
        interesting = [FileCreatedEvent, FileModifiedEvent, FileDeletedEvent, FileMovedEvent, FileClosedEvent,
                       DirCreatedEvent, DirDeletedEvent, DirMovedEvent]
        observer.schedule(Wake(), str(self.jobs_dir), recursive=True, event_filter=interesting)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=0.2)  # its threads poll with a 1 s timeout; they are daemon threads
            self._observer = None

    def _note_event(self) -> None:  # watchdog's thread
        now = time.monotonic()
        self._last_event = now
        if self._first_event is None:
            self._first_event = now
        self._poke()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"e")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop wakes anyway

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _scan_due(self, now: float) -> bool:
        if self._rescan or now - self._last_scan >= self.config.rescan_every:
            return True
        if self._recheck_at is not None and now >= self._recheck_at:
            return True
        first = self._first_event
        return first is not None and (now - self._last_event >= self.config.debounce or now - first >= self.config.max_delay)

    def _timeout(self, now: float) -> float:
        deadlines = [self._last_scan + self.config.rescan_every]
        if self._recheck_at is not None:
            deadlines.append(self._recheck_at)
        if self._first_event is not None:
            deadlines.append(min(self._last_event + self.config.debounce, self._first_event + self.config.max_delay))
        if any(a.pidfd is None and a.slurm is None for a in self.active):
            deadlines.append(now + 0.5)  # no pidfd (old kernel): poll the process
        if self.slurm is not None and any(a.slurm is not None for a in self.active):
            deadlines.append(self.slurm.next_poll)
        if self.slurm is not None and self.slurm.retry_at > now:
            deadlines.append(self.slurm.retry_at)
        return max(0.0, min(deadlines) - now)

    def _wait(self, timeout: float) -> None:
        fds = [self._wake_r] + [a.pidfd for a in self.active if a.pidfd is not None]
        try:
            select.select(fds, [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; a signal handler may still interrupt
            pass

    # --------------------------------------------------------------- scanning

    def _scan(self, now: float) -> None:
        """Compare the folder with what was last acted on; queue settled new versions."""
        self._rescan = False
        self._first_event = None
        self._last_scan = now
        self._recheck_at = None
        try:
            files = scan_folder(self.jobs_dir)
        except OSError as exc:
            self._log(f"cannot read the jobs folder ({exc}); nothing changed, trying again in 5 s")
            self._recheck_at = now + 5.0
            return
        self.settler.keep_only(set(files))
        owners = {known.job: path for path, known in sorted(self.state.files.items()) if path in files and known.valid}
        for path, spec in sorted(files.items()):
            known = self.state.files.get(path)
            if known is not None and known.sha256 == spec.sha256:
                self.settler.forget(path)
                continue
            info = self._inspect(spec)
            left = self.settler.wait(path, spec.sha256, now, self.config.settle if info.valid else self.config.invalid_grace)
            if left > 0:
                self._recheck_at = min(self._recheck_at or now + left, now + left)
                continue
            self.settler.forget(path)
            owner = owners.get(info.job)
            if owner is not None and owner != path:
                # Never record under a name another file holds: it would become that job's latest run.
                errors = (_conflict(self.jobs_dir / path, info.job, self.jobs_dir / owner),) if info.valid else info.errors
                name = fallback_job_name(b"", Path(path).stem)
                info = SpecInfo(job=name if owners.get(name, path) == path else f"{name[:56]}-invalid", errors=errors)
            elif info.valid:
                owners[info.job] = path
            self._accept(spec, info, known)
        for path in sorted(set(self.state.files) - set(files)):
            self._deleted(path)

    def _inspect(self, spec: SpecFile) -> SpecInfo:
        key = f"{spec.path}\0{spec.sha256}"  # the path matters too: the job name defaults to the stem
        info = self._infos.get(key)
        if info is None:
            info = inspect_spec(self.jobs_dir, spec)
            if len(self._infos) > 4096:
                self._infos.clear()
            self._infos[key] = info
        return info

    def _accept(self, spec: SpecFile, info: SpecInfo, known: KnownFile | None) -> None:
        """A settled new version of a file: one run for it (queued or invalid), older waiting ones superseded."""
        if known is None and self._adopt_existing(spec, info):
            return
        if known is not None:
            self._supersede(spec.path, spec.sha256)
        seq = self.state.take_seq()
        run_dir = self._create_run(spec, info, seq)
        self.state.files[spec.path] = KnownFile(spec.sha256, info.job, run_dir.name, format_utc(utc_now()), seq,
                                                info.valid)
        self._state_dirty = True
        if info.valid:
            self.tracked[f"{info.job}/{run_dir.name}"] = Tracked(
                run_dir, info.job, spec.path, spec.sha256, seq, info.priority, info.depends_on)
            self._log(f"queued {info.job} ({spec.path} {spec.sha256[:12]}, priority {info.priority}) as run {run_dir.name}")
        else:
            self._log(f"invalid {spec.path} ({len(info.errors)} problem(s)); recorded as run {info.job}/{run_dir.name}")

    def _adopt_existing(self, spec: SpecFile, info: SpecInfo) -> bool:
        """A file the daemon has no memory of, whose job's newest run already ran this version
        (state.json lost, or `runner run` ran it): remember that run instead of running it again."""
        runs = list_runs(self.runs_root, info.job)
        status = read_status(runs[-1]) if runs else None
        if status is None or status.spec_sha256 != spec.sha256:
            return False
        watch = status.extra.get("watch") if isinstance(status.extra.get("watch"), dict) else {}
        seq = int(watch.get("seq", 0)) or self.state.take_seq()
        self.state.files[spec.path] = KnownFile(spec.sha256, info.job, runs[-1].name, format_utc(status.created), seq,
                                                status.state is not JobState.INVALID)
        self._state_dirty = True
        self._log(f"{spec.path}: this version already has run {info.job}/{runs[-1].name} ({status.state}); not queued again")
        return True

    def _create_run(self, spec: SpecFile, info: SpecInfo, seq: int) -> Path:
        run_dir = new_run_dir(self.runs_root, info.job)
        atomic_write_bytes(run_dir / SPEC_SNAPSHOT, spec.data)
        watch = {"state_dir": str(self.state_dir), "jobs_dir": str(self.jobs_dir), "spec": spec.path,
                 "seq": seq, "priority": info.priority, "depends_on": list(info.depends_on)}
        if info.valid:
            status = new_status(info.job, run_dir.name, spec_sha256=spec.sha256, extra={"watch": watch})
        else:
            status = new_status(info.job, run_dir.name, state=JobState.INVALID, reason=FailureClass.CONFIG,
                                error="\n".join(str(issue) for issue in info.errors), spec_sha256=spec.sha256,
                                extra={"watch": watch, "errors": [issue.to_dict() for issue in info.errors]})
        StatusFile(run_paths(run_dir).status).create(status)
        return run_dir

    def _runs_of_file(self, path: str) -> list[Tracked]:
        return [t for t in self.tracked.values() if t.spec_path == path]

    def _supersede(self, path: str, sha256: str) -> None:
        """A newer version of `path` arrived: cancel its runs that have not started (all waiting
        ones with --on-change restart, which also stops the running one)."""
        restart = self.config.on_change == "restart"
        why = f"superseded by a newer version of {path} ({sha256[:12]})"
        for tracked in self._runs_of_file(path):
            status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
            if status is None:
                continue
            fresh = _never_started(status)
            active = self._active_for(tracked)
            if active is not None and active.slurm is not None:  # scancel; the poll records the end
                if (fresh or restart) and active.intent is None:
                    active.intent = Intent.SUPERSEDE
                    self._log(f"{tracked.key}: cancelling its Slurm job: {why}")
                    self._signal_child(active)
                continue
            if status.state in (JobState.QUEUED, JobState.INTERRUPTED) and (fresh or restart):
                cancel_waiting_run(tracked.status_file, why + (" before it started" if fresh else " (--on-change restart)"))
                self._forget(tracked, why)
            elif status.state is JobState.RUNNING and restart:
                active = self._active_for(tracked)
                if active is not None and active.intent is None:
                    active.intent = Intent.SUPERSEDE
                    self._log(f"{tracked.key}: stopping it: {why} (--on-change restart)")
                    self._signal_child(active)

    def _active_for(self, tracked: Tracked) -> Active | None:
        return next((a for a in self.active if a.tracked.key == tracked.key), None)

    def _deleted(self, path: str) -> None:
        """A deleted file: its runs that never started are cancelled; started ones finish."""
        for tracked in self._runs_of_file(path):
            status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
            active = self._active_for(tracked)
            if active is not None and active.slurm is not None:  # submitted: scancel it if it never started
                if status is not None and _never_started(status) and active.intent is None:
                    active.intent = Intent.DROP
                    self._signal_child(active)
                continue
            if status is not None and status.state is JobState.QUEUED and _never_started(status):
                cancel_waiting_run(tracked.status_file, f"its job file {path} was deleted before it started")
                self._forget(tracked, "dropped: its job file was deleted")
        del self.state.files[path]
        self._state_dirty = True
        self._log(f"{path} deleted")

    def _forget(self, tracked: Tracked, why: str) -> None:
        self.tracked.pop(tracked.key, None)
        self._waiting.pop(tracked.key, None)
        self._state_dirty = True
        self._log(f"{tracked.key}: {why}")

    # ----------------------------------------------------------- starting up

    def _recover(self) -> None:
        """Rebuild the queue from the run folders this daemon owns; settle what a previous daemon
        left running (resume a run whose process is gone, wait for one still finishing)."""
        for job_dir in sorted(self.runs_root.iterdir()) if self.runs_root.is_dir() else []:
            if job_dir.name.startswith(".") or not job_dir.is_dir():
                continue
            for run_dir in list_runs(self.runs_root, job_dir.name):
                status = read_status(run_dir)
                watch = status.extra.get("watch") if status is not None else None
                if status is None or status.is_terminal or not isinstance(watch, dict):
                    continue
                if watch.get("state_dir") != str(self.state_dir):
                    continue
                tracked = Tracked(run_dir, status.job, str(watch.get("spec", "")), status.spec_sha256 or "",
                                  int(watch.get("seq", 0)), int(watch.get("priority", 0)),
                                  tuple(watch.get("depends_on") or ()))
                self.tracked[tracked.key] = tracked
                self._waiting[tracked.key] = status.extra.get("waiting")  # so a stale note gets cleared
                self.state.next_seq = max(self.state.next_seq, tracked.seq + 1)
        for tracked in sorted(self.tracked.values(), key=lambda t: t.seq):
            status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
            if status is None or self._adopt_slurm(tracked, status):
                continue
            if status.state is JobState.RUNNING:
                ticks = status.extra.get("pid_start")
                alive = is_pid_alive(status.pid) and (ticks is None or process_start_ticks(status.pid or 0) in (None, ticks))
                if alive and status.pid is not None:
                    self._log(f"{tracked.key}: its process {status.pid} outlived the previous daemon; waiting for it")
                    self.active.append(Active(tracked, status.pid, None, _pidfd(status.pid)))
                else:
                    self._finish(Active(tracked, status.pid or 0, None, None), returncode=None)
            elif status.state is JobState.INTERRUPTED:
                self._requeue(tracked, status)
        if self.tracked:
            self._log(f"{len(self.tracked)} run(s) carried over from before")

    # ------------------------------------------------------------- scheduling

    def _dep_state(self, job: str) -> tuple[DepState, str | None]:
        if any(t.job == job for t in self.tracked.values()):
            return DepState.PENDING, None
        runs = list_runs(self.runs_root, job)
        status = read_status(runs[-1]) if runs else None
        if status is None:
            return DepState.MISSING, None
        if status.state is JobState.SUCCEEDED:
            return DepState.SUCCEEDED, None
        if status.is_terminal:
            why = f"its latest run {runs[-1].name} is {status.state}" + (f": {status.reason}" if status.reason else "")
            return DepState.FAILED, why
        return DepState.PENDING, None  # a run this daemon does not own (`runner run`, another daemon)

    def _schedule(self) -> None:
        """Fail what can never run, note what waits, and start the next run if none is active."""
        for _ in range(len(self.tracked) + 1):  # each round fails one more level of a dependency chain
            queued = []
            for tracked in list(self.tracked.values()):
                status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
                if status is not None and status.state is JobState.QUEUED and self._active_for(tracked) is None:
                    queued.append(tracked)  # (a submitted Slurm job's run is queued while Slurm keeps it pending)
                elif status is not None and status.is_terminal:  # finished by someone else: not ours to wait on
                    self._forget(tracked, f"{status.state} (recorded by another process)")
            if not queued:
                return
            deps: dict[str, DepState] = {}
            notes: dict[str, str] = {}
            for name in {dep for tracked in queued for dep in tracked.depends_on}:
                deps[name], note = self._dep_state(name)
                if note:
                    notes[name] = note
            decision = decide([t.item() for t in queued], deps, notes)
            for blocked in decision.fail:
                tracked = self.tracked[blocked.item.key]
                tracked.status_file.transition(JobState.FAILED, reason=FailureClass.DEPENDENCY, error=blocked.why,
                                               extra={"waiting": None})
                self._forget(tracked, f"failed (dependency): {blocked.why}")
            if decision.fail:
                continue
            waiting = {blocked.item.key: f"waiting for {blocked.why}" for blocked in decision.wait}
            for tracked in queued:
                self._note_waiting(tracked, waiting.get(tracked.key))
            for item in self._to_start(decision):
                self._launch(self.tracked[item.key])
            self._snapshot_queue(decision.start, queued)
            return

    def _note_waiting(self, tracked: Tracked, why: str | None) -> None:
        if self._waiting.get(tracked.key, None) != why:
            self._waiting[tracked.key] = why
            tracked.status_file.update(extra={"waiting": why})

    def _snapshot_queue(self, started: Item | None, queued: list[Tracked]) -> None:
        order = [t for t in queue_order(t.item() for t in queued) if started is None or t.key != started.key]
        snapshot = [{"run": item.key, "priority": item.priority, "seq": item.seq,
                     "waiting": self._waiting.get(item.key)} for item in order]
        if snapshot != self.state.queue:
            self.state.queue = snapshot
            self._state_dirty = True

    def _launch(self, tracked: Tracked) -> None:
        if self.config.executor == "slurm":
            self._submit(tracked)
            return
        status_file = tracked.status_file
        status = read_status(tracked.run_dir)
        if status is None:
            return
        run_dir = tracked.run_dir
        (run_dir / OUTCOME_FILE).unlink(missing_ok=True)  # a stale report must not speak for this attempt
        command = [self.config.python, "-m", "runner.watch.child", "--run-dir", str(run_dir),
                   "--spec-path", str(self.jobs_dir / tracked.spec_path), "--runs-root", str(self.runs_root)]
        if self.config.registry is not None:
            command += ["--registry", str(self.config.registry)]
        if self.config.allow_remote_code:
            command.append("--allow-remote-code")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        lifeline_r, lifeline_w = os.pipe()  # both close-on-exec: only the child's copy of the read end survives
        try:
            with open(run_dir / LOG_FILE, "ab") as log:
                log.write(f"==== {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z} runner watch: attempt "
                          f"{status.attempt} of {tracked.key} ({tracked.spec_path}) ====\n".encode())
                log.flush()
                proc = subprocess.Popen([*command, "--parent-pipe", str(lifeline_r)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                        close_fds=True, pass_fds=(lifeline_r,))
        except OSError as exc:
            os.close(lifeline_w)
            status_file.transition(JobState.FAILED, reason=FailureClass.CRASH, error=f"could not start its process: {exc}")
            self._forget(tracked, f"failed (crash): could not start: {exc}")
            return
        finally:
            os.close(lifeline_r)
        self._waiting.pop(tracked.key, None)
        status_file.transition(JobState.RUNNING, pid=proc.pid,
                               extra={"waiting": None, "pid_start": process_start_ticks(proc.pid)})
        self.active.append(Active(tracked, proc.pid, proc, _pidfd(proc.pid), lifeline=lifeline_w))
        self._state_dirty = True
        self._log(f"started {tracked.key} (attempt {status.attempt}, pid {proc.pid})")

    # ---------------------------------------------------------------- endings

    def _reap(self) -> None:
        for active in list(self.active):
            if active.slurm is not None:
                continue  # followed by _poll_slurm
            if active.proc is not None:
                returncode = active.proc.poll()
                if returncode is None:
                    continue
                self._finish(active, returncode)
            elif not is_pid_alive(active.pid) or _pidfd_ready(active.pidfd):
                self._finish(active, returncode=None)
        self._poll_slurm()

    # ------------------------------------------------------------------ Slurm (runner.slurm)

    def _slurm_executor(self) -> SlurmExecutor:
        if self.slurm is None:
            from runner.slurm.executor import SlurmExecutor

            self.slurm = SlurmExecutor(runs_root=self.runs_root, python=self.config.python,
                                       registry=self.config.registry, allow_remote_code=self.config.allow_remote_code,
                                       poll=self.config.slurm_poll, log=self._log)
        return self.slurm

    def _to_start(self, decision: Decision) -> list[Item]:
        """Local: the first ready run, when none runs. Slurm: every ready run (the cluster queues them),
        one per job at a time, so a newer version of a file still runs after the older one."""
        if self.config.executor != "slurm":
            busy = any(active.slurm is None for active in self.active)  # Slurm jobs it follows do not count
            return [decision.start] if decision.start is not None and not busy else []
        if not self._slurm_executor().can_submit():
            return []
        running_jobs = {active.tracked.job for active in self.active}
        chosen = []
        for item in decision.ready:
            if item.job not in running_jobs:
                running_jobs.add(item.job)
                chosen.append(item)
        return chosen

    def _submit(self, tracked: Tracked) -> None:
        """sbatch the run's attempt; the run stays queued while Slurm keeps the job pending."""
        result = self._slurm_executor().submit(tracked.run_dir, self.jobs_dir / tracked.spec_path)
        if result is None:
            return  # Slurm cannot be reached now: submitted again after a pause
        self._waiting.pop(tracked.key, None)
        self._state_dirty = True
        if isinstance(result, Final):  # refused by sbatch: the job file must change
            self._apply(tracked, result)
            self._forget(tracked, f"failed ({result.reason}): not submitted")
            return
        self.active.append(Active(tracked, 0, None, None, slurm=result))

    def _adopt_slurm(self, tracked: Tracked, status: Status) -> bool:
        """At start: follow the Slurm job a previous daemon submitted for this run (it ran on meanwhile)."""
        if not isinstance(status.extra.get("slurm"), dict):
            return False
        submission = self._slurm_executor().adopt(tracked.run_dir, status)
        if submission is None:
            return False
        self.active.append(Active(tracked, 0, None, None, slurm=submission))
        self._log(f"{tracked.key}: following its Slurm job {submission.job_id} ({status.state})")
        return True

    def _poll_slurm(self) -> None:
        """Ask Slurm about the submitted jobs (every --slurm-poll seconds); record the ones that are over."""
        followed = [active for active in self.active if active.slurm is not None]
        if self.slurm is None or not followed or not self.slurm.poll_due():
            return
        for active in followed:  # a scancel that failed (controller down) is sent again
            if active.intent is not None and active.slurm is not None and not active.slurm.cancel_sent:
                self.slurm.cancel(active.slurm)
        for submission, final in self.slurm.poll([(a.slurm, a.intent) for a in followed if a.slurm is not None]):
            active = next(a for a in followed if a.slurm is submission)
            self.active.remove(active)
            self._apply(active.tracked, final)
            self.slurm.done(submission)
            self._state_dirty = True

    def _finish(self, active: Active, returncode: int | None) -> None:
        """Write the run's state now that its process has exited (never before)."""
        if active in self.active:
            self.active.remove(active)
        for fd in (active.pidfd, active.lifeline):
            if fd is not None:
                os.close(fd)
        tracked = active.tracked
        outcome_path = tracked.run_dir / OUTCOME_FILE
        final = classify_exit(returncode, read_outcome(outcome_path), active.intent,
                              log_tail=_log_tail(tracked.run_dir / LOG_FILE))
        self._apply(tracked, final)
        outcome_path.unlink(missing_ok=True)
        self._state_dirty = True

    def _apply(self, tracked: Tracked, final: Final) -> None:
        status_file = tracked.status_file
        try:
            status = status_file.transition(final.state, reason=final.reason, error=final.error, **final.fields)
            detail = f" ({status.reason}): {final.error.splitlines()[0]}" if final.error and status.reason else ""
            self._log(f"{tracked.key}: {status.state}{detail}")
        except IllegalTransition as exc:
            # Someone else moved the run on (a foreground `runner run` resumed and finished it, or the
            # previous daemon died between launch and `running`): go by what the file says now.
            current = read_status(tracked.run_dir)
            self._log(f"{tracked.key}: not recording {final.state}: {exc}")
            if current is None:
                return
            status = current
        if status.is_terminal:
            self.tracked.pop(tracked.key, None)
        elif status.state is JobState.INTERRUPTED and not self._stopping:
            self._requeue(tracked, status)

    def _requeue(self, tracked: Tracked, status: Status) -> None:
        """interrupted -> queued (attempt + 1), or failed once --max-attempts attempts were interrupted."""
        status_file = tracked.status_file
        status_file.transition(JobState.QUEUED)
        if status.attempt >= self.config.max_attempts:
            status_file.transition(JobState.FAILED, reason=FailureClass.INTERRUPTED,
                                   error=f"interrupted in each of {status.attempt} attempt(s); not retried "
                                         f"(--max-attempts {self.config.max_attempts})")
            self._forget(tracked, "failed (interrupted): out of attempts")
        else:
            self._log(f"{tracked.key}: queued again (attempt {status.attempt + 1}); it resumes from its last complete checkpoint")

    # --------------------------------------------------------------- requests

    def _apply_requests(self) -> None:
        for request in pending_requests(self.state_dir):
            tracked = self.tracked.get(request.key)
            active = self._active_for(tracked) if tracked is not None else None
            if active is not None:
                if active.intent is not Intent.CANCEL:
                    active.intent = Intent.CANCEL
                    self._log(f"{request.key}: cancel requested; stopping it (it saves a checkpoint first)")
                    self._signal_child(active)
            elif tracked is not None:
                if cancel_waiting_run(tracked.status_file, "cancelled with `runner cancel` while it waited") is not None:
                    self._forget(tracked, "cancelled")
            request.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ misc

    def _save_state(self) -> None:
        self._state_dirty = False
        save_state(self.state_dir / "state.json", self.state)

    def _log(self, message: str) -> None:
        print(f"{datetime.now():%Y-%m-%d %H:%M:%S} runner watch: {message}", file=sys.stderr, flush=True)


def _conflict(path: Path, job: str, owner: Path) -> SpecIssue:
    return SpecIssue(str(path), 1, 1, "name",
                     f"job name '{job}' is already used by {owner}; give one of them a distinct `name`")


def _pidfd(pid: int) -> int | None:
    """A descriptor that becomes readable when the process exits: no polling while a job runs."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _pidfd_ready(pidfd: int | None) -> bool:
    if pidfd is None:
        return False
    ready, _, _ = select.select([pidfd], [], [], 0)
    return bool(ready)

