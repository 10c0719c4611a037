"""A `Plan` as the text `runner plan` prints."""

from __future__ import annotations

from runner.plan.build import Plan
from runner.units import format_binary_size

__all__ = ["render"]


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def render(plan: Plan) -> str:
    m, d, s, mem = plan.model, plan.data, plan.steps, plan.memory
    lines = [f"plan for job '{plan.job}'"]
    dev = m["device"]
    lines.append(
        f"model     {m['source']} ({m['architecture']}: {m['layers']} layers, hidden {m['hidden_size']}, "
        f"vocab {m['vocab_size']:,})"
    )
    ckpt = ""
    if m["checkpoint_parameters"] is not None:
        ckpt = (
            f"; safetensors headers: {m['checkpoint_parameters']:,} in {', '.join(m['checkpoint_dtypes'])}, "
            f"{format_binary_size(m['checkpoint_bytes'])}"
        )
    lines.append(f"          {m['parameters']:,} parameters{ckpt}")
    lines.append(
        f"device    {dev['device']}, weights {dev['dtype']}, precision {dev['precision']}, "
        f"attention {dev['attn_implementation']}"
        + (f", 4-bit compute {dev['compute_dtype']}" if dev.get("compute_dtype") else "")
    )
    lines.append(
        f"data      {d['records']:,} records -> {d['train_examples']:,} train / {d['eval_examples']:,} eval examples "
        f"({d['format']}); {d['train_tokens']:,} train tokens, {d['trainable_tokens']:,} trained on; longest "
        f"{d['longest']} ({d['truncated']} truncated){' [cached]' if d['cached'] else ''}"
    )
    lines.append(
        f"batches   largest {d['peak_batch'][0]} x {d['peak_batch'][1]} = {d['peak_batch_tokens']:,} tokens; "
        f"mean {d['mean_batch_tokens']:,.0f}; {100 * d['real_token_fraction']:.0f}% real (not padding)"
    )
    lines.append(
        f"steps     {s['total']:,} optimizer steps ({s['per_epoch']:,} per epoch; global batch {s['global_batch']} = "
        f"{s['batch_size']} x {s['processes']} process(es) x {s['grad_accum']} accumulation)"
    )
    methods = mem["methods"]
    lines.append(f"memory    peak per process on {mem['device']} (the job uses {mem['job_method']}):")
    header = f"          {'':<22}" + "".join(f"{name:>12}" for name in methods)
    lines.append(header)
    rows = [
        ("trainable parameters", "trainable", False),
        ("weights", "weights", True),
        ("gradients", "gradients", True),
        ("optimizer state", "optimizer", True),
        ("activations", "activations", True),
        ("runtime + data", "runtime", True),
        ("peak", "peak", True),
    ]
    if any(e.get("reference") for e in methods.values()):  # preference jobs: the reference model's share
        rows.insert(5, ("reference model", "reference", True))
    for label, key, is_bytes in rows:
        cells = "".join(f"{(format_binary_size(e[key]) if is_bytes else f'{e[key]:,}'):>12}" for e in methods.values())
        lines.append(f"          {label:<22}{cells}")
    b = plan.budget
    if b["bytes"] is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        share = f" ({mem['processes_sharing_memory']} processes)" if mem["processes_sharing_memory"] > 1 else ""
        lines.append(
            f"budget    {format_binary_size(b['bytes'])} ({b['source']}): {mem['job_method']} needs "
            f"{format_binary_size(b['needed_bytes'])}"
            f"{share} -> {verdict}"
        )
    if plan.time:
        t = plan.time
        c = t["calibration"]
        lines.append(
            f"time      ~{_duration(t['total_seconds'])}: {s['total']:,} steps x {t['seconds_per_step']:.2f} s"
            + (f" + {t['evaluations']} evaluations ({_duration(t['eval_seconds'])})" if t["evaluations"] else "")
        )
        lines.append(
            f"          calibrated on {c['device']} with {c['threads']} thread(s): {c['seconds_per_1k_tokens']:.3f} s "
            f"per 1k tokens (forward + backward) in {c['seconds_spent']:.0f} s"
        )
    for suggestion in plan.suggestions:
        lines.append(f"change    {suggestion}")
    for note in plan.notes:
        lines.append(f"note      {note}")
    return "\n".join(lines)
