"""Was it the kernel's OOM killer? Evidence for telling its SIGKILL from an operator's.

A process killed by SIGKILL cannot say who sent it. Two witnesses can, where this machine lets
us read them:

* the memory cgroup's OOM-kill counter of the cgroup the job runs in -- `oom_kill` in
  `memory.events` (cgroup v2) or in `memory.oom_control` (cgroup v1, Linux >= 4.13) -- read when
  the attempt starts and again when it has ended: it grew, so the OOM killer killed a process of
  that cgroup meanwhile (the job, or the job's own children);
* the kernel log (`/dev/kmsg`, readable by root or with kernel.dmesg_restrict=0): the OOM killer
  writes `Killed process <pid> (...)` for each victim; read from the attempt's start on.

Either is enough. The counter counts every process of the cgroup: where the job shares its cgroup
with other processes (usually the daemon, in a container or a service unit), an OOM kill of one of
them during the attempt, together with an operator's SIGKILL of the job, reads as `oom` -- the
kernel log, where readable, names the victim. When neither can be read (no cgroup memory controller, an unprivileged
container), `verdict` says so (None) rather than guess. Written by hand: no library reads these.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["OomWitness", "kernel_oom_victims", "memory_counter", "oom_kill_count"]

_KILLED = re.compile(rb"Killed process (\d+) ")


def memory_counter(proc_cgroup: str, mountinfo: str) -> Path | None:
    """The file holding the OOM-kill counter of a process's memory cgroup, from the text of
    `/proc/<pid>/cgroup` and `/proc/self/mountinfo`; None without a memory cgroup to read."""
    v2_mount, v1_mounts = None, []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, point = fields[3], fields[4]
        if tail[0] == "cgroup2":
            v2_mount = v2_mount or (root, point)
        elif tail[0] == "cgroup" and "memory" in tail[2].split(","):
            v1_mounts.append((root, point))
    candidates = []
    for line in proc_cgroup.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "" and v2_mount is not None:
            candidates.append(_under(v2_mount, path) / "memory.events")
        elif "memory" in controllers.split(","):
            candidates.extend(_under(mount, path) / "memory.oom_control" for mount in v1_mounts)
    return next((c for c in candidates if c.is_file()), None)


def _under(mount: tuple[str, str], path: str) -> Path:
    root, point = mount
    if root != "/" and path.startswith(root):  # a mount of a sub-tree (containers)
        path = path[len(root) :]
    return Path(point) / path.lstrip("/")


def oom_kill_count(counter: Path | None) -> int | None:
    """The `oom_kill N` line of memory.events / memory.oom_control; None if it cannot be read."""
    if counter is None:
        return None
    try:
        text = counter.read_text(encoding="ascii")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def kernel_oom_victims(fd: int) -> set[int]:
    """The pids the OOM killer reports in the kernel log records readable from `fd` (an open,
    non-blocking /dev/kmsg) from its position on."""
    victims: set[int] = set()
    while True:
        try:
            record = os.read(fd, 8192)
        except BlockingIOError:
            return victims
        except BrokenPipeError:  # records were overwritten since the last read: go on with the next ones
            continue
        except OSError:
            return victims
        if not record:
            return victims
        match = _KILLED.search(record)
        if match:
            victims.add(int(match.group(1)))


@dataclass
class OomWitness:
    """Armed when an attempt starts (in the process whose cgroup the child inherits), asked once it ended."""

    counter: Path | None
    before: int | None
    kmsg: int | None

    @classmethod
    def arm(cls) -> OomWitness:
        try:
            counter = memory_counter(Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text())
        except OSError:
            counter = None
        return cls(counter, oom_kill_count(counter), _kernel_log_from_now())

    def verdict(self, pid: int) -> bool | None:
        """True if the OOM killer killed `pid` (or a process of its cgroup) since `arm`; False if the
        witnesses saw nothing; None if there is no witness to ask."""
        victims = kernel_oom_victims(self.kmsg) if self.kmsg is not None else set()
        after = oom_kill_count(self.counter)
        grew = self.before is not None and after is not None and after > self.before
        if pid in victims or grew:
            return True
        return None if self.kmsg is None and (self.before is None or after is None) else False

    def close(self) -> None:
        if self.kmsg is not None:
            os.close(self.kmsg)
            self.kmsg = None


def _kernel_log_from_now() -> int | None:
    """/dev/kmsg opened at its end (only what the kernel logs from now on), or None where unreadable."""
    try:
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        os.lseek(fd, 0, os.SEEK_END)
    except OSError:
        os.close(fd)
        return None
    return fd
