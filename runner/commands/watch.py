"""`runner watch`, `runner status`, `runner cancel`, `runner logs`: what the CLI calls.

Everything but `watch` reads only the runs root (status.json, train.log), so they work with or
without a daemon and never import torch. A run made by the daemon names, in its status's
`extra.watch`, the daemon state folder that owns it: that is how `cancel` finds the daemon.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple

from runner.outputs.runs import is_pid_alive, list_runs, read_status, run_paths
from runner.outputs.status import JobState, Status, StatusFile

__all__ = ["CancelOutcome", "cancel_command", "cancel_runs", "logs_command", "status_command", "status_rows", "watch_command"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_PENDING = (JobState.QUEUED, JobState.RUNNING, JobState.INTERRUPTED)


def _print_err(message: str) -> None:
    print(message, file=sys.stderr)


def watch_command(jobs_dir: str, *, runs_dir: str | None, state_dir: str | None, poll: float | None,
                  max_attempts: int, on_change: str, debounce: float, settle: float,
                  registry: str | None = None, allow_remote_code: bool = False, executor: str = "local",
                  slurm_poll: float = 5.0) -> int:
    from runner.outputs.runs import runs_root
    from runner.watch.daemon import Daemon, Locked, WatchConfig
    from runner.watch.store import default_state_dir

    folder = Path(jobs_dir).absolute()
    if not folder.is_dir():
        print(f"error: jobs folder {folder} does not exist", file=sys.stderr)
        return EXIT_USAGE
    if executor == "slurm":
        from runner.slurm.client import SlurmClient

        if missing := SlurmClient.available():
            print(f"error: --executor slurm needs the Slurm client commands on this machine; not found: {missing}",
                  file=sys.stderr)
            return EXIT_USAGE
    config = WatchConfig(
        jobs_dir=folder, runs_root=runs_root(runs_dir),
        state_dir=Path(state_dir).absolute() if state_dir else default_state_dir(folder),
        poll=poll, max_attempts=max_attempts, on_change=on_change, debounce=debounce, settle=settle,
        registry=Path(registry).absolute() if registry else None, allow_remote_code=allow_remote_code,
        executor=executor, slurm_poll=slurm_poll,
    )
    try:
        return Daemon(config).run()
    except Locked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


# ------------------------------------------------------------------------------ status


def status_rows(root: Path, job: str | None = None) -> list[tuple[Path, Status]]:
    """`runner status` rows: every run of `job`; without one, each job's newest run plus any other
    run still pending (an older version still running while a newer one waits)."""
    jobs = [job] if job else sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")) \
        if root.is_dir() else []
    rows: list[tuple[Path, Status]] = []
    for name in jobs:
        runs = [(run, status) for run in list_runs(root, name) if (status := read_status(run)) is not None]
        if job:
            rows.extend(runs)
            continue
        rows.extend((run, status) for i, (run, status) in enumerate(runs)
                    if i == len(runs) - 1 or status.state in _PENDING)
    return rows


def short_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m`: how `runner status` and the dashboard show ETAs and ages."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _reason(status: Status) -> str:
    waiting = status.extra.get("waiting")
    if status.state is JobState.QUEUED and waiting:
        return str(waiting)
    if status.reason is None:
        return ""
    first = (status.error or "").strip().splitlines()
    return f"{status.reason}: {first[0]}" if first else str(status.reason)


def _row(status: Status) -> list[str]:
    step = f"{status.step}/{status.total_steps}" if status.step is not None and status.total_steps else (
        str(status.step) if status.step is not None else "-")
    started = status.started.astimezone().strftime("%m-%d %H:%M:%S") if status.started else "-"
    eta = short_duration(status.eta_seconds) if status.state is JobState.RUNNING else "-"
    loss = f"{status.loss:.4g}" if isinstance(status.loss, (int, float)) else "-"
    return [status.job, str(status.state), str(status.attempt), step, loss, eta, started, _reason(status)]


def _table(rows: list[list[str]], headers: list[str], width: int) -> str:
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = []
    for r in [headers, *rows]:
        line = "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip()
        lines.append(line if len(line) <= width else line[: width - 1] + "…")
    return "\n".join(lines)


def status_command(job: str | None, *, runs_dir: str | None, as_json: bool) -> int:
    from runner.outputs.runs import runs_root

    root = runs_root(runs_dir)
    rows = status_rows(root, job)
    if job and not rows:
        print(f"no runs of job '{job}' under {root}", file=sys.stderr)
        return EXIT_FAILED
    if as_json:
        print(json.dumps([{**status.to_dict(), "run_dir": str(run)} for run, status in rows], indent=2))
        return EXIT_OK
    if not rows:
        print(f"no runs under {root}")
        return EXIT_OK
    headers = ["JOB", "STATE", "ATTEMPT", "STEP", "LOSS", "ETA", "STARTED", "REASON"]
    width = max(80, os.get_terminal_size(sys.stdout.fileno()).columns) if sys.stdout.isatty() else 200
    print(_table([_row(status) for _, status in rows], headers, width))
    if job:
        run, status = rows[-1]
        print(f"\nrun {run}\nlog {run / 'train.log'}")
        if isinstance(slurm := status.extra.get("slurm"), dict):  # runner.slurm: the run's Slurm job
            print("slurm: " + " ".join(f"{key}={slurm[key]}" for key in ("job_id", "state", "reason", "exit_code",
                                                                           "nodes") if slurm.get(key)))
        if status.error:
            print(f"\n{status.error}")
    return EXIT_OK


# ------------------------------------------------------------------------------ cancel


class CancelOutcome(NamedTuple):
    code: int  # EXIT_OK, or EXIT_FAILED when nothing was pending or a run could not be reached
    pending: int  # the job's queued, running or interrupted runs when asked
    targets: list[Path]  # runs left to the daemon (a request was filed): watch them to see the end


def cancel_runs(job: str, root: Path, *, say: Callable[[str], None] = print,
                warn: Callable[[str], None] = _print_err) -> CancelOutcome:
    """Cancel the job's pending runs: through its daemon if one runs, else directly.

    Messages go to `say` / `warn` (stdout / stderr for the CLI; collected by the HTTP API)."""
    from runner.watch.daemon import cancel_waiting_run
    from runner.watch.store import DaemonLock, request_cancel

    pending = [(run, status) for run in list_runs(root, job)
               if (status := read_status(run)) is not None and status.state in _PENDING]
    if not pending:
        runs = list_runs(root, job)
        latest = read_status(runs[-1]) if runs else None
        warn(f"nothing to cancel: job '{job}' " + (f"has no pending run (latest: {latest.state})" if latest
                                                  else f"has no runs under {root}"))
        return CancelOutcome(EXIT_FAILED, 0, [])
    code = EXIT_OK
    targets: list[Path] = []
    for run, status in pending:
        watch = status.extra.get("watch")
        if not isinstance(watch, dict) or not watch.get("state_dir"):
            sent = _scancel(job, run, status, say, warn, "the `runner run --executor slurm` following it records the end")
            if sent is not None:
                if sent:
                    targets.append(run)
                else:
                    code = EXIT_FAILED
                continue
            warn(f"{job}/{run.name} is not managed by `runner watch`; stop its process"
                 + (f" (pid {status.pid}) with kill -TERM" if status.pid else ""))
            code = EXIT_FAILED
            continue
        lock = DaemonLock(Path(watch["state_dir"]))
        if lock.try_acquire():  # no daemon: nobody can start it meanwhile, so change it here
            try:
                status_file = StatusFile(run_paths(run).status)
                current = status_file.read()
                if current is None or current.is_terminal:
                    continue
                sent = _scancel(job, run, current, say, warn, "`runner watch` records the end when it runs again")
                if sent is not None:  # a Slurm job: its next daemon follows it and records `cancelled`
                    if sent:
                        request_cancel(lock.state_dir, job, run.name)
                        targets.append(run)
                    else:
                        code = EXIT_FAILED
                    continue
                if current.state is JobState.RUNNING and is_pid_alive(current.pid):
                    # a process that outlived its daemon: the next daemon stops it
                    request_cancel(lock.state_dir, job, run.name)
                    say(f"{job}/{run.name} is running without a daemon (pid {current.pid}); "
                        "the cancel is applied when `runner watch` starts")
                    targets.append(run)
                    continue
                if current.state is JobState.RUNNING:  # its process is gone and no daemon noticed yet
                    status_file.transition(JobState.CANCELLED, error="cancelled with `runner cancel` (its process was gone)")
                else:
                    cancel_waiting_run(status_file, "cancelled with `runner cancel`")
                say(f"cancelled {job}/{run.name}")
            finally:
                lock.release()
            continue
        request_cancel(lock.state_dir, job, run.name)
        holder = lock.holder() or {}
        pid = holder.get("pid")
        if isinstance(pid, int) and is_pid_alive(pid):
            try:
                os.kill(pid, signal.SIGUSR1)  # wake it; it reads the request at once
            except (PermissionError, ProcessLookupError):
                pass
        what = "stops it after saving a checkpoint" if status.state is JobState.RUNNING else "drops it"
        say(f"cancel requested for {job}/{run.name}: the daemon (pid {pid}) {what}")
        targets.append(run)
    return CancelOutcome(code, len(pending), targets)


def _scancel(job: str, run: Path, status: Status, say: Callable[[str], None], warn: Callable[[str], None],
             then: str) -> bool | None:
    """scancel the Slurm job working on a run with no daemon to ask: True if sent, False if scancel
    failed, None if no Slurm job works on it (runner.slurm)."""
    from runner.slurm.executor import live_job

    job_id = live_job(status)
    if job_id is None:
        return None
    from runner.slurm.client import SlurmClient, SlurmError

    try:
        SlurmClient().cancel(job_id)
    except SlurmError as exc:
        warn(f"{job}/{run.name}: {exc}")
        return False
    say(f"scancel {job_id} ({job}/{run.name}): it saves a checkpoint and stops; {then}")
    return True


def cancel_command(job: str, *, runs_dir: str | None, wait: float | None) -> int:
    """`runner cancel`: cancel_runs, then (with --wait) wait until the runs have stopped."""
    from runner.outputs.runs import runs_root

    code, _, targets = cancel_runs(job, runs_root(runs_dir))
    if wait and targets:
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            states = [read_status(run) for run in targets]
            if all(s is not None and s.is_terminal for s in states):
                break
            time.sleep(0.2)
        for run in targets:
            final = read_status(run)
            print(f"{job}/{run.name}: {final.state if final else 'unknown'}")
            if final is None or not final.is_terminal:
                code = EXIT_FAILED
    return code


# -------------------------------------------------------------------------------- logs


def logs_command(job: str, *, runs_dir: str | None, follow: bool, run_id: str | None,
                 out: Any = None, poll: float = 0.2) -> int:
    """Print a run's train.log; with `follow`, keep printing until the run is finished."""
    from runner.outputs.runs import runs_root
    from runner.watch.store import LOG_FILE

    out = out or sys.stdout.buffer
    root = runs_root(runs_dir)
    runs = list_runs(root, job)
    run = next((r for r in runs if r.name == run_id), None) if run_id else (runs[-1] if runs else None)
    if run is None:
        print(f"no run {run_id or ''} of job '{job}' under {root}".replace("  ", " "), file=sys.stderr)
        return EXIT_FAILED
    path = run / LOG_FILE
    offset = 0
    while True:
        status = read_status(run)
        try:
            with open(path, "rb") as handle:
                handle.seek(offset)
                chunk = handle.read()
        except FileNotFoundError:
            chunk = b""
        if chunk:
            out.write(chunk)
            out.flush()
            offset += len(chunk)
        finished = status is None or status.is_terminal
        if not follow or (finished and not chunk):
            break
        time.sleep(poll)
    if offset == 0 and not follow:
        state = read_status(run)
        print(f"no log yet for {job}/{run.name} ({state.state if state else 'no status'})", file=sys.stderr)
    return EXIT_OK

