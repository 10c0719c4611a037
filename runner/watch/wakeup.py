"""What wakes the daemon's loop: filesystem events, signals, and the end of an attempt.

The loop is single-threaded. watchdog's thread only notes the time of an event and writes a byte
to a wake-up pipe; signal handlers only set counters (the pipe gets their number through
`signal.set_wakeup_fd`); the loop then sleeps in `select` on that pipe plus the executors'
descriptors (a child's pidfd) until the next deadline.
"""

from __future__ import annotations

import os
import select
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["Wakeups"]


class Wakeups:
    def __init__(self, jobs_dir: Path, poll: float | None) -> None:
        self.jobs_dir = jobs_dir
        self.poll = poll  # seconds between polls of the folder (network filesystems); None: inotify & co
        self.stop_signals = 0  # SIGTERM / SIGINT received
        self.rescan = True  # SIGHUP, the start, or an error asked for a full rescan
        self.first_event: float | None = None  # first event of the burst not yet scanned
        self.last_event = 0.0
        self._read, self._write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._observer: Any = None

    @contextmanager
    def installed(self) -> Iterator[None]:
        """Signal handlers and the folder observer, for the time the daemon serves."""
        with self._signals():
            self._start_observer()
            try:
                yield
            finally:
                self._stop_observer()

    def close(self) -> None:
        for fd in (self._read, self._write):
            try:
                os.close(fd)
            except OSError:
                pass

    # ------------------------------------------------------------------ events

    def note_event(self) -> None:  # watchdog's thread
        now = time.monotonic()
        self.last_event = now
        if self.first_event is None:
            self.first_event = now
        self.poke()

    def poke(self) -> None:
        try:
            os.write(self._write, b"e")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: the loop wakes anyway

    def events_settled(self, now: float, debounce: float, max_delay: float) -> bool:
        """An event burst went quiet for `debounce` seconds, or began `max_delay` seconds ago."""
        first = self.first_event
        return first is not None and (now - self.last_event >= debounce or now - first >= max_delay)

    def events_deadline(self, debounce: float, max_delay: float) -> float | None:
        if self.first_event is None:
            return None
        return min(self.last_event + debounce, self.first_event + max_delay)

    def clear_events(self) -> None:
        self.rescan = False
        self.first_event = None

    # ------------------------------------------------------------------ sleeping

    def drain(self) -> None:
        try:
            while os.read(self._read, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def wait(self, timeout: float, fds: list[int]) -> None:
        try:
            select.select([self._read, *fds], [], [], timeout)
        except InterruptedError:  # pragma: no cover - PEP 475 retries; a signal handler may still interrupt
            pass

    # ------------------------------------------------------------------ setup

    @contextmanager
    def _signals(self) -> Iterator[None]:
        def stop(_signum: int, _frame: FrameType | None) -> None:
            self.stop_signals += 1

        def rescan(_signum: int, _frame: FrameType | None) -> None:
            self.rescan = True

        def wake(_signum: int, _frame: FrameType | None) -> None:
            pass  # the wake-up fd does the work; requests are read on every pass

        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)
        previous = {sig: signal.getsignal(sig) for sig in handled}
        old_fd = signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)
        for sig, handler in zip(handled, (stop, stop, rescan, wake), strict=True):
            signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            signal.set_wakeup_fd(old_fd)

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

        wakeups = self

        class Wake(FileSystemEventHandler):
            """Events are hints: note the time and wake the loop, which rescans the folder."""

            def on_any_event(self, event: FileSystemEvent) -> None:
                paths = [os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")]
                if event.is_directory or any(p.endswith(".toml") for p in paths):
                    wakeups.note_event()

        if self.poll:
            from watchdog.observers.polling import PollingObserver

            observer: Any = PollingObserver(timeout=self.poll)
        else:
            from watchdog.observers import Observer

            observer = Observer()
        # opened / closed-without-write events are left out: the daemon's own reads would wake it.
        interesting = [
            FileCreatedEvent,
            FileModifiedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileClosedEvent,
            DirCreatedEvent,
            DirDeletedEvent,
            DirMovedEvent,
        ]
        observer.schedule(Wake(), str(self.jobs_dir), recursive=True, event_filter=interesting)
        observer.daemon = True
        observer.start()
        self._observer = observer

    def _stop_observer(self) -> None:
        if self._observer is not None:
            self._observer.stop()
            self._observer.join(timeout=0.2)  # its threads poll with a 1 s timeout; they are daemon threads
            self._observer = None
