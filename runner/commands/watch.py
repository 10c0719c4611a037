"""`runner watch`, `runner status`, `runner cancel`, `runner logs`.

Everything but `watch` reads only the runs root (status.json, train.log), so they work with or
without a daemon and never import torch. The work is in runner.watch (the daemon, cancelling)
and runner.outputs.runs (which runs to show).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from runner.commands.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers
from runner.outputs.runs import list_runs, read_status
from runner.outputs.status import JobState, Status
from runner.units import short_duration

__all__ = [
    "add_cancel",
    "add_logs",
    "add_status",
    "add_watch",
    "cancel_command",
    "logs_command",
    "run_daemon",
    "status_command",
    "watch_command",
]


def add_watch(sub: Subparsers) -> None:
    from runner.commands.serve import add_api_options

    watch = sub.add_parser("watch", help="run every new or changed job file of a folder, one at a time (a daemon)")
    watch.add_argument("jobs_dir", help="the jobs folder to watch")
    watch.add_argument("--runs-dir", help="where runs are written (default: $RUNNER_RUNS or ./runs)")
    watch.add_argument("--state-dir", help="the daemon's own state (default: JOBS_DIR/../.runner/watch-<name>)")
    watch.add_argument(
        "--poll",
        nargs="?",
        type=float,
        const=1.0,
        metavar="SECONDS",
        help="poll the folder instead of using filesystem events (network filesystems); default 1 s",
    )
    watch.add_argument(
        "--max-attempts", type=int, default=5, help="attempts of an interrupted run before it fails (default 5)"
    )
    watch.add_argument(
        "--retry-killed",
        action="store_true",
        help="queue again a run whose process was killed with SIGKILL (not by the OOM killer), "
        "like an interrupted one; by default it waits for `runner run` or `runner cancel`",
    )
    watch.add_argument(
        "--on-change",
        choices=["queue", "restart"],
        default="queue",
        help="a running job's file changed: let it finish and queue the new version (default), "
        "or stop it and run the new version",
    )
    watch.add_argument("--debounce", type=float, default=0.1, help="quiet seconds after events before a rescan")
    watch.add_argument("--settle", type=float, default=0.3, help="seconds a new file must stay unchanged")
    watch.add_argument("--registry", help="the model registry file, for every job (as for `runner run`)")
    watch.add_argument(
        "--allow-remote-code",
        action="store_true",
        help="honour model.trust_remote_code in the jobs (as for `runner run`)",
    )
    watch.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default="local",
        help="run each job here, one at a time (default), or submit each with sbatch to a Slurm cluster",
    )
    watch.add_argument(
        "--slurm-poll",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="with --executor slurm: seconds between two squeue calls about the submitted jobs",
    )
    add_api_options(watch)
    watch.set_defaults(func=watch_command)


def add_status(sub: Subparsers) -> None:
    status = sub.add_parser("status", help="show jobs' runs: state, attempt, progress, loss, ETA, reason")
    status.add_argument("job", nargs="?", help="one job: all its runs and the latest error")
    status.add_argument("--json", action="store_true", help="machine-readable output (the status files)")
    status.add_argument("--runs-dir")
    status.set_defaults(func=lambda args: status_command(args.job, runs_dir=args.runs_dir, as_json=args.json))


def add_cancel(sub: Subparsers) -> None:
    cancel = sub.add_parser("cancel", help="cancel a job's queued or running run (through its daemon)")
    cancel.add_argument("job")
    cancel.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=600.0,
        metavar="SECONDS",
        help="wait until the run has stopped (default up to 600 s)",
    )
    cancel.add_argument("--runs-dir")
    cancel.set_defaults(func=lambda args: cancel_command(args.job, runs_dir=args.runs_dir, wait=args.wait))


def add_logs(sub: Subparsers) -> None:
    logs = sub.add_parser("logs", help="print a run's train.log (the job process's stdout and stderr)")
    logs.add_argument("job")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the run finishes")
    logs.add_argument("--run", help="run id (default: the newest run)")
    logs.add_argument("--runs-dir")
    logs.set_defaults(
        func=lambda args: logs_command(args.job, runs_dir=args.runs_dir, follow=args.follow, run_id=args.run)
    )


def watch_command(args: argparse.Namespace) -> int:
    """The daemon, with the HTTP API and dashboard served from its process when --api is given."""

    def run() -> int:
        return run_daemon(
            args.jobs_dir,
            runs_dir=args.runs_dir,
            state_dir=args.state_dir,
            poll=args.poll,
            max_attempts=args.max_attempts,
            on_change=args.on_change,
            debounce=args.debounce,
            settle=args.settle,
            registry=args.registry,
            allow_remote_code=args.allow_remote_code,
            executor=args.executor,
            slurm_poll=args.slurm_poll,
            retry_killed=args.retry_killed,
        )

    if args.api:
        from runner.commands.serve import with_api

        return with_api(args, run)
    return run()


# ------------------------------------------------------------------------------- watch


def run_daemon(
    jobs_dir: str,
    *,
    runs_dir: str | None,
    state_dir: str | None,
    poll: float | None,
    max_attempts: int,
    on_change: str,
    debounce: float,
    settle: float,
    registry: str | None = None,
    allow_remote_code: bool = False,
    executor: str = "local",
    slurm_poll: float = 5.0,
    retry_killed: bool = False,
) -> int:
    """Run the daemon until it is stopped; its exit code, or 1 if another daemon holds the folder, 2 when
    the folder or the Slurm client commands are missing."""
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
            print(
                f"error: --executor slurm needs the Slurm client commands on this machine; not found: {missing}",
                file=sys.stderr,
            )
            return EXIT_USAGE
    config = WatchConfig(
        jobs_dir=folder,
        runs_root=runs_root(runs_dir),
        state_dir=Path(state_dir).absolute() if state_dir else default_state_dir(folder),
        poll=poll,
        max_attempts=max_attempts,
        on_change=on_change,
        debounce=debounce,
        settle=settle,
        registry=Path(registry).absolute() if registry else None,
        allow_remote_code=allow_remote_code,
        executor=executor,
        slurm_poll=slurm_poll,
        retry_killed=retry_killed,
    )
    try:
        return Daemon(config).run()
    except Locked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


# ------------------------------------------------------------------------------ status


def _reason(status: Status) -> str:
    waiting = status.extra.get("waiting")
    if status.state is JobState.QUEUED and waiting:
        return str(waiting)
    if status.reason is None:
        return ""
    first = (status.error or "").strip().splitlines()
    return f"{status.reason}: {first[0]}" if first else str(status.reason)


def _row(status: Status) -> list[str]:
    step = (
        f"{status.step}/{status.total_steps}"
        if status.step is not None and status.total_steps
        else (str(status.step) if status.step is not None else "-")
    )
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
    from runner.outputs.runs import runs_root, status_rows

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
            print(
                "slurm: "
                + " ".join(
                    f"{key}={slurm[key]}"
                    for key in ("job_id", "state", "reason", "exit_code", "nodes")
                    if slurm.get(key)
                )
            )
        for line in _preference_lines(status):
            print(line)
        if status.error:
            print(f"\n{status.error}")
    return EXIT_OK


def _preference_lines(status: Status) -> list[str]:
    """A preference run's latest step metrics and its held-out reward accuracy and margin (before ->
    latest, or before -> after once finished)."""

    def number(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

    lines = []
    step = status.extra.get("preference")
    if isinstance(step, dict):
        lines.append(
            f"step {step.get('step')}: reward accuracy {number(step.get('reward_accuracy'))}, margin "
            f"{number(step.get('reward_margin'))} (chosen {number(step.get('reward_chosen'))}, rejected "
            f"{number(step.get('reward_rejected'))})"
        )
    before, latest = status.extra.get("eval_before"), status.extra.get("eval_after") or status.extra.get("eval")
    if status.extra.get("eval_metric") == "reward_accuracy" or isinstance(step, dict):
        before = before if isinstance(before, dict) else {}
        latest = latest if isinstance(latest, dict) else {}
        if before or latest:
            lines.append(
                "held-out: "
                + ", ".join(
                    f"{name.replace('_', ' ')} {number(before.get(name))} -> {number(latest.get(name))}"
                    for name in ("reward_accuracy", "reward_margin")
                    if name in before or name in latest
                )
            )
    return ["", *lines] if lines else []


# ------------------------------------------------------------------------------ cancel


def cancel_command(job: str, *, runs_dir: str | None, wait: float | None) -> int:
    """`runner cancel`: cancel_runs, then (with --wait) wait until the runs have stopped."""
    from runner.outputs.runs import runs_root
    from runner.watch.cancel import cancel_runs

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


def logs_command(
    job: str, *, runs_dir: str | None, follow: bool, run_id: str | None, out: Any = None, poll: float = 0.2
) -> int:
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
