"""Load a base model for training and put the adapter the spec asks for on it.

Device, dtype and attention kernel are chosen here once, printed, and recorded in the manifest,
so a run says exactly what it trained with.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from packaging.version import InvalidVersion, Version

from runner.spec.model import AdapterSection, ModelSection, ResourcesSection


class ModelSetupError(RuntimeError):
    """The model cannot be set up as the spec asks (a config problem, not a crash)."""


# bitsandbytes runs 4-bit layers on the CPU from 0.49 on; older versions fail deep in a kernel
BNB_MIN_CPU = (0, 49)


@dataclass(frozen=True)
class DeviceChoice:
    device: str
    dtype: str
    precision: str
    attn_implementation: str
    compute_dtype: str | None = None  # QLoRA: what the 4-bit weights are dequantised to

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def choose_device(
    model: ModelSection, resources: ResourcesSection, adapter: AdapterSection | None = None
) -> DeviceChoice:
    """Device, weight dtype, mixed precision and attention kernel for this machine, or a
    ModelSetupError that says why the spec cannot run here (before any weights load).

    With `adapter`, QLoRA's needs (bitsandbytes, its version on the CPU) are checked too, and the
    compute dtype of the 4-bit layers is resolved.
    """
    cuda = torch.cuda.is_available()
    if resources.device == "cuda" and not cuda:
        raise ModelSetupError('resources.device is "cuda" but no CUDA device is visible; use "auto" or "cpu"')
    device = "cuda" if (resources.device == "cuda" or (resources.device == "auto" and cuda)) else "cpu"
    bf16_ok = device == "cuda" and torch.cuda.is_bf16_supported()
    precision = resources.precision
    if precision == "auto":
        # measured: bf16 matmul is about half as fast as fp32 on CPUs without AMX, so CPU stays fp32;
        # GPUs without bf16 (pre-Ampere) get fp16 mixed precision with loss scaling
        precision = ("bf16" if bf16_ok else "fp16") if device == "cuda" else "fp32"
    elif precision == "fp16" and device == "cpu":
        raise ModelSetupError(
            'resources.precision = "fp16" needs a CUDA device and this job runs on the CPU; use "fp32" (or "bf16")'
        )
    elif precision == "bf16" and device == "cuda" and not bf16_ok:
        raise ModelSetupError('this GPU does not support bf16; use resources.precision = "fp16" or "auto"')
    dtype = model.dtype
    if dtype == "auto":
        dtype = "float32"  # weights in fp32; mixed precision (autocast) handles bf16/fp16 compute
    if dtype == "float16" and device == "cpu":
        raise ModelSetupError('model.dtype = "float16" needs a CUDA device; use "float32" on the CPU')
    attn = model.attn_implementation
    flash_ok, flash_why = flash_attention_usable(device)
    if attn == "auto":
        attn = "flash_attention_2" if flash_ok else "sdpa"
    elif attn == "flash_attention_2" and not flash_ok:
        raise ModelSetupError(
            f'attn_implementation = "flash_attention_2" cannot run here: {flash_why}; use "sdpa" or "auto"'
        )
    if resources.strategy == "fsdp" and resources.world_size > 1 and device != "cuda":
        raise ModelSetupError(
            'strategy = "fsdp" does not shard on the CPU (gloo): the Trainer would silently run DDP; '
            'use strategy = "ddp" here, or run on CUDA devices'
        )
    if resources.nproc > 1 and device == "cuda" and torch.cuda.device_count() < resources.nproc:
        raise ModelSetupError(
            f"resources.nproc = {resources.nproc} needs one GPU per process; {torch.cuda.device_count()} visible"
        )
    compute: str | None = None
    if adapter is not None and adapter.method == "qlora":
        problem = quantization_problem(device)
        if problem:
            raise ModelSetupError(problem)
        compute = adapter.compute_dtype
        if compute == "auto":
            compute = {"bf16": "bfloat16", "fp16": "float16"}.get(precision, "float32")
        if compute == "float16" and device == "cpu":
            raise ModelSetupError('adapter.compute_dtype = "float16" needs a CUDA device; use "float32" on the CPU')
    return DeviceChoice(
        device=device, dtype=dtype, precision=precision, attn_implementation=attn, compute_dtype=compute
    )


def flash_attention_usable(device: str) -> tuple[bool, str]:
    """Whether flash_attention_2 can run for a model on `device`, and if not, why."""
    if device != "cuda":
        return False, "flash-attn needs a CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None:
        return False, "flash-attn is not installed (pip install '.[gpu]')"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return False, f"flash-attn 2 needs compute capability 8.0 or newer (Ampere+); this GPU is {major}.{minor}"
    from transformers.utils import is_flash_attn_2_available

    if not is_flash_attn_2_available():
        return False, "flash-attn is installed but cannot be used with this torch/CUDA build"
    return True, ""


def _version_tuple(text: str) -> tuple[int, ...]:
    """The release numbers of a PEP 440 version ("0.49.1.dev0" -> (0, 49, 1)); () if it is not one."""
    try:
        return Version(text).release
    except InvalidVersion:
        return ()


def quantization_problem(device: str) -> str | None:
    """Why 4-bit (bitsandbytes) layers cannot run on `device` here, or None if they can."""
    try:
        version = importlib.metadata.version("bitsandbytes")
    except importlib.metadata.PackageNotFoundError:
        return "qlora needs bitsandbytes, which is not installed: pip install '.[qlora]' (bitsandbytes>=0.49)"
    if device == "cpu" and _version_tuple(version) < BNB_MIN_CPU:
        return (
            f"qlora on the CPU needs bitsandbytes >= {'.'.join(map(str, BNB_MIN_CPU))} (its 4-bit CPU "
            f"kernels); {version} is installed: pip install -U 'bitsandbytes>=0.49'"
        )
    try:
        import bitsandbytes  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - a broken install (missing native library) fails here, not in a kernel
        return f"bitsandbytes {version} is installed but cannot be imported: {exc}"
    return None


def _quantization_config(adapter: AdapterSection, compute_dtype: torch.dtype) -> Any:
    try:
        import bitsandbytes  # noqa: F401
        from transformers import BitsAndBytesConfig
    except ImportError as exc:
        raise ModelSetupError("qlora needs bitsandbytes: pip install '.[qlora]' (bitsandbytes>=0.49)") from exc
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
        compute = (
            getattr(torch, choice.compute_dtype)
            if choice.compute_dtype
            else (torch.bfloat16 if choice.precision == "bf16" else torch.float32)
        )
        kwargs["quantization_config"] = _quantization_config(adapter, compute)
        # 4-bit weights are quantised where they are placed: straight onto this process's GPU
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": local_rank} if choice.device == "cuda" else "cpu"
    try:
        loaded = auto_class.from_pretrained(str(path), **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelSetupError(f"cannot load {what} from {path}: {exc}") from exc
    loaded.config.use_cache = False
    if adapter.method == "qlora" and choice.device == "cpu":
        keep_4bit_layers_trainable(loaded)
    return loaded


def keep_4bit_layers_trainable(model: Any) -> int:
    """Stop bitsandbytes (0.50) from repacking 4-bit CPU weights for inference at the first eval pass.

    On CPUs with AVX512-BF16, a Linear4bit that runs in eval mode converts its weight to a packed
    inference layout for good, and every later forward goes through `gemv_4bit`, which has no
    autograd: gradients stop flowing through the frozen base, so LoRA layers below it train on
    wrong gradients (measured: max |grad diff| 0.14 on a tiny model after one eval pass). The
    baseline evaluation before training would trigger it. That packed kernel also computes in
    bf16, so inference with it differs from what training saw. Returns how many layers changed.
    """
    changed = 0
    for module in model.modules():
        if getattr(module, "support_avx512bf16_for_cpu", False):
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


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
        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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
        with warnings.catch_warnings():  # peft reads a property transformers 5 deprecated
            warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
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


def parameter_count(param: Any) -> int:
    """Elements a parameter stands for: a packed 4-bit weight holds two per stored byte, and its
    quantisation state knows the original shape."""
    quant_state = getattr(param, "quant_state", None)
    shape = getattr(quant_state, "shape", None)
    if shape is not None:
        return int(torch.Size(shape).numel())
    return int(param.numel())


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count as the weights they quantise."""
    trainable = sum(parameter_count(p) for p in model.parameters() if p.requires_grad)
    total = sum(parameter_count(p) for p in model.parameters())
    return trainable, total


def quantization_record(adapter: AdapterSection, choice: DeviceChoice) -> dict[str, Any] | None:
    """What a saved QLoRA adapter needs to be put back on the same 4-bit base."""
    if adapter.method != "qlora":
        return None
    return {
        "bits": 4,
        "quant_type": adapter.quant_type,
        "double_quant": adapter.double_quant,
        "compute_dtype": choice.compute_dtype or "float32",
    }


def load_for_inference(adapter_dir: Path, base_path: Path | None = None, *, device: str = "auto") -> Any:
    """A finished causal-LM run's model in eval mode: the full model, or a fresh base + the adapter.

    A QLoRA adapter goes back onto a freshly quantised 4-bit base with the settings recorded at
    save time (runner_adapter.json), so its outputs match the model it was trained in.
    """
    from transformers import AutoModelForCausalLM

    info = json.loads((Path(adapter_dir) / "runner_adapter.json").read_text(encoding="utf-8"))
    target = "cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu"
    if info["method"] == "full":
        return AutoModelForCausalLM.from_pretrained(str(adapter_dir)).to(target).eval()  # type: ignore[arg-type]  # transformers types .to as unbound
    from peft import PeftModel

    base = Path(base_path) if base_path is not None else Path(info["base_model"]["path"])
    kwargs: dict[str, Any] = {"use_safetensors": True}
    quant = info.get("quantization")
    if info["method"] == "qlora" and quant:
        problem = quantization_problem(target)
        if problem:
            raise ModelSetupError(problem)
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quant["quant_type"],
            bnb_4bit_use_double_quant=quant["double_quant"],
            bnb_4bit_compute_dtype=getattr(torch, quant["compute_dtype"]),
        )
        kwargs["device_map"] = {"": 0} if target == "cuda" else "cpu"
    model = AutoModelForCausalLM.from_pretrained(str(base), **kwargs)
    if "device_map" not in kwargs:
        model = model.to(target)  # type: ignore[arg-type]  # transformers types .to as unbound
    elif target == "cpu":  # the training numerics: bitsandbytes' packed CPU kernel computes in bf16
        keep_4bit_layers_trainable(model)
    return PeftModel.from_pretrained(model, str(adapter_dir)).eval()
