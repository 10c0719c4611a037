"""The local executor: each attempt is a child process of the supervisor (`runner.executors.child`).

A fresh interpreter per attempt, in its own session, with its stdout and stderr appended to the
run's train.log. The supervisor holds the write end of a pipe whose read end only the child has:
when the supervisor dies, the kernel closes it and the child checkpoints and stops by itself.
The end is seen without polling through a pidfd (or polled twice a second on old kernels).

After a restart, a process a previous daemon started may still be working on its run: it is
followed by pid (checked against its start time, so a reused pid is not mistaken for it) until it
exits, and it is not stopped when this daemon stops.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runner.executors.base import Attempt, Executor
from runner.executors.oom import OomWitness
from runner.outputs.attempts import Final, classify_exit, log_tail, read_outcome
from runner.outputs.runs import is_pid_alive, read_status, run_paths
from runner.outputs.status import FailureClass, JobState, Status, StatusFile

__all__ = ["LocalAttempt", "LocalExecutor", "process_start_ticks"]


@dataclass(eq=False)
class LocalAttempt(Attempt):
    """A process working on a run: our child, or one a previous daemon started (`proc` None)."""

    run_dir: Path
    pid: int  # 0: the process a previous daemon recorded is gone already
    proc: subprocess.Popen[bytes] | None
    pidfd: int | None
    lifeline: int | None = None  # write end of the child's parent pipe: closed by the kernel if we die
    signalled: bool = False
    killed: bool = False
    oom: OomWitness | None = None  # whether the kernel's OOM killer killed it (only for our own children)

    def __post_init__(self) -> None:
        self.outlives_supervisor = self.proc is None


def process_start_ticks(pid: int) -> int | None:
    """The process's start time (clock ticks since boot), to tell it from a later one with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            stat = handle.read().decode("ascii", "replace")
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


class LocalExecutor(Executor):
    """One attempt at a time, as a child process of this one."""

    name = "local"

    def __init__(
        self,
        *,
        runs_root: Path,
        python: str = sys.executable,
        registry: Path | None = None,
        allow_remote_code: bool = False,
        log: Callable[[str], None] = print,
        submitter: str = "runner watch",
    ) -> None:
        self.runs_root = runs_root
        self.python = python
        self.registry = registry
        self.allow_remote_code = allow_remote_code
        self.log = log
        self.submitter = submitter

    @classmethod
    def claims(cls, status: Status) -> bool:
        return status.state is JobState.RUNNING

    def capacity(self, active: Sequence[Attempt]) -> int | None:
        return 0 if active else 1

    def start(self, run_dir: Path, spec_path: Path) -> Attempt | Final | None:
        paths = run_paths(run_dir)
        status = read_status(run_dir)
        if status is None:
            return None
        paths.outcome.unlink(missing_ok=True)  # a stale report must not speak for this attempt
        command = [
            self.python,
            "-m",
            "runner.executors.child",
            "--run-dir",
            str(run_dir),
            "--spec-path",
            str(spec_path),
            "--runs-root",
            str(self.runs_root),
        ]
        if self.registry is not None:
            command += ["--registry", str(self.registry)]
        if self.allow_remote_code:
            command.append("--allow-remote-code")
        key = f"{status.job}/{status.run_id}"
        oom = OomWitness.arm()  # before the child exists: its cgroup is ours, its end is after this
        lifeline_r, lifeline_w = os.pipe()  # both close-on-exec: only the child's copy of the read end survives
        try:
            with open(paths.log, "ab") as log:
                log.write(
                    f"==== {datetime.now().astimezone():%Y-%m-%d %H:%M:%S %z} {self.submitter}: attempt "
                    f"{status.attempt} of {key} ({spec_path}) ====\n".encode()
                )
                log.flush()
                proc = subprocess.Popen(
                    [*command, "--parent-pipe", str(lifeline_r)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    close_fds=True,
                    pass_fds=(lifeline_r,),
                )
        except OSError as exc:
            os.close(lifeline_w)
            oom.close()
            return Final(JobState.FAILED, FailureClass.CRASH, f"could not start its process: {exc}")
        finally:
            os.close(lifeline_r)
        StatusFile(paths.status).transition(
            JobState.RUNNING, pid=proc.pid, extra={"waiting": None, "pid_start": process_start_ticks(proc.pid)}
        )
        self.log(f"started {key} (attempt {status.attempt}, pid {proc.pid})")
        return LocalAttempt(run_dir, proc.pid, proc, _pidfd(proc.pid), lifeline=lifeline_w, oom=oom)

    def adopt(self, run_dir: Path, status: Status) -> Attempt | None:
        if status.state is not JobState.RUNNING:
            return None
        pid, ticks = status.pid or 0, status.extra.get("pid_start")
        if is_pid_alive(pid) and (ticks is None or process_start_ticks(pid) in (None, ticks)):
            self.log(f"{status.job}/{status.run_id}: its process {pid} outlived the previous daemon; waiting for it")
            return LocalAttempt(run_dir, pid, None, _pidfd(pid))
        return LocalAttempt(run_dir, 0, None, None)  # gone: the next poll records how the run ended

    def poll(self, attempts: Sequence[Attempt]) -> list[tuple[Attempt, Final]]:
        ended: list[tuple[Attempt, Final]] = []
        for attempt in attempts:
            assert isinstance(attempt, LocalAttempt)
            returncode: int | None = None
            if attempt.proc is not None:
                returncode = attempt.proc.poll()
                if returncode is None:
                    continue
            elif is_pid_alive(attempt.pid) and not _pidfd_ready(attempt.pidfd):
                continue
            paths = run_paths(attempt.run_dir)
            oom_killed = None
            if returncode == -signal.SIGKILL and attempt.oom is not None:
                oom_killed = attempt.oom.verdict(attempt.pid)
            ended.append(
                (
                    attempt,
                    classify_exit(
                        returncode,
                        read_outcome(paths.outcome),
                        attempt.intent,
                        log_tail=log_tail(paths.log),
                        oom_killed=oom_killed,
                    ),
                )
            )
        return ended

    def stop(self, attempt: Attempt) -> None:
        """Exactly one SIGTERM per process, to its pid only: the child is in its own session, so a
        Ctrl-C in the daemon's terminal never reaches it, and its own handler saves a checkpoint."""
        assert isinstance(attempt, LocalAttempt)
        if attempt.signalled or not attempt.pid:
            return
        attempt.signalled = True
        try:
            os.kill(attempt.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self, attempt: Attempt) -> None:
        assert isinstance(attempt, LocalAttempt)
        if attempt.proc is None or attempt.killed:
            return
        self.log(f"{attempt.key}: second stop signal, killing it")
        attempt.killed = True
        try:
            os.killpg(attempt.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def done(self, attempt: Attempt) -> None:
        assert isinstance(attempt, LocalAttempt)
        for fd in (attempt.pidfd, attempt.lifeline):
            if fd is not None:
                os.close(fd)
        attempt.pidfd = attempt.lifeline = None
        if attempt.oom is not None:
            attempt.oom.close()
        super().done(attempt)

    def wait_fds(self, attempts: Sequence[Attempt]) -> list[int]:
        return [a.pidfd for a in attempts if isinstance(a, LocalAttempt) and a.pidfd is not None]

    def deadline(self, attempts: Sequence[Attempt], now: float) -> float | None:
        if any(isinstance(a, LocalAttempt) and a.pidfd is None for a in attempts):
            return now + 0.5  # no pidfd (old kernel, or an adopted process that is gone): poll
        return None


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
