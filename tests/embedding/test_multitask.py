"""Multi-task: one LoRA adapter per task in one PEFT model; a batch trains only its task's adapter."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import set_seed

from runner.commands import main
from runner.data.embedding import EmbeddingBatchSampler
from runner.spec.loader import load_job
from runner.train.embedder import EmbeddingCollator, build_embedder
from runner.train.embedding import prepare_embedding_job_data
from runner.train.losses import build_loss
from runner.train.model import choose_device

from .helpers import only_run, status_of

# "match" is the first adapter (active after setup); the step below trains "search", so a batch
# that did not switch adapters would train the wrong one
TASKS = {"match": {"type": "contrastive", "symmetric": True}, "search": {"type": "contrastive"}}


def _rows(n: int = 16) -> list[dict[str, str]]:
    return [
        {"query": f"query {i} text", "positive": f"document {i} text", "task": "search" if i % 2 else "match"}
        for i in range(n)
    ]


def _initial_adapters(job: Path) -> dict[str, dict[str, torch.Tensor]]:
    """The adapters as the recipe initialises them (same seed, same order of construction)."""
    loaded = load_job(job)
    set_seed(loaded.spec.train.seed)
    embedder, _ = build_embedder(
        Path(loaded.spec.model.source.removeprefix("local:")),
        loaded.spec,
        choose_device(loaded.spec.model, loaded.spec.resources),
    )
    from peft import get_peft_model_state_dict

    return {task: get_peft_model_state_dict(embedder.backbone, adapter_name=task) for task in TASKS}


def test_a_step_trains_only_the_adapter_of_its_batch_task(write_job: Callable[..., Path], tmp_path: Path) -> None:
    job = write_job(
        rows=_rows(),
        loss={"type": "multi-task", "tasks": TASKS},
        adapter={"dropout": 0.0},
        train={"max_steps": 1, "batch_size": 4},
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = only_run(runs)
    assert status_of(run)["extra"]["data"]["tasks"] == {"match": 8, "search": 8}

    data = prepare_embedding_job_data(load_job(job))
    first_batch = next(iter(EmbeddingBatchSampler(data.train, 4, seed=42)))
    (trained_task,) = {data.train[i].task for i in first_batch}
    other_task = next(t for t in TASKS if t != trained_task)
    assert trained_task != next(iter(TASKS))  # the step had to switch away from the first adapter

    initial = _initial_adapters(job)
    saved = {task: load_file(run / "adapter" / task / "adapter_model.safetensors") for task in TASKS}
    assert saved[other_task].keys() == initial[other_task].keys()
    for name, value in saved[other_task].items():
        assert torch.equal(value, initial[other_task][name]), name  # untouched, bit for bit
    changed = [
        name for name, value in saved[trained_task].items() if not torch.equal(value, initial[trained_task][name])
    ]
    assert changed and all("lora_B" in name or "lora_A" in name for name in changed)


def test_set_task_routes_gradients_and_keeps_every_adapter_trainable(write_job: Callable[..., Path]) -> None:
    job = load_job(write_job(rows=_rows(), loss={"type": "multi-task", "tasks": TASKS}))
    set_seed(0)
    embedder, preprocess = build_embedder(
        Path(job.spec.model.source.removeprefix("local:")), job.spec, choose_device(job.spec.model, job.spec.resources)
    )
    loss = build_loss(job.spec.loss, "multi-task")
    trainable = {name for name, p in embedder.named_parameters() if p.requires_grad}
    assert {t for t in TASKS if any(f".{t}." in n for n in trainable)} == set(TASKS)
    batch = EmbeddingCollator(preprocess)(prepare_embedding_job_data(job).train[:4:2])  # "match" rows
    for task in ("search", "match"):
        embedder.zero_grad(set_to_none=True)
        embedder.set_task(task)
        out = embedder(query=batch["query"], positive=batch["positive"])
        loss(out["query"], out["positive"], task=task).backward()
        with_grad = {name for name, p in embedder.named_parameters() if p.grad is not None}
        assert with_grad and all(f".{task}." in name for name in with_grad)
        assert {name for name, p in embedder.named_parameters() if p.requires_grad} == trainable
    with pytest.raises(KeyError, match="no adapter for task 'other'"):
        embedder.set_task("other")
