"""LoRA layers that run their forward pass as one GEMM with the adapter folded into the weight.

A LoRA linear computes ``y = x W^T + s (x A^T) B^T``. peft runs that as written: the frozen GEMM,
two rank-r matmuls, a scaling multiply and an add over the whole output, and in the backward pass
the mirror image (the scaling, two more rank-r matmuls for the input gradient, and an add over the
whole input). On a CPU the rank-r matmuls and the elementwise passes are bound by memory, not
arithmetic: they read and write activations the size of the layer's input and output for a few
FLOPs each (bench/NOTES.md, the profile).

With dropout 0 on the adapter the same function is ``y = x (W + s B A)^T``: `FoldedLoraFunction`
forms ``W' = W + s B A`` once per optimizer step (the weights change only there; the fold is kept
per layer and formed again after an optimizer step or an in-place change of W, A or B) and runs one
GEMM forward and one for
the input gradient ``dx = dy W'``. The adapter's gradients still come from the low-rank path,
exactly: ``dB = s dy^T (x A^T)`` and ``dA = s (dy B)^T x``. What goes: the rank-r product into the
output, the scaling and the add forward; the rank-r product into the input gradient, the scaling
and the add backward. What it costs: a second copy of every adapted weight (the fold) and forming
it once per step.

Not folded (peft's own forward runs): dropout above 0 (the adapter sees other inputs than the
base), several active adapters, DoRA and other variants, merged or disabled adapters, quantised
or trainable base layers, mixed precision (autocast) and dtypes that differ. A pass with the
adapter disabled (the preference recipe's reference, `disable_adapter()`) runs the base layer
alone and keeps the fold for the next adapted pass.

peft internals read here (checked against peft `CHECKED_AGAINST`; tests/train/test_lora_fold.py
pins them): a LoRA ``Linear`` has ``base_layer`` (an ``nn.Linear``), ``lora_A`` / ``lora_B`` /
``lora_dropout`` / ``scaling`` keyed by adapter name, ``lora_variant`` (adapters with a variant
such as DoRA), ``active_adapters``, ``merged`` and ``disable_adapters``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

CHECKED_AGAINST = "0.21.2"  # the peft version whose LoRA Linear this module reads

_FOLDED_CLASSES: dict[type, type] = {}


class FoldedLoraFunction(torch.autograd.Function):
    """``y = x W'^T (+ bias)`` with ``W' = W + s B A`` given; gradients for x, A and B only."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        folded: torch.Tensor,
        bias: torch.Tensor | None,
        lora_a: torch.Tensor,
        lora_b: torch.Tensor,
        scaling: float,
    ) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        down = flat @ lora_a.t()  # (N, r): the adapter's input side, kept for dB
        ctx.save_for_backward(flat, down, folded, lora_a, lora_b)
        ctx.scaling, ctx.in_shape = scaling, x.shape
        return F.linear(x, folded, bias)

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        flat, down, folded, _lora_a, lora_b = ctx.saved_tensors
        grad = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = (grad @ folded).reshape(ctx.in_shape) if ctx.needs_input_grad[0] else None
        grad_a = grad_b = None
        if ctx.needs_input_grad[3]:
            grad_a = ((grad @ lora_b) * ctx.scaling).t() @ flat  # (r, in)
        if ctx.needs_input_grad[4]:
            grad_b = grad.t() @ (down * ctx.scaling)  # (out, r)
        return grad_x, None, None, grad_a, grad_b, None


_optimizer_steps = 0  # every optimizer step in this process, counted by a global step hook


def _count_optimizer_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    global _optimizer_steps
    _optimizer_steps += 1


_step_hook: Any = None


def _watch_optimizer_steps() -> None:
    """Count optimizer steps (once per process): torch's fused AdamW updates the weights in place
    without bumping their version counters, so the versions alone would keep a stale fold."""
    global _step_hook
    if _step_hook is None:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        _step_hook = register_optimizer_step_post_hook(_count_optimizer_step)


def _fold_of(layer: Any, adapter: str) -> torch.Tensor:
    """``W + s B A`` of `layer`, formed again only when W, A or B may have changed: after any
    optimizer step, or an in-place change their version counters show (a loaded checkpoint, an
    edit under no_grad)."""
    weight = layer.base_layer.weight
    lora_a, lora_b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight
    scaling = layer.scaling[adapter]
    key = (
        adapter,
        _optimizer_steps,
        weight._version,
        lora_a._version,
        lora_b._version,
        id(weight),
        id(lora_a),
        id(lora_b),
        scaling,
    )
    cached = layer.__dict__.get("_runner_fold")
    if cached is not None and cached[0] == key:
        return cached[1]
    with torch.no_grad():
        folded = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
    layer.__dict__["_runner_fold"] = (key, folded)  # a plain attribute: not a buffer, never saved
    return folded


def foldable(layer: Any, x: torch.Tensor, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The adapter whose product can be folded for this call, or None (peft's forward runs)."""
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    active = [a for a in layer.active_adapters if a in layer.lora_A]
    if len(active) != 1:
        return None
    adapter = active[0]
    base = layer.base_layer
    if (
        adapter in layer.lora_variant
        or not isinstance(layer.lora_dropout[adapter], nn.Identity)
        or type(base) is not nn.Linear
        or base.weight.requires_grad
        or (base.bias is not None and base.bias.requires_grad)
    ):
        return None
    if torch.is_autocast_enabled(x.device.type):
        return None
    lora_a = layer.lora_A[adapter].weight
    if not (x.dtype == base.weight.dtype == lora_a.dtype) or layer.lora_A[adapter].bias is not None:
        return None
    return adapter


def _folded_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    adapter = foldable(self, x, args, kwargs)
    if adapter is None:
        # a fold that is not used is not kept, except across a pass with the adapter switched off (a
        # preference loss's reference): the next adapted pass of the same step needs it again
        if not self.disable_adapters:
            self.__dict__.pop("_runner_fold", None)
        return super(type(self), self).forward(x, *args, **kwargs)
    folded = _fold_of(self, adapter)
    lora_a, lora_b = self.lora_A[adapter].weight, self.lora_B[adapter].weight
    if not torch.is_grad_enabled() or not (lora_a.requires_grad or lora_b.requires_grad or x.requires_grad):
        return F.linear(x, folded, self.base_layer.bias)
    return FoldedLoraFunction.apply(x, folded, self.base_layer.bias, lora_a, lora_b, self.scaling[adapter])


def _folded_class(cls: type) -> type:
    if cls not in _FOLDED_CLASSES:
        _FOLDED_CLASSES[cls] = type(
            f"Folded{cls.__name__}",
            (cls,),
            {
                "forward": _folded_forward,
                "__doc__": f"peft's {cls.__name__} whose forward folds the adapter into the weight (runner.train.lora_fold)",
            },
        )
    return _FOLDED_CLASSES[cls]


def fold_lora_layers(model: nn.Module) -> int:
    """Give every peft LoRA ``Linear`` of `model` the folded forward; returns how many layers.

    The layers keep their parameters, names and saved form (the class is a subclass of peft's);
    a call the fold cannot serve (see `foldable`) runs peft's own forward.
    """
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:
        return 0
    _watch_optimizer_steps()
    count = 0
    for module in model.modules():
        if isinstance(module, LoraLinear) and type(module) not in _FOLDED_CLASSES.values():
            module.__class__ = _folded_class(type(module))
            count += 1
    return count


def fold_applies(method: str, dropout: float) -> bool:
    """Whether a job's adapter can be folded at all: plain LoRA (not QLoRA's 4-bit base, not full
    fine-tuning) with dropout 0."""
    return method == "lora" and dropout == 0.0
