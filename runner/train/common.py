"""What every training recipe shares: its first steps, the Trainer's arguments, the training loop
call, the replica check and the record a result carries.

A recipe (runner.train.causal_lm, runner.train.embedding) reads top to bottom and calls these for
the steps that do not depend on the model kind:
`start_run` -> ... `training_arguments` -> ... `train_or_resume` -> ... `compare_replicas`,
`result_record`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from runner.outputs.runs import STAGING_DIR
from runner.spec.loader import LoadedJob
from runner.train import distributed
from runner.train.context import RunContext
from runner.train.model import DeviceChoice, ModelSetupError, choose_device, quantization_record

STAGING = STAGING_DIR  # the Trainer's output_dir, beside (not inside) checkpoints/ so pruning never touches it
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def start_run(ctx: RunContext) -> tuple[DeviceChoice, dict[str, Any]]:
    """Every recipe's first steps: threads, seed, device choice and trackers checked, the runtime
    printed and recorded in the manifest."""
    import torch
    from transformers import set_seed

    from runner.machine import retired_settings

    spec = ctx.job.spec
    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    set_seed(spec.train.seed)
    choice = choose_device(spec.model, spec.resources, spec.adapter)
    check_trackers(list(spec.tracking.report_to))
    if distributed.is_writer():
        for line in retired_settings():
            print(f"warning: {line}", file=sys.stderr, flush=True)
    runtime = runtime_record(ctx, choice)
    print(describe_runtime(runtime), flush=True)
    record_runtime(ctx, runtime)
    return choice, runtime


def load_tokenizer(model_path: Path, trust_remote_code: bool = False) -> Any:
    """The model's tokenizer, with a pad token (the end-of-sequence token when it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def check_trackers(report_to: list[str]) -> None:
    """Fail as a config error before training, not inside the Trainer's integration import."""
    import importlib.util
    import os

    for target in report_to:
        package = TRACKER_PACKAGES[target]
        if importlib.util.find_spec(package) is None:
            raise ModelSetupError(
                f"tracking.report_to includes '{target}' but {package} is not installed: "
                f"pip install {package}, or remove it from tracking.report_to"
            )
    if "wandb" in report_to:
        os.environ.setdefault("WANDB_MODE", "offline")  # runs never reach a service unless the user says so


def training_arguments(
    job: LoadedJob, run_dir: Path, choice: DeviceChoice, *, has_eval: bool, plain_logs: bool, **overrides: Any
) -> Any:
    """The spec's [train]/[eval]/[tracking] settings in the Trainer's vocabulary (`overrides` win)."""
    from transformers import TrainingArguments

    spec = job.spec
    train, evaluation = spec.train, spec.eval
    every = evaluation.every if (has_eval and evaluation.every) else None
    settings: dict[str, Any] = dict(
        output_dir=str(run_dir / STAGING),
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=evaluation.batch_size or train.batch_size,
        gradient_accumulation_steps=train.grad_accum,
        learning_rate=train.learning_rate,
        lr_scheduler_type=train.lr_scheduler,
        warmup_steps=train.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        optim=optimizer_name(train.optimizer, fused=train.speed.fused_optimizer),
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.log_every,
        save_strategy="steps",
        save_steps=train.save_every,
        save_total_limit=None,  # CompleteCheckpoints prunes only after a new checkpoint is complete
        eval_strategy="steps" if every else "no",
        eval_steps=every,
        report_to=list(spec.tracking.report_to) or "none",
        run_name=spec.tracking.project or job.name,
        use_cpu=choice.device == "cpu",
        bf16=choice.precision == "bf16",
        fp16=choice.precision == "fp16",
        activation_checkpointing=train.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False} if train.gradient_checkpointing else None,
        remove_unused_columns=False,
        train_sampling_strategy="random" if spec.data.shuffle else "sequential",
        disable_tqdm=plain_logs,
        dataloader_num_workers=0,
        label_names=["labels"],
    )
    if spec.resources.world_size > 1:  # launched by torchrun (runner.train.launch): one process per rank
        settings.update(ddp_backend="nccl" if choice.device == "cuda" else "gloo", ddp_find_unused_parameters=False)
        if spec.resources.strategy == "fsdp":  # CUDA only (choose_device refuses it on the CPU)
            settings.update(fsdp="full_shard auto_wrap", fsdp_config={"state_dict_type": "FULL_STATE_DICT"})
    return TrainingArguments(**{**settings, **overrides})


def optimizer_name(optimizer: str, *, fused: bool) -> str:
    """The Trainer's `optim` for the job's optimizer: AdamW as torch's fused kernel when the job
    keeps train.speed.fused_optimizer on (same update, one kernel over every trainable tensor)."""
    return "adamw_torch_fused" if fused and optimizer == "adamw_torch" else optimizer


def train_or_resume(trainer: Any, ctx: RunContext) -> bool:
    """Train from the start or from ctx.resume_from; True when the run was stopped before its last
    step (agreed by every rank: a stop that arrives after the last step lets the run finish)."""
    from runner.train.startup import frozen_heap

    with frozen_heap():  # the collector skips what start-up built (see runner.train.startup)
        trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    return ctx.stop.agreed() and trainer.state.global_step < trainer.state.max_steps


def report_parameters(ctx: RunContext, model: Any, runtime: dict[str, Any], **extra: Any) -> tuple[int, int]:
    """(trainable, total) parameters of `model`, recorded in status.json with the adapter settings."""
    from runner.train.model import count_parameters

    trainable, total = count_parameters(model)
    adapter = ctx.job.spec.adapter.model_dump(include={"method", "r", "alpha", "dropout", "target_modules"})
    ctx.status.update(
        trainable_params=trainable, total_params=total, adapter=adapter, extra={"device": runtime, **extra}
    )
    return trainable, total


def runtime_record(ctx: RunContext, choice: DeviceChoice) -> dict[str, Any]:
    """What this run trains with: device, dtypes, attention kernel, 4-bit settings, processes."""
    import torch

    spec = ctx.job.spec
    record: dict[str, Any] = choice.to_dict()
    if spec.adapter.method == "qlora":
        record["quantization"] = quantization_record(spec.adapter, choice)
    record["processes"] = distributed.world_size()
    if record["processes"] > 1:
        record["strategy"] = spec.resources.strategy
        record["backend"] = "nccl" if choice.device == "cuda" else "gloo"
    record["threads"] = torch.get_num_threads()
    return record


def describe_runtime(runtime: dict[str, Any]) -> str:
    text = (
        f"device {runtime['device']}, weights {runtime['dtype']}, precision {runtime['precision']}, "
        f"attention {runtime['attn_implementation']}"
    )
    quant = runtime.get("quantization")
    if quant:
        text += (
            f", 4-bit {quant['quant_type']}{' double-quant' if quant['double_quant'] else ''} "
            f"(compute {quant['compute_dtype']})"
        )
    if runtime["processes"] > 1:
        text += f", {runtime['processes']} processes ({runtime['strategy']}, {runtime['backend']})"
    return text


def record_runtime(ctx: RunContext, runtime: dict[str, Any]) -> None:
    """Add the runtime choice to the run's manifest.json (written by the pipeline at start)."""
    from runner.outputs.manifest import read_manifest, write_manifest
    from runner.outputs.runs import run_paths

    path = run_paths(ctx.run_dir).manifest
    if not distributed.is_writer() or not path.is_file():
        return
    manifest = read_manifest(path)
    manifest["runtime"] = runtime
    write_manifest(path, manifest)


def compare_replicas(trainer: Any) -> dict[str, Any]:
    """Under DDP every rank must end with the same weights: compare digests of the trainable
    state across ranks (collective) and fail loudly if they differ."""
    world = distributed.world_size()
    if world <= 1:
        return {}
    if getattr(trainer, "is_fsdp_enabled", False):
        return {"processes": world, "sharding": distributed.sharding_report(trainer.model_wrapped)["kind"]}
    digests = distributed.all_gather(distributed.state_digest(distributed.trainable_state(trainer.model)))
    if len(set(digests)) != 1:
        raise RuntimeError(
            f"the {world} processes ended with different weights (digests {digests}); the replicas diverged"
        )
    return {"processes": world, "replica_sha256": digests}


def result_record(ctx: RunContext, **extra: Any) -> dict[str, Any]:
    """runner_adapter.json: which job and run made the result, from which base (every recipe)."""
    return {
        "job": ctx.job.name,
        "run_id": ctx.run_dir.name,
        "method": ctx.job.spec.adapter.method,
        "base_model": ctx.model_info,  # alias, source, revision, file sha256, lineage of the base
        "fine_tuned_from": ctx.model_info.get("alias") or ctx.model_info.get("source"),
        "spec_sha256": ctx.job.sha256,
        **extra,
    }
