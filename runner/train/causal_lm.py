"""The causal-LM fine-tuning recipe (supervised fine-tuning on responses), read top to bottom.

start -> tokenizer -> data -> model + adapter -> `CausalTrainer` -> baseline eval -> train (or
resume) -> final eval -> adapter saved complete-or-absent. Everything the recipe writes goes
through runner.outputs; everything it knows about the job comes from the typed spec, the speed
switches included ([train.speed]: packed attention, the positions-only loss, the token budget,
the tokenisation cache, the folded LoRA forward).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from runner.data.collate import make_collator
from runner.data.pipeline import PreparedData, prepare_data
from runner.fsutil import atomic_dir, atomic_write_json
from runner.spec.loader import LoadedJob
from runner.train import distributed
from runner.train.attention import PACKED_SDPA, use_packed_sdpa
from runner.train.common import (
    compare_replicas,
    load_tokenizer,
    record_runtime,
    report_parameters,
    result_record,
    start_run,
    train_or_resume,
    training_arguments,
)
from runner.train.context import RunContext, TrainOutcome
from runner.train.lora_fold import fold_applies, fold_lora_layers
from runner.train.model import DeviceChoice, apply_adapter, load_causal_lm, quantization_record
from runner.train.trainers.base import RunOutputs
from runner.train.trainers.causal import CausalTrainer


def train_causal_lm(ctx: RunContext) -> TrainOutcome:
    started = time.perf_counter()
    spec = ctx.job.spec
    choice, runtime = start_run(ctx)

    # 1. data: read, check, tokenise (bad records are reported before any weights load)
    tokenizer = load_tokenizer(ctx.model_path, spec.model.trust_remote_code)
    data = prepare_causal_data(ctx.job, tokenizer)
    data_summary = report_data(ctx, data)

    # 2. model and adapter
    model, trainable, total = build_model(ctx, choice, runtime)

    # 3. the trainer, wired to the run's outputs; every setting through its constructor
    has_eval = bool(data.eval)
    baseline = has_eval and spec.eval.at_start and ctx.resume_from is None
    # Under DDP the baseline runs inside train() (eval_on_start): evaluating before train() makes
    # accelerate mark the model prepared, and train() then skips the DDP wrap -- the ranks would
    # train without syncing gradients (measured: transformers 5.23 + accelerate 1.15).
    baseline_in_train = baseline and distributed.world_size() > 1
    speed = spec.train.speed
    trainer = CausalTrainer(
        model=model,
        args=training_arguments(
            ctx.job,
            ctx.run_dir,
            choice,
            has_eval=has_eval,
            plain_logs=ctx.plain_logs,
            **({"eval_on_start": True} if baseline_in_train else {}),
        ),
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=make_collator(tokenizer, packing=spec.data.packing),
        processing_class=tokenizer,
        run=RunOutputs.of(ctx),
        loss_positions_only=speed.loss_positions_only,
        # packed batches in parts of at most the budget; gradient checkpointing bounds memory already
        token_budget=speed.token_budget if spec.data.packing and not spec.train.gradient_checkpointing else None,
        require_sharded=spec.resources.world_size > 1 and spec.resources.strategy == "fsdp",
    )

    # 4. baseline, training, final evaluation
    eval_before = evaluate(trainer, ctx, "before training") if baseline and not baseline_in_train else None
    interrupted = train_or_resume(trainer, ctx)
    if baseline_in_train:
        eval_before = logged_baseline(trainer, ctx)
    eval_after = None
    if has_eval and spec.eval.at_end and not interrupted:
        eval_after = final_evaluation(trainer, ctx)

    # 5. the final adapter (or full model) with its tokenizer, complete-or-absent; rank 0 writes it
    extra: dict[str, Any] = {}
    if not interrupted:
        extra = compare_replicas(trainer)
        state_dict = None
        if getattr(trainer, "is_fsdp_enabled", False):  # gathering a sharded model is collective
            state_dict = trainer.accelerator.get_state_dict(trainer.model_wrapped)
        if distributed.is_writer():
            save_final(
                trainer.model,
                tokenizer,
                ctx,
                quantization=quantization_record(spec.adapter, choice),
                runtime=runtime,
                state_dict=state_dict,
            )
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


def prepare_causal_data(
    job: LoadedJob, tokenizer: Any, *, progress: bool | None = None, cache: bool = True
) -> PreparedData:
    """Tokenised train/eval examples; from the content-addressed cache (runner.data.cache) when
    the same data, tokenizer and settings were tokenised before, unless `cache` is False or the
    job turns the cache off (train.speed.data_cache)."""
    from runner.data.cache import cached

    spec = job.spec
    data = spec.data
    train_files = [job.resolve_data(p) for p in data.train]
    eval_files = [job.resolve_data(p) for p in data.eval]
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
        tools=data.tools,
        reasoning=data.reasoning,
        images=data.images,
        roles={role: list(names) for role, names in data.roles.items()} or None,
        text_unit=data.text_unit,
        csv_header=data.csv_header,
    )

    def build() -> tuple[Any, Any, Any, Any]:
        done = prepare_data(train_files, tokenizer, eval_files=eval_files, progress=progress, **settings)
        return done.train, done.eval, done.train_report, done.eval_report

    key_settings = {**settings, "train_files": len(train_files), "eval_files": len(eval_files)}
    (train, evaluation, train_report, eval_report), _hit = cached(
        [*train_files, *eval_files], tokenizer, key_settings, build, enabled=cache and spec.train.speed.data_cache
    )
    return PreparedData(train, evaluation, train_report, eval_report)


def report_data(ctx: RunContext, data: PreparedData) -> dict[str, Any]:
    """Print what the data gave (and the first skipped records), record it in status.json."""
    report = data.train_report
    print(
        f"data: {report.records_kept} train examples ({report.format}: {report.format_reason}), "
        f"{len(data.eval)} eval examples, {len(report.bad_records)} bad records skipped",
        flush=True,
    )
    for bad in report.bad_records[:20]:
        print(f"  skipped {bad}", file=sys.stderr)
    for warning in report.warnings:
        print(f"data warning: {warning}", flush=True)
    summary = {
        "format": report.format,
        "format_reason": report.format_reason,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "bad_records_skipped": len(report.bad_records) + (len(data.eval_report.bad_records) if data.eval_report else 0),
        "truncated": report.truncated,
        "trainable_tokens": report.trainable_tokens,
    }
    if report.tools:
        summary["tools"] = dict(report.tools)  # how tool definitions reached the prompt -> records
    if report.warnings:
        summary["warnings"] = list(report.warnings)
    ctx.status.update(extra={"data": summary})
    return summary


def build_model(ctx: RunContext, choice: DeviceChoice, runtime: dict[str, Any]) -> tuple[Any, int, int]:
    """The base model with the job's adapter, and its (trainable, total) parameters; packed batches
    attend per sequence (train.speed.packed_attention) and LoRA layers fold their adapter into the
    weight (train.speed.lora_fold) when the job keeps those on (recorded in the runtime)."""
    spec = ctx.job.spec
    model = load_causal_lm(ctx.model_path, spec.model, spec.adapter, choice)
    # packed batches: attention per sequence, not over a block-diagonal mask of the whole row
    if spec.data.packing and spec.train.speed.packed_attention and use_packed_sdpa(model):
        runtime["packed_attention"] = PACKED_SDPA
        record_runtime(ctx, runtime)
    model = apply_adapter(model, spec.adapter, gradient_checkpointing=spec.train.gradient_checkpointing)
    # LoRA with dropout 0: one GEMM per adapted layer, the adapter folded into the weight
    sharded = spec.resources.world_size > 1 and spec.resources.strategy == "fsdp"  # FSDP owns the weights
    if spec.train.speed.lora_fold and fold_applies(spec.adapter.method, spec.adapter.dropout) and not sharded:
        runtime["lora_fold"] = fold_lora_layers(model)
        record_runtime(ctx, runtime)
    adapter = spec.adapter.model_dump(include={"method", "r", "alpha", "dropout", "target_modules"})
    trainable, total = report_parameters(ctx, model, runtime)
    print(
        f"model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%), adapter {adapter}",
        flush=True,
    )
    return model, trainable, total


def evaluate(trainer: Any, ctx: RunContext, when: str) -> float:
    metrics = trainer.evaluate()
    loss = float(metrics["eval_loss"])
    perplexity = math.exp(loss) if loss < 50 else float("inf")
    print(f"held-out loss {when}: {loss:.4f} (perplexity {perplexity:.2f})", flush=True)
    ctx.status.update(extra={"eval_loss_" + when.split()[0]: loss})
    return loss


def logged_baseline(trainer: Any, ctx: RunContext) -> float | None:
    """The baseline evaluated inside train() (eval_on_start, under DDP), from the Trainer's log."""
    before = next(
        (float(h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == 0), None
    )
    if before is not None:
        print(f"held-out loss before training: {before:.4f}", flush=True)
        ctx.status.update(extra={"eval_loss_before": before})
    return before


def final_evaluation(trainer: Any, ctx: RunContext) -> float:
    """The held-out loss after training: the evaluation at the last step if there was one, else a new one."""
    last = trainer.state.log_history[-2:] if trainer.state.log_history else []
    evaluated_now = [h["eval_loss"] for h in last if "eval_loss" in h and h.get("step") == trainer.state.global_step]
    if not evaluated_now:
        return evaluate(trainer, ctx, "after training")
    print(f"held-out loss after training: {evaluated_now[-1]:.4f}", flush=True)
    return evaluated_now[-1]


def save_final(
    model: Any,
    tokenizer: Any,
    ctx: RunContext,
    *,
    quantization: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    state_dict: dict[str, Any] | None = None,
) -> Path:
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
        atomic_write_json(
            tmp / "runner_adapter.json",
            result_record(
                ctx,
                **({"quantization": quantization} if quantization else {}),
                **({"runtime": runtime} if runtime else {}),
            ),
        )
    return target
