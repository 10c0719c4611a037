"""`runner plan JOB`: what a job will need, before it runs. No weights are loaded.

From the model's config and its safetensors headers: parameters, what full fine-tuning, LoRA and
QLoRA would train, and the memory each needs for weights, gradients, optimizer state and
activations. From the data (tokenized like the run does, cached): records, tokens, the batch
shapes the run will see, and the number of optimizer steps. From a short calibration on this
machine's device (copies of the model with 1, 2 and 4 layers and random weights, run on short
rows): activation bytes per token and seconds per token, scaled to the full depth and the job's
largest and mean batch. Then whether the job fits a memory budget (`--memory`, else what the
device has) and what to change if it does not.

The estimator is pure functions over small dataclasses (`ModelShape`, `DataStats`,
`Calibration` -> `MemoryEstimate`, `TimeEstimate`); `plan_job` gathers the inputs and
`plan_command` prints them. The memory model, per training process:

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

import copy
import hashlib
import json
import math
import os
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from runner.fsutil import digest_file

MiB = 2**20
GiB = 2**30
METHODS = ("full", "lora", "qlora")

# resident bytes per live activation byte at the peak (see the module docstring and bench/memory.py):
# device -> method -> factor
ALLOCATOR_RETENTION = {
    "cpu": {"full": 1.15, "lora": 1.4, "qlora": 1.4},
    "cuda": {"full": 1.1, "lora": 1.1, "qlora": 1.1},
}
CUDA_CONTEXT_BYTES = 600 * MiB
DATA_BYTES_PER_TOKEN = 72  # input_ids, labels, attention_mask as Python lists of ints
CACHE_FORMAT = 1


# ------------------------------------------------------------------------------------ model


@dataclass(frozen=True)
class Linear:
    name: str
    in_features: int
    out_features: int
    bias: bool


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need to know about the model, read from its config (no weights)."""

    architecture: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    parameters: int  # unique parameters (tied weights counted once)
    linears: tuple[Linear, ...]  # every linear layer, the output head included
    output_head: str | None  # name of the output embedding; LoRA's 'all-linear' leaves it out
    bias_parameters: int  # all biases of the model (adapter.bias = "all")
    checkpoint_parameters: int | None = None  # from the safetensors headers
    checkpoint_bytes: int | None = None
    checkpoint_dtypes: tuple[str, ...] = ()

    @property
    def non_quantized_parameters(self) -> int:
        """Parameters bitsandbytes leaves in full precision: everything but the linear weights
        (the output head stays full precision too)."""
        return self.parameters - sum(l.in_features * l.out_features for l in self.quantized_linears)

    @property
    def quantized_linears(self) -> tuple[Linear, ...]:
        return tuple(l for l in self.linears if l.name != self.output_head)


def lora_targets(shape: ModelShape, target_modules: Sequence[str]) -> list[Linear]:
    """The linear layers peft puts LoRA on: 'all-linear' is every linear layer but the output
    head; names match a module's full name or its last dotted parts."""
    if list(target_modules) == ["all-linear"]:
        return list(shape.quantized_linears)
    chosen = []
    for linear in shape.linears:
        if any(linear.name == t or linear.name.endswith("." + t) for t in target_modules):
            chosen.append(linear)
    return chosen


def trainable_parameters(shape: ModelShape, method: str, *, r: int = 16, target_modules: Sequence[str] = ("all-linear",),
                         bias: str = "none") -> int:
    """Parameters that get gradients: all of them for full fine-tuning; for (Q)LoRA r x (in + out)
    per adapted layer, plus the biases adapter.bias makes trainable."""
    if method == "full":
        return shape.parameters
    targets = lora_targets(shape, target_modules)
    count = sum(r * (t.in_features + t.out_features) for t in targets)
    if bias == "all":
        count += shape.bias_parameters
    elif bias == "lora_only":
        count += sum(t.out_features for t in targets if t.bias)
    return count


def quantized_bytes_per_weight(double_quant: bool, blocksize: int = 64) -> float:
    """bitsandbytes 4-bit: half a byte per weight plus one absmax per block of 64 (fp32, or 8-bit
    with a second fp32 level per 256 blocks when double-quantised)."""
    if double_quant:
        return 0.5 + 1 / blocksize + 4 / (blocksize * 256)
    return 0.5 + 4 / blocksize


def read_safetensors_headers(folder: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) for every tensor of every *.safetensors file (headers only)."""
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        for name, meta in header.items():
            if name != "__metadata__":
                tensors[name] = (meta["dtype"], tuple(meta["shape"]))
    return tensors


_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
                "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def model_shape(folder: Path, *, trust_remote_code: bool = False) -> ModelShape:
    """The model's structure from its config, built on the meta device (no memory, no weights),
    with the checkpoint's own parameter count and size from the safetensors headers."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
    model = _meta_model(config, trust_remote_code)
    headers = read_safetensors_headers(folder)
    shape = shape_of(model, config)
    if headers:
        numel = {name: math.prod(s) for name, (_, s) in headers.items()}
        shape = replace(
            shape,
            checkpoint_parameters=sum(numel.values()),
            checkpoint_bytes=sum(numel[n] * _DTYPE_BYTES.get(d, 4) for n, (d, _) in headers.items()),
            checkpoint_dtypes=tuple(sorted({d for d, _ in headers.values()})),
        )
    del model
    return shape


def _meta_model(config: Any, trust_remote_code: bool = False) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def shape_of(model: Any, config: Any) -> ModelShape:
    """ModelShape of an instantiated (meta or real) causal LM."""
    import torch
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    head_name = None
    linears = []
    for name, module in model.named_modules():
        if module is head:
            head_name = name
        if isinstance(module, torch.nn.Linear):
            linears.append(Linear(name, module.in_features, module.out_features, module.bias is not None))
        elif isinstance(module, Conv1D):  # GPT-2 style: weight is (in, out)
            in_features, out_features = module.weight.shape
            linears.append(Linear(name, int(in_features), int(out_features), module.bias is not None))
    params = {id(p): p for p in model.parameters()}  # tied weights once
    biases = sum(p.numel() for n, p in model.named_parameters() if n.endswith(".bias"))
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelShape(
        architecture=(config.architectures or [type(model).__name__])[0],
        num_layers=int(text.num_hidden_layers),
        hidden_size=int(text.hidden_size),
        vocab_size=int(text.vocab_size),
        parameters=sum(p.numel() for p in params.values()),
        linears=tuple(linears),
        output_head=head_name,
        bias_parameters=int(biases),
    )


# ------------------------------------------------------------------------------------ data


@dataclass(frozen=True)
class DataStats:
    """The tokenized data as the run will see it."""

    format: str
    records: int  # training records read
    train_examples: int
    eval_examples: int
    train_lengths: tuple[int, ...]
    eval_lengths: tuple[int, ...]
    trainable_tokens: int
    truncated: int
    bad_records: int
    max_length: int

    @property
    def train_tokens(self) -> int:
        return sum(self.train_lengths)

    @property
    def eval_tokens(self) -> int:
        return sum(self.eval_lengths)


@dataclass(frozen=True)
class BatchShape:
    """Tokens one micro-batch puts through the model: its largest (memory) and average (time)."""

    peak_tokens: int  # rows x columns of the largest micro-batch, padding included
    peak_rows: int
    peak_columns: int
    mean_tokens: float
    real_fraction: float  # non-padding share of the tokens computed


def batch_shape(lengths: Sequence[int], batch_size: int, *, packing: bool, seed: int = 0, trials: int = 8) -> BatchShape:
    """The largest micro-batch (memory) and the mean one (time), over shuffled epochs.

    Padded batches are rows x (longest row): the batch that holds the longest example is always
    that example's length wide, so the peak is batch x longest. Packed batches are one row of the
    summed lengths; their peak is the largest sum seen over `trials` shuffled epochs (the top-k
    lengths rarely land in one batch)."""
    if not lengths:
        return BatchShape(0, 0, 0, 0.0, 1.0)
    b = max(1, min(batch_size, len(lengths)))
    rng = random.Random(seed)
    computed = []
    for _ in range(trials):
        order = list(lengths)
        rng.shuffle(order)
        for start in range(0, len(order), b):
            chunk = order[start:start + b]
            computed.append(sum(chunk) if packing else len(chunk) * max(chunk))
    if packing:
        peak = max(computed)
        return BatchShape(peak, 1, peak, statistics.fmean(computed), 1.0)
    longest = max(lengths)
    real = sum(lengths) * trials
    return BatchShape(b * longest, b, longest, statistics.fmean(computed), real / max(1, sum(computed)))


def optimizer_steps(train_examples: int, *, batch_size: int, nproc: int, grad_accum: int, epochs: float,
                    max_steps: int | None) -> tuple[int, int]:
    """(optimizer steps of the run, steps per epoch), as the Trainer counts them: each process
    takes ceil(examples / (batch x processes)) micro-batches per epoch."""
    per_rank_batches = math.ceil(train_examples / (batch_size * nproc)) if train_examples else 0
    per_epoch = max(per_rank_batches // grad_accum + int(per_rank_batches % grad_accum > 0), 1)
    steps = max_steps if max_steps else math.ceil(epochs * per_epoch)
    return steps, per_epoch


# ------------------------------------------------------------------------------------ calibration


@dataclass(frozen=True)
class Calibration:
    """Measured on this machine with 1- and 2-layer copies of the model (random weights)."""

    device: str
    threads: int
    # activation bytes saved for backward: per token, and per token x sequence length (attention)
    saved_per_token: dict[str, float] = field(default_factory=dict)  # method -> bytes (whole model)
    saved_per_token_sq: dict[str, float] = field(default_factory=dict)  # method -> bytes / column
    seconds_per_token: float | None = None  # forward + backward, whole model, the job's method
    seconds_per_pass: float = 0.0  # forward + backward costs that do not grow with tokens (e.g. gradient buffers)
    optimizer_seconds: float | None = None  # one optimizer step for the job's trainable parameters
    calibration_tokens: int = 0
    seconds_spent: float = 0.0
    runtime_bytes: int | None = None  # this process's resident memory with the training stack loaded

    def saved_bytes(self, method: str, rows: int, columns: int) -> float:
        key = "lora" if method == "qlora" else method  # a 4-bit base saves the same activations
        return rows * columns * (self.saved_per_token.get(key, 0.0) + columns * self.saved_per_token_sq.get(key, 0.0))


# ------------------------------------------------------------------------------------ estimates


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
) -> MemoryEstimate:
    """Peak memory of one training process for `method`; see the module docstring."""
    trainable = trainable_parameters(shape, method, r=r, target_modules=target_modules, bias=bias)
    mapped = 0
    if method == "qlora":
        packed = sum(l.in_features * l.out_features for l in shape.quantized_linears)
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
    logits = 2 * rows * columns * shape.vocab_size * 4  # logits + their gradient, fp32 for the loss
    retention = ALLOCATOR_RETENTION.get(device, {}).get(method, 1.0)
    activations = int((saved + logits) * retention)
    if device == "cuda":
        runtime = CUDA_CONTEXT_BYTES
    else:
        runtime = (calibration.runtime_bytes or 0) + data_tokens * DATA_BYTES_PER_TOKEN
    base = runtime + weights + mapped + optimizer_bytes
    if method == "full":
        head = shape.vocab_size * shape.hidden_size * weight_bytes  # the head's gradient comes first
        backward = base + activations + int(head * retention)
        step = base + gradients + trainable * weight_bytes  # foreach AdamW temporaries
        peak, phase = (backward, "backward") if backward >= step else (step, "optimizer step")
    else:
        peak, phase = base + gradients + activations, "backward"
    return MemoryEstimate(method=method, trainable=trainable, weights=weights + mapped, gradients=gradients,
                          optimizer=optimizer_bytes, activations=activations, runtime=runtime, peak=int(peak),
                          phase=phase, mapped_file=mapped)


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


def estimate_time(calibration: Calibration, batch: BatchShape, *, steps: int, grad_accum: int, eval_tokens: int,
                  evaluations: int) -> TimeEstimate | None:
    if calibration.seconds_per_token is None:
        return None
    per_pass = calibration.seconds_per_pass + batch.mean_tokens * calibration.seconds_per_token
    per_step = grad_accum * per_pass + (calibration.optimizer_seconds or 0.0)
    eval_each = eval_tokens * calibration.seconds_per_token / 3  # forward only: about a third
    return TimeEstimate(steps=steps, seconds_per_step=per_step, train_seconds=per_step * steps,
                        evaluations=evaluations, eval_seconds=eval_each * evaluations)


# ------------------------------------------------------------------------------------ gathering


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), or None."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def available_memory(device: str) -> tuple[int | None, str]:
    """(bytes, where that number comes from) for the detected device."""
    if device == "cuda":
        import torch

        total = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        return int(total), f"GPU {torch.cuda.get_device_name()} memory"
    limit = _cgroup_limit()
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in handle}
        available = info.get("MemAvailable")
    except OSError:
        available = None
    if limit is not None and (available is None or limit < available):
        return limit, "the cgroup memory limit"
    if available is not None:
        return available, "available RAM now (MemAvailable)"
    return None, "unknown"


def _cgroup_limit() -> int | None:
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 2**60:
            return int(text)
    return None


def parse_size(text: str) -> int:
    """'8GiB', '8G', '8 GB', '512M', '1.5T', '1024' (bytes) -> bytes (G and GB count as GiB)."""
    cleaned = text.strip().upper().replace(" ", "").removesuffix("B").removesuffix("I")
    units = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    try:
        if cleaned and cleaned[-1] in units:
            return int(float(cleaned[:-1]) * units[cleaned[-1]])
        return int(float(cleaned))
    except ValueError:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 8GiB, 512MiB or 16G") from None


def data_stats(job: Any, tokenizer: Any, model_files: dict[str, str] | None = None, *, cache: bool = True) -> tuple[DataStats, bool]:
    """Tokenize the job's data as the run does (runner.data), or read the cached result.
    Returns (stats, came from the cache)."""
    from runner.paths import runner_home
    from runner.train.causal_lm import prepare_causal_data

    key = _data_key(job, model_files or {})
    cache_file = runner_home() / "plan-cache" / f"{key}.json"
    if cache and cache_file.is_file():
        try:
            raw = json.loads(cache_file.read_text(encoding="utf-8"))
            if raw.get("format_version") == CACHE_FORMAT:
                raw.pop("format_version")
                raw["train_lengths"] = tuple(raw["train_lengths"])
                raw["eval_lengths"] = tuple(raw["eval_lengths"])
                return DataStats(**raw), True
        except (OSError, ValueError, TypeError):
            pass
    data = prepare_causal_data(job, tokenizer, progress=False, cache=cache)
    report = data.train_report
    stats = DataStats(
        format=report.format,
        records=report.records_read,
        train_examples=len(data.train),
        eval_examples=len(data.eval),
        train_lengths=tuple(len(e["input_ids"]) for e in data.train),
        eval_lengths=tuple(len(e["input_ids"]) for e in data.eval),
        trainable_tokens=report.trainable_tokens,
        truncated=report.truncated,
        bad_records=len(report.bad_records),
        max_length=job.spec.data.max_length,
    )
    if cache:
        from runner.fsutil import atomic_write_json

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache_file, {"format_version": CACHE_FORMAT, **asdict(stats)})
    return stats, False


def _data_key(job: Any, model_files: dict[str, str]) -> str:
    """Changes when the data files, the tokenizer or any setting that shapes examples changes."""
    data = job.spec.data
    digest = hashlib.sha256()
    for name in [*data.train, *data.eval]:
        path = job.resolve_path(name)
        digest.update(str(path).encode())
        digest_file(digest, path)
    tokenizer_files = {k: v for k, v in sorted(model_files.items()) if "token" in k or "template" in k or k == "config.json"}
    settings = data.model_dump(mode="json", exclude={"train", "eval", "shuffle", "packing", "image_root", "image_size"})
    digest.update(json.dumps({"tokenizer": tokenizer_files, "settings": settings, "seed": job.spec.train.seed},
                             sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _shrunk_config(config: Any, layers: int) -> Any:
    """A copy of `config` with `layers` decoder layers (per-layer lists cut to match)."""
    small = copy.deepcopy(config)
    text = small.get_text_config() if hasattr(small, "get_text_config") else small
    original = int(text.num_hidden_layers)
    for key, value in list(vars(text).items()):
        if isinstance(value, list) and len(value) == original and key != "architectures":
            setattr(text, key, value[:layers])
    text.num_hidden_layers = layers
    small.use_cache = False
    return small


def calibrate(
    model_path: Path,
    spec: Any,
    choice: Any,
    *,
    rows: int,
    columns: int,
    time_it: bool = True,
    threads: int | None = None,
) -> Calibration:
    """Measure activation bytes (full and LoRA) and, for the job's method, seconds per token and per
    optimizer step, on 1- and 2-layer copies of the model with random weights."""
    import torch
    from transformers import AutoConfig

    started = time.perf_counter()
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        config = AutoConfig.from_pretrained(str(model_path), trust_remote_code=spec.model.trust_remote_code)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        full_layers = int(text.num_hidden_layers)
        per_token: dict[str, float] = {}
        per_token_sq: dict[str, float] = {}
        short = max(16, min(columns, 128) // 4)  # bytes per token are measured on short rows and
        long = 2 * short  # extrapolated (linear, plus a per-column term for attention scores)
        for method in ("full", "lora"):
            measured = {}
            for layers in (1, 2):
                model = _calibration_model(config, layers, method, spec, choice)
                for length in (short, long):
                    measured[(layers, length)] = _saved_bytes(model, choice.device, 2, length) / (2 * length)
                del model
            per_layer = {t: measured[(2, t)] - measured[(1, t)] for t in (short, long)}
            whole = {t: measured[(1, t)] + (full_layers - 1) * per_layer[t] for t in (short, long)}
            slope = max(0.0, (whole[long] - whole[short]) / (long - short))
            per_token[method] = whole[short] - slope * short
            per_token_sq[method] = slope
        seconds = optimizer_seconds = None
        fixed, tokens = 0.0, 0
        if time_it:
            seconds, fixed, optimizer_seconds, tokens = _time_per_token(
                config, spec, choice, full_layers, columns=(64, max(128, min(columns, 256))))
    finally:
        torch.set_num_threads(previous_threads)
    return Calibration(device=choice.device, threads=threads or previous_threads, saved_per_token=per_token,
                       saved_per_token_sq=per_token_sq, seconds_per_token=seconds, seconds_per_pass=fixed,
                       optimizer_seconds=optimizer_seconds, calibration_tokens=tokens,
                       seconds_spent=time.perf_counter() - started)


def _calibration_model(config: Any, layers: int, method: str, spec: Any, choice: Any, folder: Path | None = None) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    from runner.train.model import apply_adapter, load_causal_lm

    torch.manual_seed(0)
    small = _shrunk_config(config, layers)
    if method == "qlora":  # the 4-bit path is the run's own: save, then load quantised
        assert folder is not None
        AutoModelForCausalLM.from_config(small, dtype=torch.float32).save_pretrained(str(folder))
        model = load_causal_lm(folder, spec.model, spec.adapter, choice)
    else:
        model = AutoModelForCausalLM.from_config(small, attn_implementation=choice.attn_implementation,
                                                 dtype=choice.torch_dtype)
        model.config.use_cache = False
    adapter = spec.adapter.model_copy(update={"method": method})
    model = apply_adapter(model, adapter, gradient_checkpointing=False)
    if method != "qlora":
        model = model.to(choice.device)
    model.train()
    return model


def _batch(model: Any, device: str, rows: int, columns: int) -> dict[str, Any]:
    import torch

    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(5, max(6, vocab - 1), (rows, columns), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(rows, columns, dtype=torch.long)
    if rows > 1:  # padded rows: the masked attention path the run takes
        mask[1:, columns // 2:] = 0
    labels = ids.clone()
    labels[mask == 0] = -100
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "labels": labels.to(device)}


def _saved_bytes(model: Any, device: str, rows: int, columns: int) -> float:
    """Bytes of the tensors autograd keeps for backward in one forward pass (parameters excluded)."""
    import torch

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    batch = _batch(model, device, rows, columns)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(**batch)
    del out
    return float(sum(seen.values()))


def _time_per_token(config: Any, spec: Any, choice: Any, full_layers: int, *,
                    columns: tuple[int, int], deep: int = 4) -> tuple[float, float, float, int]:
    """(seconds per token, seconds per pass, optimizer seconds per trainable parameter, tokens timed).

    Forward + backward, best of three after a warm-up: a 1-layer model at two lengths gives the
    fixed and per-token cost of everything but the decoder layers (embeddings, head, loss, gradient
    buffers); a `deep`-layer model at the longer length gives the per-token cost of a layer (a
    difference over several layers, so timing noise is not multiplied by the depth)."""
    import torch

    method = spec.adapter.method
    short, long = columns
    threads = max(1, torch.get_num_threads())

    def elapsed(wall: float, cpu: float) -> float:
        # on a shared machine other processes stretch the wall time; the CPU time this process
        # spent, spread over its threads, is what the job gets on a machine of its own
        return wall if choice.device == "cuda" else min(wall, cpu / threads)

    timed: dict[tuple[int, int], float] = {}
    per_param = 0.0
    tokens = 0
    with tempfile.TemporaryDirectory(prefix="runner-plan-") as tmp:
        for layers, lengths in ((1, (short, long)), (deep, (long,))):
            model = _calibration_model(config, layers, method, spec, choice, Path(tmp) / f"l{layers}")
            params = [p for p in model.parameters() if p.requires_grad]
            optim = torch.optim.AdamW(params, lr=1e-6)
            best_opt = float("inf")
            for length in lengths:
                batch = _batch(model, choice.device, 1, length)
                for attempt in range(5):  # the first is a warm-up
                    _sync(choice.device)
                    t0, c0 = time.perf_counter(), time.process_time()
                    model(**batch).loss.backward()
                    _sync(choice.device)
                    t1, c1 = time.perf_counter(), time.process_time()
                    optim.step()
                    optim.zero_grad(set_to_none=True)
                    _sync(choice.device)
                    t2, c2 = time.perf_counter(), time.process_time()
                    if attempt:
                        spent = elapsed(t1 - t0, c1 - c0)
                        timed[(layers, length)] = min(timed.get((layers, length), float("inf")), spent)
                        best_opt = min(best_opt, elapsed(t2 - t1, c2 - c1))
                    tokens += length
            if layers == deep:
                per_param = best_opt / max(1, sum(p.numel() for p in params))
            del model, optim
    outer_slope = max(0.0, (timed[(1, long)] - timed[(1, short)]) / (long - short))
    outer_fixed = max(0.0, timed[(1, short)] - outer_slope * short)
    layer_per_token = max(0.0, (timed[(deep, long)] - timed[(1, long)]) / ((deep - 1) * long))
    # the 1-layer slope holds one layer; the rest of the depth adds its per-token cost
    per_token = outer_slope + (full_layers - 1) * layer_per_token
    return per_token, outer_fixed, per_param, tokens


def _sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


# ------------------------------------------------------------------------------------ the plan


@dataclass
class Plan:
    job: str
    model: dict[str, Any]
    data: dict[str, Any]
    steps: dict[str, Any]
    memory: dict[str, Any]
    time: dict[str, Any] | None
    budget: dict[str, Any]
    fits: bool | None
    suggestions: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_job(
    job: Any,
    *,
    runs_root: Path | None = None,
    registry: Path | None = None,
    allow_remote_code: bool = False,
    memory_budget: int | None = None,
    calibrate_device: bool = True,
    use_cache: bool = True,
) -> Plan:
    """Everything `runner plan` reports for a loaded job (raises ModelSetupError / SourceError /
    DataError with a reason when the job cannot run here)."""
    import torch

    from runner.lineage import resolve_job_model
    from runner.train.causal_lm import load_tokenizer
    from runner.train.model import ModelSetupError, choose_device

    spec = job.spec
    if spec.model.kind != "causal-lm":
        raise ModelSetupError(f"runner plan estimates causal-LM jobs; this job's model.kind is '{spec.model.kind}'")
    choice = choose_device(spec.model, spec.resources, spec.adapter)  # the job's own device; refuses what cannot run
    resolved, model_info = resolve_job_model(job, runs_root=runs_root, registry=registry,
                                             allow_remote_code=allow_remote_code)
    model_path = Path(resolved.path)
    tokenizer = load_tokenizer(model_path, spec.model.trust_remote_code)
    import runner.train.causal_lm  # noqa: F401 - the run's imports, so the runtime measured below is the run's

    runtime_bytes = rss_bytes()
    shape = model_shape(model_path, trust_remote_code=spec.model.trust_remote_code)
    stats, cached = data_stats(job, tokenizer, model_info.get("files") or {}, cache=use_cache)

    nproc, batch_size, accum = spec.resources.nproc, spec.train.batch_size, spec.train.grad_accum
    steps, per_epoch = optimizer_steps(stats.train_examples, batch_size=batch_size, nproc=spec.resources.world_size,
                                       grad_accum=accum,
                                       epochs=spec.train.epochs, max_steps=spec.train.max_steps)
    batch = batch_shape(stats.train_lengths, batch_size, packing=spec.data.packing, seed=spec.train.seed)
    threads = spec.resources.threads or (max(1, (os.cpu_count() or 1) // nproc) if nproc > 1 else torch.get_num_threads())
    notes: list[str] = []
    if calibrate_device:
        calibration = calibrate(model_path, spec, choice, rows=batch.peak_rows or 1,
                                columns=batch.peak_columns or spec.data.max_length, threads=threads)
    else:
        calibration = _analytic_calibration(shape, choice.device)
        notes.append("no calibration (--no-calibrate): activation memory from a rule of thumb, no time estimate")
    calibration = replace(calibration, runtime_bytes=runtime_bytes)
    if calibrate_device and choice.device == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores:
            notes.append(f"the CPU was busy during the calibration (load {load:.1f} on {cores} cores): the time "
                         "estimate may be several times too long")
    if calibration.optimizer_seconds is not None:  # measured per trainable parameter; scale to the job's
        trainable_job = trainable_parameters(shape, spec.adapter.method, r=spec.adapter.r,
                                             target_modules=spec.adapter.target_modules, bias=spec.adapter.bias)
        calibration = replace(calibration, optimizer_seconds=calibration.optimizer_seconds * trainable_job)

    weight_bytes = {"float32": 4, "bfloat16": 2, "float16": 2}[choice.dtype]
    estimates = {}
    qlora_problem = None
    from runner.train.model import quantization_problem

    for method in METHODS:
        if method == "qlora":
            qlora_problem = quantization_problem(choice.device)
        estimates[method] = estimate_memory(
            shape, method, device=choice.device, batch=batch, calibration=calibration, r=spec.adapter.r,
            target_modules=spec.adapter.target_modules, bias=spec.adapter.bias, double_quant=spec.adapter.double_quant,
            optimizer=spec.train.optimizer, weight_bytes=weight_bytes,
            gradient_checkpointing=spec.train.gradient_checkpointing,
            data_tokens=stats.train_tokens + stats.eval_tokens,
        )
    if qlora_problem:
        notes.append(f"qlora cannot run here: {qlora_problem}")
    if choice.device == "cpu":
        notes.append("CPU: peaks are resident memory (RSS) of each process; LoRA's and QLoRA's include the "
                     "mapped checkpoint file, which the kernel can reclaim as page cache")

    detected, source = available_memory(choice.device)
    budget = memory_budget if memory_budget is not None else detected
    budget_source = "--memory" if memory_budget is not None else source
    per_node = nproc if choice.device == "cpu" else 1  # CPU processes share the machine's memory
    method = spec.adapter.method
    needed = estimates[method].peak * per_node
    fits = None if budget is None else needed <= budget
    suggestions = [] if fits in (None, True) else suggest(
        shape, spec, stats, calibration, choice.device, budget // per_node, weight_bytes, qlora_problem is None)

    evaluations = 0
    if stats.eval_examples:
        evaluations = int(spec.eval.at_start) + int(spec.eval.at_end)
        if spec.eval.every:
            evaluations += steps // spec.eval.every
    eval_tokens = sum(stats.eval_lengths)  # the causal-LM recipe evaluates every eval example
    time_estimate = estimate_time(calibration, batch, steps=steps, grad_accum=accum,
                                  eval_tokens=math.ceil(eval_tokens / max(1, nproc)), evaluations=evaluations)
    return Plan(
        job=job.name,
        model={
            "source": spec.model.source, "path": str(model_path), "architecture": shape.architecture,
            "layers": shape.num_layers, "hidden_size": shape.hidden_size, "vocab_size": shape.vocab_size,
            "parameters": shape.parameters, "checkpoint_parameters": shape.checkpoint_parameters,
            "checkpoint_bytes": shape.checkpoint_bytes, "checkpoint_dtypes": list(shape.checkpoint_dtypes),
            "linear_layers": len(shape.linears), "lora_layers": len(lora_targets(shape, spec.adapter.target_modules)),
            "device": choice.to_dict(),
        },
        data={
            "format": stats.format, "records": stats.records, "train_examples": stats.train_examples,
            "eval_examples": stats.eval_examples, "train_tokens": stats.train_tokens,
            "eval_tokens": stats.eval_tokens, "trainable_tokens": stats.trainable_tokens,
            "longest": max(stats.train_lengths, default=0), "truncated": stats.truncated,
            "bad_records": stats.bad_records, "cached": cached,
            "peak_batch_tokens": batch.peak_tokens, "peak_batch": [batch.peak_rows, batch.peak_columns],
            "mean_batch_tokens": round(batch.mean_tokens, 1), "real_token_fraction": round(batch.real_fraction, 3),
        },
        steps={"total": steps, "per_epoch": per_epoch, "batch_size": batch_size, "processes": nproc,
               "grad_accum": accum, "global_batch": batch_size * spec.resources.world_size * accum},
        memory={
            "device": choice.device, "per_process": True, "processes_sharing_memory": per_node,
            "calibration": {"saved_bytes_per_token": calibration.saved_per_token,
                            "saved_bytes_per_token_per_column": calibration.saved_per_token_sq,
                            "runtime_bytes": calibration.runtime_bytes,
                            "allocator_retention": ALLOCATOR_RETENTION.get(choice.device, {})},
            "methods": {m: e.to_dict() for m, e in estimates.items()},
            "job_method": method,
        },
        time=None if time_estimate is None else {
            "seconds_per_step": round(time_estimate.seconds_per_step, 3), "train_seconds": round(time_estimate.train_seconds, 1),
            "evaluations": time_estimate.evaluations, "eval_seconds": round(time_estimate.eval_seconds, 1),
            "total_seconds": round(time_estimate.total_seconds, 1),
            "calibration": {"device": calibration.device, "threads": calibration.threads,
                            "seconds_per_1k_tokens": round(1000 * (calibration.seconds_per_token or 0.0), 4),
                            "seconds_per_pass": round(calibration.seconds_per_pass, 4),
                            "optimizer_seconds": round(calibration.optimizer_seconds or 0.0, 4),
                            "seconds_spent": round(calibration.seconds_spent, 1)},
        },
        budget={"bytes": budget, "source": budget_source, "needed_bytes": needed},
        fits=fits,
        suggestions=suggestions,
        notes=notes,
    )


def _analytic_calibration(shape: ModelShape, device: str) -> Calibration:
    """Without a measurement: a Llama-style layer saves about 22 x hidden floats per token
    (norms, q/k/v, attention output, MLP), LoRA with dropout a third more; the head saves one
    row of logits (log-softmax)."""
    per_layer = 22 * shape.hidden_size * 4
    head = shape.vocab_size * 4
    full = head + shape.num_layers * per_layer
    lora = head + shape.num_layers * per_layer * 4 / 3
    return Calibration(device=device, threads=0, saved_per_token={"full": full, "lora": lora})


def suggest(shape: ModelShape, spec: Any, stats: DataStats, calibration: Calibration, device: str, budget: int,
            weight_bytes: int, qlora_ok: bool) -> list[str]:
    """Changes to the job that bring the peak under `budget`, each with the peak it gives."""
    adapter, train, data = spec.adapter, spec.train, spec.data

    def peak(method: str = adapter.method, batch_size: int = train.batch_size, max_length: int = data.max_length,
             packing: bool = data.packing, checkpointing: bool = train.gradient_checkpointing) -> int:
        lengths = [min(n, max_length) for n in stats.train_lengths]
        shape_ = batch_shape(lengths, batch_size, packing=packing, seed=train.seed)
        return estimate_memory(shape, method, device=device, batch=shape_, calibration=calibration, r=adapter.r,
                               target_modules=adapter.target_modules, bias=adapter.bias,
                               double_quant=adapter.double_quant, optimizer=train.optimizer,
                               weight_bytes=weight_bytes, gradient_checkpointing=checkpointing,
                               data_tokens=stats.train_tokens + stats.eval_tokens).peak

    ideas: list[tuple[str, int]] = []
    if not train.gradient_checkpointing:
        ideas.append(("train.gradient_checkpointing = true (recompute activations in the backward pass)",
                      peak(checkpointing=True)))
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
    for method in order[order.index(adapter.method) + 1:] if adapter.method in order else []:
        ideas.append((f"adapter.method = \"{method}\"", peak(method=method)))
    fitting = [(text, value) for text, value in ideas if value <= budget]
    chosen = fitting or sorted(ideas, key=lambda item: item[1])[:2]
    return [f"{text}: peak ~{_gib(value)}" for text, value in chosen]


# ------------------------------------------------------------------------------------ the command


def _gib(n: int | float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"


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
    lines.append(f"model     {m['source']} ({m['architecture']}: {m['layers']} layers, hidden {m['hidden_size']}, "
                 f"vocab {m['vocab_size']:,})")
    ckpt = ""
    if m["checkpoint_parameters"] is not None:
        ckpt = (f"; safetensors headers: {m['checkpoint_parameters']:,} in {', '.join(m['checkpoint_dtypes'])}, "
                f"{_gib(m['checkpoint_bytes'])}")
    lines.append(f"          {m['parameters']:,} parameters{ckpt}")
    lines.append(f"device    {dev['device']}, weights {dev['dtype']}, precision {dev['precision']}, "
                 f"attention {dev['attn_implementation']}" + (f", 4-bit compute {dev['compute_dtype']}" if dev.get("compute_dtype") else ""))
    lines.append(f"data      {d['records']:,} records -> {d['train_examples']:,} train / {d['eval_examples']:,} eval examples "
                 f"({d['format']}); {d['train_tokens']:,} train tokens, {d['trainable_tokens']:,} trained on; longest "
                 f"{d['longest']} ({d['truncated']} truncated){' [cached]' if d['cached'] else ''}")
    lines.append(f"batches   largest {d['peak_batch'][0]} x {d['peak_batch'][1]} = {d['peak_batch_tokens']:,} tokens; "
                 f"mean {d['mean_batch_tokens']:,.0f}; {100 * d['real_token_fraction']:.0f}% real (not padding)")
    lines.append(f"steps     {s['total']:,} optimizer steps ({s['per_epoch']:,} per epoch; global batch {s['global_batch']} = "
                 f"{s['batch_size']} x {s['processes']} process(es) x {s['grad_accum']} accumulation)")
    methods = mem["methods"]
    lines.append(f"memory    peak per process on {mem['device']} (the job uses {mem['job_method']}):")
    header = f"          {'':<22}" + "".join(f"{name:>12}" for name in methods)
    lines.append(header)
    rows = [("trainable parameters", "trainable", False), ("weights", "weights", True),
            ("gradients", "gradients", True), ("optimizer state", "optimizer", True),
            ("activations", "activations", True), ("runtime + data", "runtime", True), ("peak", "peak", True)]
    for label, key, is_bytes in rows:
        cells = "".join(f"{(_gib(e[key]) if is_bytes else f'{e[key]:,}'):>12}" for e in methods.values())
        lines.append(f"          {label:<22}{cells}")
    b = plan.budget
    if b["bytes"] is not None:
        verdict = "fits" if plan.fits else "does NOT fit"
        share = f" ({mem['processes_sharing_memory']} processes)" if mem["processes_sharing_memory"] > 1 else ""
        lines.append(f"budget    {_gib(b['bytes'])} ({b['source']}): {mem['job_method']} needs {_gib(b['needed_bytes'])}"
                     f"{share} -> {verdict}")
    if plan.time:
        t = plan.time
        c = t["calibration"]
        lines.append(f"time      ~{_duration(t['total_seconds'])}: {s['total']:,} steps x {t['seconds_per_step']:.2f} s"
                     + (f" + {t['evaluations']} evaluations ({_duration(t['eval_seconds'])})" if t["evaluations"] else ""))
        lines.append(f"          calibrated on {c['device']} with {c['threads']} thread(s): {c['seconds_per_1k_tokens']:.3f} s "
                     f"per 1k tokens (forward + backward) in {c['seconds_spent']:.0f} s")
    for suggestion in plan.suggestions:
        lines.append(f"change    {suggestion}")
    for note in plan.notes:
        lines.append(f"note      {note}")
    return "\n".join(lines)


EXIT_DOES_NOT_FIT = 4


def plan_command(job_path: str, *, memory: str | None = None, as_json: bool = False, calibrate_device: bool = True,
                 runs_dir: str | None = None, registry: str | None = None, allow_remote_code: bool = False,
                 use_cache: bool = True) -> int:
    """`runner plan`: 0 fits (or no budget known), 1 invalid job / cannot run here, 4 does not fit."""
    from runner.data.report import DataError
    from runner.outputs.runs import runs_root
    from runner.registry.sources import SourceError
    from runner.spec import JobSpecError, load_job
    from runner.train.model import ModelSetupError

    try:
        job = load_job(job_path)
    except JobSpecError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        budget = parse_size(memory) if memory else None
    except ValueError as exc:
        print(f"--memory: {exc}", file=sys.stderr)
        return 2
    try:
        plan = plan_job(job, runs_root=runs_root(runs_dir), registry=Path(registry).absolute() if registry else None,
                        allow_remote_code=allow_remote_code, memory_budget=budget, calibrate_device=calibrate_device,
                        use_cache=use_cache)
    except (ModelSetupError, SourceError, DataError) as exc:
        print(f"{job_path}: cannot plan this job here: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(plan.to_dict(), indent=2) if as_json else render(plan))
    return EXIT_DOES_NOT_FIT if plan.fits is False else 0

