"""FSDP is never pretended: on the CPU a job asking for it is refused with the reason (the Trainer
would silently run DDP), and the check that guards the GPU path tells real sharding (FSDP2 on two
gloo processes, parameters split in half) from replication (DDP)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from runner.train.distributed import sharding_report  # torch only: the spawned workers import this module


def test_fsdp_on_the_cpu_is_refused_when_the_job_is_validated(write_job: Callable[..., Path]) -> None:
    from runner.spec import JobSpecError, load_job

    job = write_job("fsdp", resources={"device": "cpu", "nproc": 2, "strategy": "fsdp"})
    with pytest.raises(JobSpecError) as caught:
        load_job(job)
    (issue,) = caught.value.issues
    assert issue.path == "resources.strategy"
    assert "does not shard on the CPU (gloo): the Trainer would silently run DDP" in issue.message


def test_a_model_that_is_only_replicated_stops_the_run_at_its_first_step() -> None:
    from runner.train.model import ModelSetupError
    from runner.train.trainers.causal import check_sharded

    with pytest.raises(ModelSetupError, match="it is not sharded here"):
        check_sharded(torch.nn.Linear(4, 4))


class _Block(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up, self.down = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(torch.relu(self.up(x)))


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(*[_Block() for _ in range(4)], torch.nn.Linear(64, 10))


def _worker(rank: int, store: str, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        ddp = sharding_report(DistributedDataParallel(_model()))
        model = _model()
        mesh = init_device_mesh("cpu", (2,))
        for block in list(model)[:-1]:
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        fsdp = sharding_report(model)
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
        loss = model(x).square().mean()
        loss.backward()  # a sharded model still trains: gradients come back as shards
        grads_sharded = all(p.grad.to_local().numel() <= p.numel() // 2 + 64 for p in model.parameters())
        with open(os.path.join(out, f"rank-{rank}.json"), "w") as handle:
            json.dump({"ddp": ddp, "fsdp": fsdp, "grads_sharded": grads_sharded, "loss": loss.item()}, handle)
        dist.barrier()  # leave together: destroying the group under a peer's in-flight gloo work aborts it
    finally:
        dist.destroy_process_group()


def test_fsdp2_on_two_gloo_processes_really_shards_and_ddp_does_not(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    reports = [json.loads((tmp_path / f"rank-{r}.json").read_text()) for r in (0, 1)]
    for report in reports:
        assert report["ddp"]["kind"] == "ddp" and report["ddp"]["sharded"] is False
        assert report["ddp"]["local_elements"] == report["ddp"]["global_elements"]
        fsdp = report["fsdp"]
        assert fsdp["kind"] == "fsdp2" and fsdp["sharded"] is True
        assert fsdp["local_elements"] <= fsdp["global_elements"] // 2 + 64  # about half each (row padding)
        assert report["grads_sharded"]
    assert sum(r["fsdp"]["local_elements"] for r in reports) == reports[0]["fsdp"]["global_elements"]
    assert reports[0]["loss"] == pytest.approx(reports[1]["loss"])  # one model, two shards
