"""`runner run` start-up: seconds from spawning the process to the training loop's start and to the
end of the first optimizer step, with the model snapshot and the tokenised-data cache warm (the
throughput benchmark's job, one step), and where the import time goes (`python -X importtime`).

    PYTHONPATH=. python bench/start.py --repeats 5 [--importtime 25] [--baseline /tmp/basecode]

Each run is a fresh `python -m runner run JOB` process; the first run (not counted) warms the
caches. "loop" is the moment the runner prints `training: ...` (the Trainer's on_train_begin);
"first step" is the time stamp of the first step's metrics line. `--importtime N` runs once more
under `-X importtime` and prints the N imports with the largest cumulative time. `--baseline DIR`
runs the runner of another tree (e.g. `git archive main` unpacked in DIR) in turns with this one,
so both see the same stretch of a shared machine; the ratio is the result.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _records, runner_job


def one_run(
    job: Path, runs: Path, extra: list[str] | None = None, code: Path | None = None
) -> tuple[float, float, str]:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = str(code or Path(__file__).resolve().parents[1])
    env.pop("RUNNER_JEMALLOC_ACTIVE", None)
    with tempfile.TemporaryFile(mode="w+") as errors:  # a file, not a pipe: -X importtime writes a lot there
        started = time.time()
        process = subprocess.Popen(
            [sys.executable, *(extra or []), "-m", "runner", "run", str(job), "--runs-dir", str(runs), "--fresh"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert process.stdout is not None
        loop = None
        for line in process.stdout:
            if loop is None and line.startswith("training: "):
                loop = time.time() - started
        code = process.wait()
        errors.seek(0)
        stderr = errors.read()
    if code != 0 or loop is None:
        raise SystemExit(f"runner run failed:\n{stderr[-3000:]}")
    run = max((p for p in (runs / "bench").iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    first = next(json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if "loss" in line)
    return loop, first["time"] - started, stderr


def top_imports(stderr: str, n: int) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the slowest imports in `-X importtime` output."""
    rows = []
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = line.removeprefix("import time:").split("|", 2)
            rows.append((int(cumulative) / 1e6, name.rstrip()))
    return sorted(rows, reverse=True)[:n]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--records", type=int, default=8, help="records in the job (one batch of 8: one step)")
    parser.add_argument("--importtime", type=int, default=0)
    parser.add_argument("--baseline", type=Path, help="a tree of the runner to compare with, run in turns")
    args = parser.parse_args()
    sides = {"this tree": None, **({"baseline": args.baseline.resolve()} if args.baseline else {})}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(args.records)))
        job = work / "bench.toml"
        job.write_text(runner_job("runner", max_steps=1))
        for code in sides.values():
            one_run(job, work / "runs", code=code)  # warm: model snapshot, data cache
        loops: dict[str, list[float]] = {side: [] for side in sides}
        firsts: dict[str, list[float]] = {side: [] for side in sides}
        loads = [os.getloadavg()[0]]
        for i in range(args.repeats):
            order = list(sides) if i % 2 == 0 else list(sides)[::-1]
            for side in order:
                loop, first, _ = one_run(job, work / "runs", code=sides[side])
                loops[side].append(loop)
                firsts[side].append(first)
                loads.append(os.getloadavg()[0])
                print(
                    f"run {i + 1} {side}: start -> loop {loop:.2f} s, start -> first step end {first:.2f} s", flush=True
                )
        print(
            f"{args.repeats} runs per side, {args.records} records (one step); 1-min load "
            f"{min(loads):.2f}-{max(loads):.2f}; {sys.executable}"
        )
        for side in sides:
            print(
                f"  {side:10s} medians: start -> loop {statistics.median(loops[side]):.2f} s, start -> first step "
                f"end {statistics.median(firsts[side]):.2f} s (best {min(loops[side]):.2f} / {min(firsts[side]):.2f})"
            )
        if args.baseline:
            print(
                f"  this tree / baseline (medians): start -> loop "
                f"{statistics.median(loops['this tree']) / statistics.median(loops['baseline']):.2f}, "
                f"first step end {statistics.median(firsts['this tree']) / statistics.median(firsts['baseline']):.2f}"
            )
        if args.importtime:
            _, _, stderr = one_run(job, work / "runs", ["-X", "importtime"])
            for seconds, name in top_imports(stderr, args.importtime):
                print(f"  {seconds:6.2f} s  {name}")


if __name__ == "__main__":
    main()
