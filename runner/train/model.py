"""Load a base model for training and put the adapter the spec asks for on it.

Device, dtype and attention kernel are chosen here once, printed, and recorded in the manifest,
so a run says exactly what it trained with.
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from runner.spec.model import AdapterSection, ModelSection, ResourcesSection


class ModelSetupError(RuntimeError):
    """The model cannot be set up as the spec asks (a config problem, not a crash)."""


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype: str
    precision: str
    attn_implementation: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def choose_device(model: ModelSection, resources: ResourcesSection) -> DeviceChoice:
    cuda = torch.cuda.is_available()
    if resources.device == "cuda" and not cuda:
        raise ModelSetupError("resources.device is \"cuda\" but no CUDA device is visible; use \"auto\" or \"cpu\"")
    device = "cuda" if (resources.device == "cuda" or (resources.device == "auto" and cuda)) else "cpu"
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    precision = resources.precision
    if precision == "auto":
        # measured: bf16 matmul is about half as fast as fp32 on CPUs without AMX, so CPU stays fp32
        precision = "bf16" if bf16_ok else "fp32"
    dtype = model.dtype
    if dtype == "auto":
        dtype = "float32"  # weights in fp32; mixed precision (autocast) handles bf16/fp16 compute
    attn = model.attn_implementation
    if attn == "auto":
        attn = "flash_attention_2" if device == "cuda" and importlib.util.find_spec("flash_attn") else "sdpa"
    if attn == "flash_attention_2" and not importlib.util.find_spec("flash_attn"):
        raise ModelSetupError("attn_implementation = \"flash_attention_2\" but flash-attn is not installed; pip install '.[gpu]' or use \"sdpa\"")
    return DeviceChoice(device=device, dtype=dtype, precision=precision, attn_implementation=attn)


def _quantization_config(adapter: AdapterSection, compute_dtype: torch.dtype) -> Any:
    try:
        from transformers import BitsAndBytesConfig
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise ModelSetupError("qlora needs bitsandbytes: pip install bitsandbytes") from exc
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=adapter.quant_type,
        bnb_4bit_use_double_quant=adapter.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def load_causal_lm(path: Path, model: ModelSection, adapter: AdapterSection, choice: DeviceChoice) -> Any:
    """The base model, on its device, with the kv-cache off.

    use_cache=False is not only about memory: with padding-free batches (position_ids restarting
    per sequence) sdpa/eager attention leaks across sequences in transformers 5 unless it is off.
    """
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, path, model, adapter, choice, what="a causal LM")


def load_pretrained(
    auto_class: Any, path: Path, model: ModelSection, adapter: AdapterSection, choice: DeviceChoice, *, what: str
) -> Any:
    """`auto_class.from_pretrained` with the device choice, QLoRA quantisation and the kv-cache off."""
    kwargs: dict[str, Any] = {
        "dtype": choice.torch_dtype,
        "attn_implementation": choice.attn_implementation,
        "trust_remote_code": model.trust_remote_code,
        "use_safetensors": True,
    }
    if adapter.method == "qlora":
        compute = torch.bfloat16 if choice.precision == "bf16" else torch.float32
        kwargs["quantization_config"] = _quantization_config(adapter, compute)
        kwargs["device_map"] = {"": 0} if choice.device == "cuda" else "cpu"
    try:
        loaded = auto_class.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"cannot load {what} from {path}: {exc}") from exc
    loaded.config.use_cache = False
    return loaded


def apply_adapter(
    model: Any,
    adapter: AdapterSection,
    *,
    gradient_checkpointing: bool,
    task_type: str = "CAUSAL_LM",
    adapter_names: Sequence[str] = ("default",),
) -> Any:
    """Wrap the model with LoRA (peft) or leave every weight trainable for full fine-tuning.

    Several `adapter_names` give one PEFT model with one LoRA adapter per name (same settings),
    every one of them trainable; the first is active.
    """
    if adapter.method == "full":
        model.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if adapter.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing)
    targets: str | list[str] = adapter.target_modules
    if targets == ["all-linear"]:
        targets = "all-linear"
    config = LoraConfig(
        r=adapter.r,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=targets,
        bias=adapter.bias,
        task_type=task_type,
    )
    first, *others = adapter_names
    try:
        peft_model = get_peft_model(model, config, adapter_name=first)
        for name in others:
            peft_model.add_adapter(name, config)
    except ValueError as exc:
        raise ModelSetupError(f"adapter.target_modules: {exc}") from exc
    if others:  # add_adapter leaves the added adapters frozen; each one trains (on its own batches)
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                param.requires_grad_(True)
    if gradient_checkpointing:
        peft_model.enable_input_require_grads()
    return peft_model


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
