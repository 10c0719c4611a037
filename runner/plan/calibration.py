"""A short measurement on this machine's device: copies of the model with 1, 2 and 4 layers and
random weights, run on short rows, give the activation bytes autograd saves per token (and per
token x column, where attention materialises scores) and the seconds per token of a forward +
backward pass and of an optimizer step, scaled to the full depth. Without it, a rule of thumb."""

from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.plan.shape import ModelShape

if TYPE_CHECKING:
    from runner.spec import JobSpec
    from runner.train.model import DeviceChoice

__all__ = ["Calibration", "analytic_calibration", "calibrate"]


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


def analytic_calibration(shape: ModelShape, device: str) -> Calibration:
    """Without a measurement: a Llama-style layer saves about 22 x hidden floats per token
    (norms, q/k/v, attention output, MLP), LoRA with dropout a third more; the head saves one
    row of logits (log-softmax)."""
    per_layer = 22 * shape.hidden_size * 4
    head = shape.vocab_size * 4
    full = head + shape.num_layers * per_layer
    lora = head + shape.num_layers * per_layer * 4 / 3
    return Calibration(device=device, threads=0, saved_per_token={"full": full, "lora": lora})


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
    spec: JobSpec,
    choice: DeviceChoice,
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
        per_token, per_token_sq = _saved_per_token(config, spec, choice, full_layers, columns)
        seconds = optimizer_seconds = None
        fixed, tokens = 0.0, 0
        if time_it:
            seconds, fixed, optimizer_seconds, tokens = _time_per_token(
                config, spec, choice, full_layers, columns=(64, max(128, min(columns, 256)))
            )
    finally:
        torch.set_num_threads(previous_threads)
    return Calibration(
        device=choice.device,
        threads=threads or previous_threads,
        saved_per_token=per_token,
        saved_per_token_sq=per_token_sq,
        seconds_per_token=seconds,
        seconds_per_pass=fixed,
        optimizer_seconds=optimizer_seconds,
        calibration_tokens=tokens,
        seconds_spent=time.perf_counter() - started,
    )


def _saved_per_token(
    config: Any, spec: JobSpec, choice: DeviceChoice, full_layers: int, columns: int
) -> tuple[dict[str, float], dict[str, float]]:
    """method -> saved bytes per token, and per token x column, for the whole depth: measured on
    1- and 2-layer models at two short lengths, extrapolated (linear, plus a per-column term for
    attention scores)."""
    per_token: dict[str, float] = {}
    per_token_sq: dict[str, float] = {}
    short = max(16, min(columns, 128) // 4)
    long = 2 * short
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
    return per_token, per_token_sq


def _calibration_model(
    config: Any, layers: int, method: str, spec: JobSpec, choice: DeviceChoice, folder: Path | None = None
) -> Any:
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
        model = AutoModelForCausalLM.from_config(
            small, attn_implementation=choice.attn_implementation, dtype=choice.torch_dtype
        )
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
        mask[1:, columns // 2 :] = 0
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


def _time_per_token(
    config: Any, spec: JobSpec, choice: DeviceChoice, full_layers: int, *, columns: tuple[int, int], deep: int = 4
) -> tuple[float, float, float, int]:
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
