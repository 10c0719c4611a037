"""Run under `torchrun --nproc_per_node 2` (gloo, CPU) by test_distributed.py; not collected by pytest.

Every rank embeds its share of one global batch with a DDP-wrapped model, the loss gathers the
embeddings across ranks, and DDP averages the gradients. Rank 0 then redoes the step in one
process over the whole global batch (no gathering) and writes both losses and gradients to
the JSON file named by argv[1]. Ranks hold different numbers of hard negatives (uneven gather).
"""

from __future__ import annotations

import copy
import json
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from runner.train.losses import ContrastiveLoss, CoSENTLoss, MatryoshkaLoss

PER_RANK, DIM_IN, DIM_OUT = 6, 16, 8
NEGATIVES = [2, 5]  # per rank


def main(out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    g = torch.Generator().manual_seed(0)  # the same global batch on every rank
    queries = torch.randn(world * PER_RANK, DIM_IN, generator=g)
    positives = queries + 0.5 * torch.randn(world * PER_RANK, DIM_IN, generator=g)
    negatives = [torch.randn(n, DIM_IN, generator=g) for n in NEGATIVES[:world]]
    scores = torch.rand(world * PER_RANK, generator=g)
    mine = slice(rank * PER_RANK, (rank + 1) * PER_RANK)

    torch.manual_seed(0)
    model = torch.nn.Linear(DIM_IN, DIM_OUT)
    single = copy.deepcopy(model)
    losses = {
        "contrastive_symmetric": lambda gather: ContrastiveLoss(temperature=0.05, symmetric=True, gather=gather),
        "matryoshka": lambda gather: MatryoshkaLoss(ContrastiveLoss(gather=gather), [8, 4], [1.0, 0.5]),
        "cosent": lambda gather: CoSENTLoss(gather=gather),
    }
    result: dict[str, dict[str, float]] = {}
    for name, make in losses.items():
        ddp = DistributedDataParallel(copy.deepcopy(model))
        # one forward per step through DDP, as the Trainer does
        inputs = torch.cat([queries[mine], positives[mine], negatives[rank]])
        out = ddp(inputs)
        q, p, n = out[:PER_RANK], out[PER_RANK : 2 * PER_RANK], out[2 * PER_RANK :]
        loss = make(True)(q, p, None if name == "cosent" else n, scores[mine])
        loss.backward()  # DDP averages the gradients over ranks
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        mean_loss /= world  # what the Trainer logs: the mean of the ranks' losses

        reference = copy.deepcopy(single)
        all_negatives = torch.cat(negatives[:world])
        out = reference(torch.cat([queries, positives, all_negatives]))
        n_total = world * PER_RANK
        q, p, n = out[:n_total], out[n_total : 2 * n_total], out[2 * n_total :]
        ref_loss = make(False)(q, p, None if name == "cosent" else n, scores)
        ref_loss.backward()
        grads = [a.grad - b.grad for a, b in zip(ddp.module.parameters(), reference.parameters(), strict=True)]
        result[name] = {
            "loss": float(mean_loss),
            "reference_loss": float(ref_loss.detach()),
            "max_grad_diff": max(float(d.abs().max()) for d in grads),
            "grad_norm": float(sum(float(b.grad.norm()) for b in reference.parameters())),
        }
    if rank == 0:
        with open(out_path, "w", encoding="utf-8") as handle:
            json.dump(result, handle)
    dist.barrier()  # leave together: destroying the group under a peer's in-flight gloo work aborts it
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
