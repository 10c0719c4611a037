"""`runner plan JOB`: what a job will need, before it runs. No weights are loaded.

From the model's config and its safetensors headers: parameters, what full fine-tuning, LoRA and
QLoRA would train, and the memory each needs for weights, gradients, optimizer state and
activations. From the data (tokenized like the run does, cached): records, tokens, the batch
shapes the run will see, and the number of optimizer steps. From a short calibration on this
machine's device (copies of the model with 1, 2 and 4 layers and random weights, run on short
rows): activation bytes per token and seconds per token, scaled to the full depth and the job's
largest and mean batch. Then whether the job fits a memory budget (`--memory`, else what the
device has) and what to change if it does not.

The estimator is pure functions over small dataclasses, one module per section: `shape`
(`ModelShape`), `data` (`DataStats`, `BatchShape`), `calibration` (`Calibration`), `estimate`
(-> `MemoryEstimate`, `TimeEstimate`, suggestions); `machine` reads what this machine has;
`build.plan_job` gathers the inputs into a `Plan` and `render` writes it as text (the command is
runner.commands.plan). The memory model, per training process:

    peak = runtime + weights + optimizer state + max(gradients + activations, ...)

- runtime: this process's resident memory after importing the training stack and loading the
  tokenizer (measured here, on CPU), plus the tokenized examples; on a GPU, the CUDA context;
- weights: parameters x dtype size; QLoRA packs the quantised linear layers into 4 bits plus
  block constants. On the CPU the loaded safetensors file stays mapped: LoRA reads its weights
  from that mapping, and QLoRA keeps it resident beside the packed copy;
- activations: the bytes autograd saves for the backward pass (measured per token, per layer,
  and per token squared where attention materialises scores), for the largest micro-batch, plus
  the logits and their gradient, times the allocator's retention: on the CPU glibc keeps freed
  activation memory for the next step and its heap fragments -- measured ~1.13x of the live bytes
  for full fine-tuning (the weight gradients reuse the freed activations) and ~1.3-1.4x for
  (Q)LoRA (tiny gradients, nothing reuses them) over SmolLM2-135M runs (bench/memory.py);
  PyTorch's CUDA caching allocator is taken as ~1.1x (not measured here: no GPU).
- full fine-tuning peaks either at the start of the backward pass (activations + the output
  layer's gradient) or in the optimizer step (all gradients + the optimizer's temporaries),
  whichever is larger.
"""

from __future__ import annotations

from runner.plan.build import Plan, plan_job
from runner.plan.calibration import Calibration, analytic_calibration, calibrate
from runner.plan.data import BatchShape, DataStats, batch_shape, data_stats, optimizer_steps
from runner.plan.estimate import (
    ALLOCATOR_RETENTION,
    METHODS,
    MemoryEstimate,
    TimeEstimate,
    estimate_memory,
    estimate_time,
    optimizer_state_bytes,
    suggest,
)
from runner.plan.machine import available_memory, rss_bytes
from runner.plan.render import render
from runner.plan.shape import (
    Linear,
    ModelShape,
    lora_targets,
    model_shape,
    quantized_bytes_per_weight,
    shape_of,
    trainable_parameters,
)

__all__ = [
    "ALLOCATOR_RETENTION",
    "METHODS",
    "BatchShape",
    "Calibration",
    "DataStats",
    "Linear",
    "MemoryEstimate",
    "ModelShape",
    "Plan",
    "TimeEstimate",
    "analytic_calibration",
    "available_memory",
    "batch_shape",
    "calibrate",
    "data_stats",
    "estimate_memory",
    "estimate_time",
    "lora_targets",
    "model_shape",
    "optimizer_state_bytes",
    "optimizer_steps",
    "plan_job",
    "quantized_bytes_per_weight",
    "render",
    "rss_bytes",
    "shape_of",
    "suggest",
    "trainable_parameters",
]
