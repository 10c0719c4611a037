"""Memory and time estimates: pure functions over the model shape, the batch shape and the
calibration (see the package docstring for the memory model), and the changes to a job that
bring its peak under a budget."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from runner.plan.calibration import Calibration
from runner.plan.data import BatchShape, DataStats, batch_shape
from runner.plan.shape import ModelShape, quantized_bytes_per_weight, trainable_parameters
from runner.units import format_binary_size

if TYPE_CHECKING:
    from runner.spec import JobSpec

__all__ = [
    "ALLOCATOR_RETENTION",
    "METHODS",
    "MemoryEstimate",
    "TimeEstimate",
    "estimate_memory",
    "estimate_time",
    "optimizer_state_bytes",
    "suggest",
]

MiB = 2**20
METHODS = ("full", "lora", "qlora")

# resident bytes per live activation byte at the peak (see the package docstring and bench/memory.py):
# device -> method -> factor
ALLOCATOR_RETENTION = {
    "cpu": {"full": 1.15, "lora": 1.4, "qlora": 1.4},
    "cuda": {"full": 1.1, "lora": 1.1, "qlora": 1.1},
}
CUDA_CONTEXT_BYTES = 600 * MiB
DATA_BYTES_PER_TOKEN = 72  # input_ids, labels, attention_mask as Python lists of ints


@dataclass(frozen=True)
class MemoryEstimate:
    method: str
    trainable: int
    weights: int
    gradients: int
    optimizer: int
    activations: int
    runtime: int
    peak: int
    phase: str  # where the peak is: "backward" or "optimizer step"
    mapped_file: int = 0  # part of `weights` that is the mapped checkpoint (page cache, reclaimable)
    reference: int = 0  # a preference job's reference model: a frozen copy, or its pass's logits

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["peak_bytes"] = self.peak
        return d


def optimizer_state_bytes(shape: ModelShape, trainable: int, optimizer: str, param_bytes: int = 4) -> int:
    if optimizer in ("adamw_torch", "adamw_torch_fused"):
        return 2 * trainable * param_bytes
    if optimizer == "adafactor":  # factored second moments: about rows + columns per matrix
        return int(trainable * param_bytes * 0.02)
    return 0  # plain SGD (no momentum)


def estimate_memory(
    shape: ModelShape,
    method: str,
    *,
    device: str,
    batch: BatchShape,
    calibration: Calibration,
    r: int = 16,
    target_modules: Sequence[str] = ("all-linear",),
    bias: str = "none",
    double_quant: bool = True,
    optimizer: str = "adamw_torch",
    weight_bytes: int = 4,
    gradient_checkpointing: bool = False,
    data_tokens: int = 0,
    reference_bytes: int = 0,
) -> MemoryEstimate:
    """Peak memory of one training process for `method`; see the module docstring. `reference_bytes`:
    what a preference job's reference model holds while the policy's activations are alive
    (runner.plan.preference)."""
    trainable = trainable_parameters(shape, method, r=r, target_modules=target_modules, bias=bias)
    mapped = 0
    if method == "qlora":
        packed = sum(linear.in_features * linear.out_features for linear in shape.quantized_linears)
        weights = int(packed * quantized_bytes_per_weight(double_quant) + shape.non_quantized_parameters * 4)
        if device == "cpu" and shape.checkpoint_bytes:  # the quantiser read the whole mapped file
            mapped = shape.checkpoint_bytes
    else:
        weights = shape.parameters * weight_bytes
        if device == "cpu" and method == "lora" and shape.checkpoint_bytes and shape.checkpoint_bytes >= weights * 0.99:
            # frozen weights stay in the mapped file (zero copy); counted once, as weights
            weights = shape.checkpoint_bytes
    weights += trainable * 4 if method != "full" else 0  # LoRA matrices are fp32
    gradients = trainable * (weight_bytes if method == "full" else 4)
    optimizer_bytes = optimizer_state_bytes(shape, trainable, optimizer, weight_bytes if method == "full" else 4)

    rows, columns = batch.peak_rows, batch.peak_columns
    saved = calibration.saved_bytes(method, rows, columns)
    if gradient_checkpointing:  # each layer keeps only its input; one layer is recomputed at a time
        per_layer = saved / max(1, shape.num_layers) if shape.num_layers else saved
        saved = per_layer + rows * columns * shape.hidden_size * 4 * shape.num_layers
    logit_rows = rows * columns if batch.peak_logit_tokens is None else batch.peak_logit_tokens
    logits = 2 * logit_rows * shape.vocab_size * 4  # logits + their gradient, fp32 for the loss
    retention = ALLOCATOR_RETENTION.get(device, {}).get(method, 1.0)
    activations = int((saved + logits) * retention)
    runtime = (
        CUDA_CONTEXT_BYTES
        if device == "cuda"
        else (calibration.runtime_bytes or 0) + data_tokens * DATA_BYTES_PER_TOKEN
    )
    base = runtime + weights + mapped + optimizer_bytes + reference_bytes
    if method == "full":
        head = shape.vocab_size * shape.hidden_size * weight_bytes  # the head's gradient comes first
        backward = base + activations + int(head * retention)
        step = base + gradients + trainable * weight_bytes  # foreach AdamW temporaries
        peak, phase = (backward, "backward") if backward >= step else (step, "optimizer step")
    else:
        peak, phase = base + gradients + activations, "backward"
    return MemoryEstimate(
        method=method,
        trainable=trainable,
        weights=weights + mapped,
        gradients=gradients,
        optimizer=optimizer_bytes,
        activations=activations,
        runtime=runtime,
        peak=int(peak),
        phase=phase,
        mapped_file=mapped,
        reference=reference_bytes,
    )


@dataclass(frozen=True)
class TimeEstimate:
    steps: int
    seconds_per_step: float
    train_seconds: float
    evaluations: int
    eval_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.train_seconds + self.eval_seconds


def estimate_time(
    calibration: Calibration,
    batch: BatchShape,
    *,
    steps: int,
    grad_accum: int,
    eval_tokens: int,
    evaluations: int,
    passes: float = 1.0,
) -> TimeEstimate | None:
    """`passes`: forward + backward passes' worth of work per token (a preference job's reference and
    KL passes, forward only, add about a third each)."""
    if calibration.seconds_per_token is None:
        return None
    per_pass = calibration.seconds_per_pass + batch.mean_tokens * calibration.seconds_per_token * passes
    per_step = grad_accum * per_pass + (calibration.optimizer_seconds or 0.0)
    eval_each = eval_tokens * calibration.seconds_per_token / 3  # forward only: about a third
    return TimeEstimate(
        steps=steps,
        seconds_per_step=per_step,
        train_seconds=per_step * steps,
        evaluations=evaluations,
        eval_seconds=eval_each * evaluations,
    )


def suggest(
    shape: ModelShape,
    spec: JobSpec,
    stats: DataStats,
    calibration: Calibration,
    device: str,
    budget: int,
    weight_bytes: int,
    qlora_ok: bool,
) -> list[str]:
    """Changes to the job that bring the peak under `budget`, each with the peak it gives."""
    adapter, train, data = spec.adapter, spec.train, spec.data

    def peak(
        method: str = adapter.method,
        batch_size: int = train.batch_size,
        max_length: int = data.max_length,
        packing: bool = data.packing,
        checkpointing: bool = train.gradient_checkpointing,
    ) -> int:
        lengths = [min(n, max_length) for n in stats.train_lengths]
        shape_ = batch_shape(lengths, batch_size, packing=packing, seed=train.seed)
        return estimate_memory(
            shape,
            method,
            device=device,
            batch=shape_,
            calibration=calibration,
            r=adapter.r,
            target_modules=adapter.target_modules,
            bias=adapter.bias,
            double_quant=adapter.double_quant,
            optimizer=train.optimizer,
            weight_bytes=weight_bytes,
            gradient_checkpointing=checkpointing,
            data_tokens=stats.train_tokens + stats.eval_tokens,
        ).peak

    ideas: list[tuple[str, int]] = []
    if not train.gradient_checkpointing:
        ideas.append(
            (
                "train.gradient_checkpointing = true (recompute activations in the backward pass)",
                peak(checkpointing=True),
            )
        )
    b = train.batch_size
    while b > 1:
        b //= 2
        accum = train.grad_accum * (train.batch_size // b)
        value = peak(batch_size=b)
        ideas.append((f"train.batch_size = {b}, train.grad_accum = {accum} (same global batch)", value))
        if value <= budget:
            break
    longest = max(stats.train_lengths, default=0)
    if longest > 64:
        shorter = max(64, longest // 2)
        ideas.append((f"data.max_length = {shorter} (longest example now {longest} tokens)", peak(max_length=shorter)))
    if not data.packing:
        ideas.append(("data.packing = true (no padding: rows of real tokens only)", peak(packing=True)))
    order = ["full", "lora", "qlora"] if qlora_ok else ["full", "lora"]
    for method in order[order.index(adapter.method) + 1 :] if adapter.method in order else []:
        ideas.append((f'adapter.method = "{method}"', peak(method=method)))
    fitting = [(text, value) for text, value in ideas if value <= budget]
    chosen = fitting or sorted(ideas, key=lambda item: item[1])[:2]
    return [f"{text}: peak ~{format_binary_size(value)}" for text, value in chosen]
