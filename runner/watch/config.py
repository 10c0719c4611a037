"""The settings of one `runner watch` daemon (the command line's options)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["WatchConfig"]


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
    retry_killed: bool = False  # queue again a run whose process an operator killed (SIGKILL), like an interrupted one
    on_change: str = "queue"  # "queue" | "restart"
    registry: Path | None = None  # passed to every job, as `runner run --registry`
    allow_remote_code: bool = False  # passed to every job, as `runner run --allow-remote-code`
    python: str = field(default_factory=lambda: sys.executable)
    executor: str = "local"  # "local": one child process at a time | "slurm": every ready run is an sbatch job
    slurm_poll: float = 5.0  # seconds between two squeue calls about the submitted jobs
