"""Benchmark `runner watch`: spec landing -> its run `running`, and the idle daemon's CPU.

Latency: 20 specs land one at a time (written beside the jobs folder, then renamed in, as an
editor or `git checkout` does); for each, the time until its run's status.json says `running`
(the daemon writes that when it has started the job's process). Each job is then cancelled and
the next spec lands once the daemon is idle again, so every measurement starts from an idle
daemon. Targets: p95 <= 1 s. Idle CPU: the daemon's user+system CPU time over 60 s with nothing
to do, target < 1 %.

Run: python bench/watch_latency.py [--specs 20] [--idle 60] [--poll SECONDS]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.commands.watch import cancel_command  # noqa: E402
from runner.outputs.runs import list_runs, read_status  # noqa: E402
from runner.outputs.status import JobState  # noqa: E402

SPEC = """\
[model]
source = "local:{model}"
[data]
train = "train.jsonl"
[train]
max_steps = 1000
seed = {seed}
[resources]
threads = 1
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def wait_state(runs: Path, job: str, wanted: set[JobState], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list_runs(runs, job)
        status = read_status(found[-1]) if found else None
        if status is not None and status.state in wanted:
            return
        time.sleep(0.005)
    raise TimeoutError(f"{job} did not reach {wanted}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--specs", type=int, default=20)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measurement")
    parser.add_argument("--poll", type=float, help="measure the polling fallback instead of filesystem events")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        jobs, runs, staging = root / "jobs", root / "runs", root / "staging"
        for folder in (jobs, staging):
            folder.mkdir()
        (jobs / "train.jsonl").write_text('{"text": "hello"}\n')
        command = [sys.executable, "-m", "runner", "watch", str(jobs), "--runs-dir", str(runs)]
        if args.poll:
            command += ["--poll", str(args.poll)]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(root / "daemon.log", "wb") as log:  # the daemon keeps its own copy of the descriptor
            daemon = subprocess.Popen(
                command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 60
            while b"watching" not in (root / "daemon.log").read_bytes():
                if time.monotonic() > deadline or daemon.poll() is not None:
                    raise SystemExit("the daemon did not start:\n" + (root / "daemon.log").read_text())
                time.sleep(0.05)
            latencies = []
            for i in range(args.specs):
                job = f"bench-{i:02d}"
                (staging / f"{job}.toml").write_text(SPEC.format(model=root / "model", seed=i))
                landed = time.perf_counter()
                os.replace(staging / f"{job}.toml", jobs / f"{job}.toml")
                wait_state(runs, job, {JobState.RUNNING})
                latencies.append(time.perf_counter() - landed)
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    cancel_command(job, runs_dir=str(runs), wait=60)
                wait_state(runs, job, {JobState.CANCELLED, JobState.FAILED})
            time.sleep(2.0)  # let the last child's exit settle
            before, start = cpu_seconds(daemon.pid), time.perf_counter()
            time.sleep(args.idle)
            used, wall = cpu_seconds(daemon.pid) - before, time.perf_counter() - start
        finally:
            daemon.send_signal(signal.SIGTERM)
            code = daemon.wait(60)

    mode = f"--poll {args.poll:g}" if args.poll else "filesystem events"
    print(
        f"runner watch ({mode}), {args.specs} specs, landing -> running: "
        f"p50 {1000 * statistics.median(latencies):.0f} ms, p95 {1000 * percentile(latencies, 0.95):.0f} ms, "
        f"max {1000 * max(latencies):.0f} ms (target p95 <= 1000 ms)"
    )
    print(f"idle CPU over {wall:.0f} s: {used:.2f} s = {100 * used / wall:.3f} % (target < 1 %); daemon exit {code}")


if __name__ == "__main__":
    main()
