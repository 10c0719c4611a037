"""Embeddings of every process in one batch, with gradients, so negatives span the global batch.

`torch.distributed.nn.functional.all_gather` is the autograd-aware gather: its backward sends
each process the gradient of every process's loss with respect to its own rows (a reduce-scatter),
so with DDP averaging the parameter gradients, training on W processes matches one process over
the concatenated batch. Batches may differ in size between processes (the last batch of an
epoch, a varying number of hard negatives): sizes are exchanged first and rows padded to match.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_rows(rows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(rows of all processes concatenated in rank order, index of this process's first row).

    Outside a multi-process run this is (rows, 0). Every process must call it, in the same order.
    """
    if not distributed():
        return rows, 0
    from torch.distributed.nn.functional import all_gather

    world, rank = dist.get_world_size(), dist.get_rank()
    size = torch.tensor([rows.shape[0]], device=rows.device)
    sizes_t = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes_t, size)
    sizes = [int(s.item()) for s in sizes_t]
    largest = max(sizes)
    if largest == 0:
        return rows, 0
    padded = rows
    if rows.shape[0] < largest:
        padded = torch.cat([rows, rows.new_zeros(largest - rows.shape[0], *rows.shape[1:])])
    with warnings.catch_warnings():  # torch 2.13 points to a private module instead; this is the public autograd gather
        warnings.filterwarnings("ignore", message=".*nn.functional.all_gather is deprecated", category=FutureWarning)
        parts = all_gather(padded)
    return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)]), sum(sizes[:rank])
