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
from runner.train.hooks import STAGING, ProgressReporter, RunTrainer, TokenCounter
from runner.train.model import ModelSetupError, apply_adapter, choose_device, count_parameters, load_causal_lm


def load_tokenizer(model_path: Path, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare_causal_data(job: LoadedJob, tokenizer: Any, *, progress: bool | None = None) -> PreparedData:
    spec = job.spec
    data = spec.data
    train_files = [job.resolve_path(p) for p in data.train]
    eval_files = [job.resolve_path(p) for p in data.eval]
    return prepare_data(
        train_files,
        tokenizer,
        max_length=data.max_length,
        eval_files=eval_files,
        eval_fraction=data.eval_fraction,
        seed=spec.train.seed,
        format=data.format,
        columns=dict(data.fields) or None,
        domain_field=data.domain_field,
        domain_format=data.domain_format,
        train_on_prompt=data.train_on_prompt,
        on_bad_record=data.on_bad_record,
        progress=progress,
    )


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


def training_arguments(job: LoadedJob, run_dir: Path, choice: DeviceChoice, *, has_eval: bool, plain_logs: bool) -> Any:
    """The spec's [train]/[eval]/[tracking] settings in the Trainer's vocabulary."""
    from transformers import TrainingArguments

    spec = job.spec
    train, evaluation = spec.train, spec.eval
    every = evaluation.every if (has_eval and evaluation.every) else None
    return TrainingArguments(
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


def train_causal_lm(ctx: RunContext) -> TrainOutcome:
    from transformers import PrinterCallback, set_seed

    started = time.perf_counter()
    spec = ctx.job.spec
    if spec.resources.threads:
        torch.set_num_threads(spec.resources.threads)
    set_seed(spec.train.seed)
    choice = choose_device(spec.model, spec.resources)
    check_trackers(list(spec.tracking.report_to))
    print(f"device {choice.device}, weights {choice.dtype}, precision {choice.precision}, "
          f"attention {choice.attn_implementation}", flush=True)

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
    model = apply_adapter(model, spec.adapter, gradient_checkpointing=spec.train.gradient_checkpointing)
    trainable, total = count_parameters(model)
    adapter_settings = spec.adapter.model_dump(include={"method", "r", "alpha", "dropout", "target_modules"})
    print(f"model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%), "
          f"adapter {adapter_settings}", flush=True)
    ctx.status.update(trainable_params=trainable, total_params=total, adapter=adapter_settings,
                      extra={"device": choice.to_dict()})

    # 3. the Trainer, wired to the run's outputs
    has_eval = bool(data.eval)
    args = training_arguments(ctx.job, ctx.run_dir, choice, has_eval=has_eval, plain_logs=ctx.plain_logs)
    counter = TokenCounter()
    trainer = RunTrainer(
        model=model,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=make_collator(tokenizer, packing=spec.data.packing),
        processing_class=tokenizer,
        callbacks=[ProgressReporter(ctx.status, ctx.metrics, ctx.stop, counter, ctx.plain_logs)],
    )
    if ctx.plain_logs:  # ProgressReporter prints one line per log; Trainer's printer would repeat it
        trainer.remove_callback(PrinterCallback)
    trainer.checkpoints_dir = ctx.run_dir / "checkpoints"
    trainer.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    trainer.keep_checkpoints = spec.train.keep_checkpoints
    trainer.token_counter = counter

    # 4. baseline, training, final evaluation
    eval_before = eval_after = None
    if has_eval and spec.eval.at_start and ctx.resume_from is None:
        eval_before = _evaluate(trainer, ctx, "before training")
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    interrupted = ctx.stop.requested
    if has_eval and spec.eval.at_end and not interrupted:
        last = trainer.state.log_history[-2:] if trainer.state.log_history else []
        evaluated_now = [h["eval_loss"] for h in last if "eval_loss" in h and h.get("step") == trainer.state.global_step]
        eval_after = evaluated_now[-1] if evaluated_now else _evaluate(trainer, ctx, "after training")
        if evaluated_now:
            print(f"held-out loss after training: {eval_after:.4f}", flush=True)

    # 5. the final adapter (or full model) with its tokenizer, complete-or-absent
    if not interrupted:
        save_final(trainer.model, tokenizer, ctx)
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
    )


def _evaluate(trainer: Any, ctx: RunContext, when: str) -> float:
    metrics = trainer.evaluate()
    loss = float(metrics["eval_loss"])
    perplexity = math.exp(loss) if loss < 50 else float("inf")
    print(f"held-out loss {when}: {loss:.4f} (perplexity {perplexity:.2f})", flush=True)
    ctx.status.update(extra={"eval_loss_" + when.split()[0]: loss})
    return loss


def save_final(model: Any, tokenizer: Any, ctx: RunContext) -> Path:
    """adapter/ holds the adapter (or the full model), the tokenizer and where the base came from."""
    target = ctx.run_dir / "adapter"
    with atomic_dir(target, replace=True) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        tokenizer.save_pretrained(str(tmp))
        atomic_write_json(tmp / "runner_adapter.json", {
            "job": ctx.job.name,
            "method": ctx.job.spec.adapter.method,
            "base_model": ctx.model_info,
            "spec_sha256": ctx.job.sha256,
        })
    return target
