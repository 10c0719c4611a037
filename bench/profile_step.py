"""Where one training step of the throughput benchmark's job goes: a torch.profiler trace of the
runner's own training loop (the recipe, its CausalTrainer and every [train.speed] switch as the
job sets them), folded into the categories bench/NOTES.md tabulates.

    PYTHONPATH=. python bench/profile_step.py --steps 2 [--speed KEY=VALUE ...] [--trace out.json]

Steps 1 and 2 are warm-up; the next `--steps` optimizer steps are profiled. Every profiler event's
*self* time is put in one category:

- base GEMMs: `mm`/`addmm`/`bmm` of the frozen weights (forward, and the input gradient backward);
- LoRA matmuls: the rank-r products (an operand with the adapter rank as a dimension);
- attention: the SDPA kernels and their backward;
- LM head + loss: GEMMs with the vocabulary as a dimension, log-softmax, NLL and their backward;
- optimizer: everything under `Optimizer.step`/`zero_grad` and the gradient-norm clipping;
- elementwise: every other kernel that touches data (norms, activations, rotary, copies, adds);
- framework: view/reshape/dispatch ops that move no data, plus the Python and autograd-engine time
  no operator accounts for (the step's wall time minus all operator self time).

The profiler adds per-operator overhead, so the profiled step is slower than a plain one; the
shares are what matters, and the plain step time (steps outside the profile) is printed beside.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import _records, runner_job

CATEGORIES = ("base GEMMs", "LoRA matmuls", "attention", "elementwise", "LM head + loss", "optimizer", "framework")
VOCAB = 49152
GEMMS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::_weight_int4pack_mm"}
LOSS_OPS = ("log_softmax", "nll_loss", "cross_entropy", "softmax_backward")
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")
NO_DATA = {
    "aten::view",
    "aten::reshape",
    "aten::_reshape_alias",
    "aten::t",
    "aten::transpose",
    "aten::expand",
    "aten::as_strided",
    "aten::unsqueeze",
    "aten::squeeze",
    "aten::slice",
    "aten::select",
    "aten::detach",
    "aten::alias",
    "aten::empty",
    "aten::empty_like",
    "aten::empty_strided",
    "aten::permute",
    "aten::linear",
    "aten::matmul",
    "aten::_unsafe_view",
    "aten::unflatten",
    "aten::flatten",
    "aten::resolve_conj",
    "aten::resolve_neg",
    "aten::lift_fresh",
    "aten::numpy_T",
    "aten::split",
    "aten::split_with_sizes",
    "aten::chunk",
    "aten::narrow",
    "aten::result_type",
    "aten::item",
    "aten::_local_scalar_dense",
    "aten::is_nonzero",
    "aten::contiguous",
    "aten::to",
    "aten::_to_copy",
    "aten::type_as",
    "aten::dropout",
    "aten::identity",
    "aten::set_",
    "detach",
    "aten::unbind",
}


def _ancestors(event: Any) -> list[str]:
    names, parent = [], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def categorise(event: Any, rank: int) -> str:
    name = event.name
    above = _ancestors(event)
    if (
        any(a.startswith(("Optimizer.step", "Optimizer.zero_grad")) for a in above)
        or name.startswith(("Optimizer.", "aten::_foreach", "aten::_fused_adam"))
        or "clip_grad" in " ".join(above)
    ):
        return "optimizer"
    if any(key in name for key in ATTENTION) or any(any(k in a for k in ATTENTION) for a in above):
        return "attention"
    shapes = [tuple(s) for s in (event.input_shapes or []) if isinstance(s, (list, tuple))]
    dims = {d for s in shapes for d in s if isinstance(d, int)}
    if name in GEMMS:
        if VOCAB in dims:
            return "LM head + loss"
        if rank in dims:
            return "LoRA matmuls"
        return "base GEMMs"
    if any(key in name for key in LOSS_OPS) or any(any(k in a for k in LOSS_OPS) for a in above):
        return "LM head + loss"
    if name in NO_DATA or not name.startswith("aten::"):
        return "framework"
    return "elementwise"


def fold(events: list[Any], wall_s: float, rank: int) -> tuple[dict[str, float], dict[str, float]]:
    """Seconds per category (self times; framework also takes the unaccounted wall time) and the
    elementwise operators' own seconds (for the detail line)."""
    seconds: dict[str, float] = defaultdict(float)
    detail: dict[str, float] = defaultdict(float)
    for event in events:
        if event.device_type.name != "CPU":
            continue
        category = categorise(event, rank)
        self_s = event.self_cpu_time_total / 1e6
        seconds[category] += self_s
        if category == "elementwise":
            detail[event.name] += self_s
    accounted = sum(seconds.values())
    seconds["framework"] += max(wall_s - accounted, 0.0)
    return dict(seconds), dict(detail)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps profiled (after 2 warm-up steps)")
    parser.add_argument("--speed", action="append", default=[], help="KEY=VALUE of [train.speed] (repeatable)")
    parser.add_argument("--trace", help="also write a Chrome trace of the profiled steps here")
    parser.add_argument("--json", help="write the table's numbers here")
    args = parser.parse_args()

    import tomllib

    import tomli_w
    import torch
    from torch.profiler import ProfilerActivity, profile
    from transformers import TrainerCallback

    import runner.train.causal_lm as recipe
    from runner.pipeline import run_job
    from runner.spec import load_job

    warmup = 2
    total_steps = warmup + args.steps + 1
    spec = tomllib.loads(runner_job("runner", max_steps=total_steps))
    for item in args.speed:
        key, value = item.split("=", 1)
        spec["train"].setdefault("speed", {})[key] = json.loads(value)
    rank = spec["adapter"]["r"]
    state: dict[str, Any] = {"step_ends": [], "tokens": []}

    class Profiled(TrainerCallback):
        def on_step_begin(self, a: Any, s: Any, control: Any, **kw: Any) -> None:
            if s.global_step == warmup:
                state["prof"] = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
                state["prof"].__enter__()
                state["t0"] = time.perf_counter()

        def on_step_end(self, a: Any, s: Any, control: Any, **kw: Any) -> None:
            state["step_ends"].append(time.perf_counter())
            if s.global_step == warmup + args.steps:
                state["wall"] = time.perf_counter() - state["t0"]
                state["prof"].__exit__(None, None, None)

    class Trainer(recipe.CausalTrainer):  # type: ignore[misc]  # the recipe's trainer plus the profiler
        def __init__(self, *a: Any, callbacks: Any = None, **kw: Any) -> None:
            super().__init__(*a, callbacks=[*(callbacks or []), Profiled()], **kw)

        def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
            state["tokens"].append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, num_items_in_batch)

    recipe.CausalTrainer = Trainer
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _records(args.records)))
        (work / "bench.toml").write_text(tomli_w.dumps(spec))
        result = run_job(load_job(work / "bench.toml"), work / "runs", resume=False)
        if result.exit_code != 0:
            raise SystemExit(f"the run failed: {result}")
    prof = state["prof"]
    if args.trace:
        prof.export_chrome_trace(args.trace)
    seconds, detail = fold(list(prof.events()), state["wall"], rank)
    tokens = sum(state["tokens"][warmup : warmup + args.steps])
    ends = state["step_ends"]
    plain = (ends[-1] - ends[-2]) / state["tokens"][-1] * 1000 if len(ends) > warmup + args.steps else None
    wall = state["wall"]
    print(
        f"profiled steps {warmup + 1}-{warmup + args.steps}: {tokens} tokens, {wall:.2f} s with the profiler "
        f"({tokens / wall:.0f} tokens/s); unprofiled step after it: "
        f"{plain:.3f} s per 1000 tokens; threads {torch.get_num_threads()}; load {os.getloadavg()[0]:.2f}"
    )
    print("| part | s per step | share |\n|---|---|---|")
    for category in CATEGORIES:
        value = seconds.get(category, 0.0)
        print(f"| {category} | {value / args.steps:.3f} | {value / wall:.1%} |")
    print(f"| total | {wall / args.steps:.3f} | 100% |")
    top = sorted(detail.items(), key=lambda kv: -kv[1])[:12]
    print("elementwise detail: " + ", ".join(f"{k.removeprefix('aten::')} {v / args.steps:.3f}" for k, v in top))
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "seconds": seconds,
                    "detail": detail,
                    "wall": wall,
                    "tokens": tokens,
                    "steps": args.steps,
                    "plain_s_per_1000": plain,
                    "load": os.getloadavg()[0],
                    "speed": args.speed,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
