"""`runner watch`: the loop that turns a folder of job files into runs.

Shape of the loop (single-threaded; see runner.watch.wakeup for what wakes it):

    wait (select on the wake-up pipe + the executors' descriptors, with the next deadline)
    -> record the end of attempts that are over (only now: their process is gone)
    -> rescan the folder if an event burst went quiet, a file is due to settle, or periodically
    -> apply `runner cancel` requests
    -> start the next queued runs the executor has room for

The parts: `intake` (folder -> runs), `supervise` (runs -> attempts, their ends), `recover` (what a
previous daemon left), `executors` (local child processes, Slurm jobs), `store` (the daemon's own
files). Every state change goes through `StatusFile.transition`.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

from runner.outputs.attempts import cancel_waiting_run
from runner.watch.config import WatchConfig
from runner.watch.executors import Executors
from runner.watch.intake import Intake
from runner.watch.recover import recover
from runner.watch.store import (
    DaemonLock,
    Locked,
    WatchState,
    holder_info,
    load_state,
    other_watchers,
    save_state,
    watcher_lock,
)
from runner.watch.supervise import Supervisor
from runner.watch.wakeup import Wakeups

__all__ = ["Daemon", "Locked", "WatchConfig", "cancel_waiting_run"]


class Daemon:
    def __init__(self, config: WatchConfig, executors: Executors | None = None) -> None:
        self.config = config
        self.jobs_dir = config.jobs_dir.resolve()  # the real folder: one daemon per folder, whatever names it
        self.runs_root = config.runs_root.absolute()
        self.state_dir = config.state_dir.resolve()
        self.lock = DaemonLock(self.state_dir)
        self.runs_lock = watcher_lock(self.runs_root, self.jobs_dir)
        self.state = WatchState()
        self.executors = executors or Executors(config, self._log)
        self.wakeups = Wakeups(self.jobs_dir, config.poll)
        self.supervisor = Supervisor(config, self.jobs_dir, self.runs_root, self.state, self.executors, self._log)
        self.intake = Intake(config, self.jobs_dir, self.state_dir, self.state, self.supervisor, self._log)
        self.executors.get(config.executor)  # made now: a misconfigured executor fails before the lock is taken

    def run(self) -> int:
        """Hold the lock and serve until SIGTERM/SIGINT; `Locked` if another daemon holds it."""
        if not self.jobs_dir.is_dir():
            raise FileNotFoundError(f"jobs folder {self.jobs_dir} does not exist")
        try:
            with self._locks():
                with self.wakeups.installed():
                    self._load_state()
                    self._log(
                        f"watching {self.jobs_dir} (runs in {self.runs_root}, state in {self.state_dir}, "
                        + (f"polling every {self.config.poll:g} s" if self.config.poll else "filesystem events")
                        + ")"
                    )
                    recover(self.supervisor, self.state_dir)
                    self._loop()
                self._save_state()
        finally:
            self.close()
        self._log("stopped")
        return 0

    @contextmanager
    def _locks(self) -> Iterator[None]:
        """The state folder's lock and the runs folder's lock of this jobs folder (`Locked` if another
        daemon holds either); a warning about daemons of other jobs folders writing runs here too."""
        info = holder_info(self.jobs_dir, self.runs_root)
        self.lock.acquire({**info, "state_dir": str(self.state_dir)})
        try:
            self.runs_lock.acquire({**info, "state_dir": str(self.state_dir)})
            try:
                for other in other_watchers(self.runs_root, self.runs_lock):
                    self._log(
                        f"warning: another `runner watch` writes runs to {self.runs_root} too: pid "
                        f"{other.get('pid')} on {other.get('host')}, watching {other.get('jobs_dir')}; each "
                        "daemon runs only its own job files, but a job name used in both folders gets runs "
                        "from both (give each jobs folder its own --runs-dir)"
                    )
                yield
            finally:
                self.runs_lock.release()
        finally:
            self.lock.release()

    def close(self) -> None:
        """Release the wake-up pipe (run() does it on exit)."""
        self.wakeups.close()

    def _load_state(self) -> None:
        """state.json into the one WatchState the parts share."""
        loaded = load_state(self.state_dir / "state.json")
        self.state.files, self.state.next_seq, self.state.queue = loaded.files, loaded.next_seq, loaded.queue

    def _loop(self) -> None:
        while True:
            self.wakeups.drain()
            try:
                if self._step():
                    return
            except Exception:  # noqa: BLE001 - one bad file or a full disk must not take the daemon (and its job) down
                self._log("unexpected error; carrying on:\n" + traceback.format_exc().rstrip())
                self.wakeups.rescan = True
                time.sleep(1.0)
            now = time.monotonic()
            deadline = min([*self.intake.deadlines(self.wakeups), *self.supervisor.deadlines(now)])
            self.wakeups.wait(max(0.0, deadline - now), self.supervisor.wait_fds())

    def _step(self) -> bool:
        """One pass over everything that may need doing; True once it is time to exit."""
        now = time.monotonic()
        supervisor = self.supervisor
        if self.wakeups.stop_signals and not supervisor.stopping:
            supervisor.begin_shutdown()
        if self.wakeups.stop_signals > 1:
            supervisor.force_stop()
        supervisor.reap()
        if supervisor.stopping and not supervisor.busy():
            return True
        if self.intake.due(now, self.wakeups):
            self.intake.scan(now, self.wakeups)
        supervisor.apply_requests(self.state_dir)
        if not supervisor.stopping:
            supervisor.schedule()
        if self.state.dirty:
            self._save_state()
        return False

    def _save_state(self) -> None:
        self.state.dirty = False
        save_state(self.state_dir / "state.json", self.state)

    def _log(self, message: str) -> None:
        print(f"{datetime.now():%Y-%m-%d %H:%M:%S} runner watch: {message}", file=sys.stderr, flush=True)
