"""What a training process needs to know when it is one of several (launched by torchrun).

- who writes: rank 0 alone writes status, metrics, checkpoints and the adapter (`is_writer`);
- stopping together: a SIGTERM may reach the ranks at different moments, so the stop flag is
  agreed on with one all-reduce per step (`any_rank`) and every rank stops after the same step;
- RNG states for resume are gathered to rank 0, which writes them (`gather_to_writer`);
- replicas are compared at the end (`state_digest`): DDP ranks must hold identical weights;
- `sharding_report` tells whether a wrapped model is really sharded (FSDP) or just replicated,
  so a job that asked for FSDP never silently trains with DDP.

Everything here also works in a single process (no process group): the collectives become
identities, so the recipe has one code path.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import torch


def rank() -> int:
    """This process's global rank (0 without torchrun); readable before the process group exists."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_writer() -> bool:
    """Whether this process writes the run's files (rank 0, or the only process)."""
    return rank() == 0


def _group_ready() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def any_rank(flag: bool) -> bool:
    """True on every rank if it is True on at least one (collective: every rank must call it)."""
    if not _group_ready():
        return flag
    import torch.distributed as dist

    value = torch.tensor([1 if flag else 0], device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def sum_over_ranks(value: int) -> int:
    """The sum of `value` over all ranks (collective)."""
    if not _group_ready():
        return int(value)
    import torch.distributed as dist

    total = torch.tensor([int(value)], dtype=torch.int64, device=_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return int(total.item())


def gather_to_writer(obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0; None on the other ranks (collective)."""
    if not _group_ready():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] | None = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank (collective)."""
    if not _group_ready():
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def trainable_state(model: Any) -> dict[str, torch.Tensor]:
    """The tensors a run saves as its result: the adapter's state dict for a PEFT model (the same
    keys and values as adapter_model.safetensors), else every trainable parameter."""
    try:
        from peft import PeftModel, get_peft_model_state_dict
    except ImportError:  # pragma: no cover - peft is a dependency
        PeftModel = None  # type: ignore[assignment, misc]
    if PeftModel is not None and isinstance(model, PeftModel):
        return dict(get_peft_model_state_dict(model))
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def state_digest(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, dtypes, shapes and bytes, in name order: equal digests, equal weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def sharding_report(model: Any) -> dict[str, Any]:
    """How a (wrapped) model's parameters are laid out across processes.

    `sharded` is True only when the parameters are really split: FSDP2 (`fully_shard`, DTensor
    parameters) or FSDP1 (`FullyShardedDataParallel` flat parameters). `local_elements` is what
    this process holds, `global_elements` what the model has.
    """
    from torch.nn.parallel import DistributedDataParallel

    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch < 2.4
        DTensor = ()  # type: ignore[assignment,misc]
    from torch.distributed.fsdp import FullyShardedDataParallel

    params = list(model.parameters())
    if any(isinstance(p, DTensor) for p in params):
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in params)
        total = sum(p.numel() for p in params)
        return {"kind": "fsdp2", "sharded": local < total, "local_elements": local, "global_elements": total}
    fsdp1 = [m for m in model.modules() if isinstance(m, FullyShardedDataParallel)]
    if fsdp1:
        flat = [m._flat_param for m in fsdp1 if m._flat_param is not None]
        local = sum(f.numel() for f in flat)
        total = sum(int(torch.Size(f._unpadded_unsharded_size).numel()) for f in flat)
        return {"kind": "fsdp1", "sharded": local < total, "local_elements": local, "global_elements": total}
    kind = "ddp" if isinstance(model, DistributedDataParallel) else "none"
    total = sum(p.numel() for p in params)
    return {"kind": kind, "sharded": False, "local_elements": total, "global_elements": total}
