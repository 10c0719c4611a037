"""The model's shape, from its config and safetensors headers (no weights): parameters, linear
layers, what full fine-tuning, LoRA and QLoRA train, and how QLoRA packs the frozen weights.
The headers come from the registry's reader (runner.registry.folder_facts, safetensors.safe_open)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.registry.folder_facts import read_safetensors_headers

__all__ = [
    "Linear",
    "ModelShape",
    "lora_targets",
    "model_shape",
    "quantized_bytes_per_weight",
    "shape_of",
    "trainable_parameters",
]


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
        return self.parameters - sum(linear.in_features * linear.out_features for linear in self.quantized_linears)

    @property
    def quantized_linears(self) -> tuple[Linear, ...]:
        return tuple(linear for linear in self.linears if linear.name != self.output_head)


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


def trainable_parameters(
    shape: ModelShape, method: str, *, r: int = 16, target_modules: Sequence[str] = ("all-linear",), bias: str = "none"
) -> int:
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


_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}


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
