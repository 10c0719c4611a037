"""The causal-LM fine-tuning recipe: one function, read top to bottom.

tokenizer -> data -> model + adapter -> Trainer -> baseline eval -> train (or resume) -> final
eval -> adapter saved complete-or-absent. Everything the recipe writes goes through
runner.outputs; everything it knows about the job comes from the typed spec.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from runner.data.collate import make_collator
from runner.data.pipeline import PreparedData, prepare_data
from runner.fsutil import atomic_dir, atomic_write_json
from runner.spec.loader import LoadedJob
from runner.train.context import RunContext, TrainOutcome
from runner.train import distributed
from runner.train.attention import PACKED_SDPA, use_packed_sdpa
from runner.train.hooks import STAGING, RunTrainer, connect_outputs
from runner.train.model import (
    DeviceChoice,
    ModelSetupError,
    apply_adapter,
    choose_device,
    count_parameters,
    load_causal_lm,
    quantization_record,
)


def load_tokenizer(model_path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_causal_data(job: LoadedJob, tokenizer: Any, *, progress: bool | None = None,
                        cache: bool = True) -> PreparedData:
    """Tokenised train/eval examples; from the content-addressed cache (runner.data.cache) when
    the same data, tokenizer and settings were tokenised before."""
    from runner.data.cache import cached

    spec = job.spec
    data = spec.data
    train_files = [job.resolve_path(p) for p in data.train]
    eval_files = [job.resolve_path(p) for p in data.eval]
    settings: dict[str, Any] = dict(
        max_length=data.max_length,
        eval_fraction=data.eval_fraction,
        seed=spec.train.seed,
        format=data.format,
        fields=dict(data.fields) or None,
        domain_field=data.domain_field,
        domain_format=data.domain_format,
        train_on_prompt=data.train_on_prompt,
        on_bad_record=data.on_bad_record,
        max_records=data.max_records,
        eval_max_records=spec.eval.max_records,
    )

    def build() -> tuple[Any, Any, Any, Any]:
        done = prepare_data(train_files, tokenizer, eval_files=eval_files, progress=progress, **settings)
        return done.train, done.eval, done.train_report, done.eval_report

    key_settings = {**settings, "train_files": len(train_files), "eval_files": len(eval_files)}
    (train, evaluation, train_report, eval_report), _hit = cached(
        [*train_files, *eval_files], tokenizer, key_settings, build, enabled=cache)
    return PreparedData(train, evaluation, train_report, eval_report)


def switched_on(variable: str) -> bool:
    """Speed features are on unless their environment variable says 0/false/off: a way out should
    one misbehave with some model, and how bench/ measures each one's effect."""
    import os

    return os.environ.get(variable, "1").strip().lower() not in ("0", "false", "no", "off")


DEFAULT_TOKEN_BUDGET = 1024


def token_budget() -> int | None:
    """Tokens per forward/backward pass of a packed batch (RunTrainer._micro_batches): peak memory
    follows this instead of the batch. RUNNER_TOKEN_BUDGET overrides it; 0 turns the cut off."""
    import os

    raw = os.environ.get("RUNNER_TOKEN_BUDGET", "").strip()
    value = int(raw) if raw.isdigit() else DEFAULT_TOKEN_BUDGET
    return value or None


TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


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
        optim=train.optimizer,
        num_train_epochs=train.epochs,
        max_steps=train.max_steps or -1,
        seed=train.seed,
        data_seed=train.seed,
        logging_steps=train.log_every,
        save_strategy="steps",
        save_steps=train.save_every,
        save_total_limit=None,  # RunTrainer prunes only after a new checkpoint is complete
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


def start_run(ctx: RunContext) -> tuple[DeviceChoice, dict[str, Any]]:
    """Every recipe's first steps: threads, seed, device choice and trackers checked, the runtime
    printed and recorded in the manifest."""
    from transformers import set_seed

    spec = ctx.job.spec
    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    set_seed(spec.train.seed)
    choice = choose_device(spec.model, spec.resources, spec.adapter)
    check_trackers(list(spec.tracking.report_to))
    runtime = runtime_record(ctx, choice)
    print(describe_runtime(runtime), flush=True)
    record_runtime(ctx, runtime)
    return choice, runtime


def train_causal_lm(ctx: RunContext) -> TrainOutcome:
    started = time.perf_counter()
    spec = ctx.job.spec
    choice, runtime = start_run(ctx)

    # 1. data: read, check, tokenise (bad records are reported before any weights load)
    tokenizer = load_tokenizer(ctx.model_path, spec.model.trust_remote_code)
    data = prepare_causal_data(ctx.job, tokenizer)
    report = data.train_report
    print(f"data: {report.records_kept} train examples ({report.format}: {report.format_reason}), "
          f"{len(data.eval)} eval examples, {len(report.bad_records)} bad records skipped", flush=True)
    for bad in report.bad_records[:20]:
        print(f"  skipped {bad}", file=sys.stderr)
    data_summary = {
        "format": report.format,
        "format_reason": report.format_reason,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "bad_records_skipped": len(report.bad_records) + (len(data.eval_report.bad_records) if data.eval_report else 0),
        "truncated": report.truncated,
        "trainable_tokens": report.trainable_tokens,
    }
    ctx.status.update(extra={"data": data_summary})

    # 2. model and adapter
    model = load_causal_lm(ctx.model_path, spec.model, spec.adapter, choice)
    # packed batches: attention per sequence, not over a block-diagonal mask of the whole row
    if spec.data.packing and switched_on("RUNNER_PACKED_ATTENTION") and use_packed_sdpa(model):
        runtime["packed_attention"] = PACKED_SDPA
        record_runtime(ctx, runtime)
    model = apply_adapter(model, spec.adapter, gradient_checkpointing=spec.train.gradient_checkpointing)
    trainable, total = count_parameters(model)
    adapter_settings = spec.adapter.model_dump(include={"method", "r", "alpha", "dropout", "target_modules"})
    print(f"model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%), "
          f"adapter {adapter_settings}", flush=True)
    ctx.status.update(trainable_params=trainable, total_params=total, adapter=adapter_settings,
                      extra={"device": runtime})

    # 3. the Trainer, wired to the run's outputs
    has_eval = bool(data.eval)
    baseline = has_eval and spec.eval.at_start and ctx.resume_from is None
    # Under DDP the baseline runs inside train() (eval_on_start): evaluating before train() makes
    # accelerate mark the model prepared, and train() then skips the DDP wrap -- the ranks would
    # train without syncing gradients (measured: transformers 5.23 + accelerate 1.15).
    baseline_in_train = baseline and distributed.world_size() > 1
    args = training_arguments(ctx.job, ctx.run_dir, choice, has_eval=has_eval, plain_logs=ctx.plain_logs,
                              **({"eval_on_start": True} if baseline_in_train else {}))
    trainer = RunTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=make_collator(tokenizer, packing=spec.data.packing),
        processing_class=tokenizer,
    )
    connect_outputs(trainer, ctx)
    # the LM head only where a label counts (RunTrainer.compute_loss)
    trainer.loss_positions_only = switched_on("RUNNER_LOSS_POSITIONS_ONLY")
    if spec.data.packing and not spec.train.gradient_checkpointing:  # checkpointing bounds memory already
        trainer.token_budget = token_budget()
    trainer.require_sharded = spec.resources.world_size > 1 and spec.resources.strategy == "fsdp"

    # 4. baseline, training, final evaluation
    eval_before = eval_after = None
    if baseline and not baseline_in_train:
        eval_before = _evaluate(trainer, ctx, "before training")
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    if baseline_in_train:
        eval_before = next((float(h["eval_loss"]) for h in trainer.state.log_history
                            if "eval_loss" in h and h.get("step") == 0), None)
        if eval_before is not None:
            print(f"held-out loss before training: {eval_before:.4f}", flush=True)
            ctx.status.update(extra={"eval_loss_before": eval_before})
    # agreed by every rank (a stop that arrives after the last step lets the run finish)
    interrupted = ctx.stop.agreed() and trainer.state.global_step < trainer.state.max_steps
    if has_eval and spec.eval.at_end and not interrupted:
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        evaluated_now = [h["eval_loss"] for h in last if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        eval_after = evaluated_now[-1] if evaluated_now else _evaluate(trainer, ctx, "after training")
        if evaluated_now:
            print(f"held-out loss after training: {eval_after:.4f}", flush=True)

    # 5. the final adapter (or full model) with its tokenizer, complete-or-absent; rank 0 writes it
    extra: dict[str, Any] = {}
    if not interrupted:
        extra = compare_replicas(trainer)
        state_dict = None
        if getattr(trainer, "is_fsdp_enabled", False):  # gathering a sharded model is collective
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if distributed.is_writer():
            save_final(trainer.model, tokenizer, ctx, quantization=quantization_record(spec.adapter, choice),
                       runtime=runtime, state_dict=state_dict)
    return TrainOutcome(
        interrupted=interrupted,
        global_step=trainer.state.global_step,
        total_steps=trainer.state.max_steps,
        eval_loss_before=eval_before,
        eval_loss_after=eval_after,
        trainable_params=trainable,
        total_params=total,
        device=choice,
        data=data_summary,
        seconds=time.perf_counter() - started,
        extra=extra,
    )


train_causal_lm.supports_distributed = True  # type: ignore[attr-defined]  # rank-aware: runs under torchrun


def runtime_record(ctx: RunContext, choice: DeviceChoice) -> dict[str, Any]:
    """What this run trains with: device, dtypes, attention kernel, 4-bit settings, processes."""
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
    text = (f"device {runtime['device']}, weights {runtime['dtype']}, precision {runtime['precision']}, "
            f"attention {runtime['attn_implementation']}")
    quant = runtime.get("quantization")
    if quant:
        text += (f", 4-bit {quant['quant_type']}{' double-quant' if quant['double_quant'] else ''} "
                 f"(compute {quant['compute_dtype']})")
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
        raise RuntimeError(f"the {world} processes ended with different weights (digests {digests}); "
                           "the replicas diverged")
    return {"processes": world, "replica_sha256": digests}


def _evaluate(trainer: Any, ctx: RunContext, when: str) -> float:
    metrics = trainer.evaluate()
    loss = float(metrics["eval_loss"])
    perplexity = math.exp(loss) if loss < 50 else float("inf")
    print(f"held-out loss {when}: {loss:.4f} (perplexity {perplexity:.2f})", flush=True)
    ctx.status.update(extra={"eval_loss_" + when.split()[0]: loss})
    return loss


def save_final(model: Any, tokenizer: Any, ctx: RunContext, *, quantization: dict[str, Any] | None = None,
               runtime: dict[str, Any] | None = None, state_dict: dict[str, Any] | None = None) -> Path:
    """adapter/ holds the adapter (or the full model), the tokenizer and where the base came from.

    A QLoRA adapter also records its 4-bit settings (`quantization`), so it can be put back on a
    freshly quantised base (runner.train.model.load_for_inference).
    """
    target = ctx.run_dir / "adapter"
    with atomic_dir(target, replace=True) as tmp:
        if state_dict is not None:
            model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state_dict)
        else:
            model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "runner_adapter.json", result_record(
            ctx, **({"quantization": quantization} if quantization else {}), **({"runtime": runtime} if runtime else {}),
        ))
    return target


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
