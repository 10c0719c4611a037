"""The embedding fine-tuning recipe, read top to bottom.

start -> data (checked before any weights load) -> embedder (backbone + LoRA adapter(s) + pooling
+ optional projection) -> loss -> `EmbeddingTrainer` -> baseline eval -> train (or resume) ->
final eval -> adapter(s) saved complete-or-absent.

The engine is the transformers Trainer, through `EmbeddingTrainer` (runner.train.trainers.embedding),
which reports into the run like every trainer does, so progress, metrics, SIGTERM and resume
behave as in the causal-LM recipe.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from runner.data.embedding import EmbeddingData, prepare_embedding_data
from runner.data.reading import ReadOptions
from runner.fsutil import atomic_dir, atomic_write_json
from runner.spec.loader import LoadedJob
from runner.train import distributed
from runner.train.common import (
    compare_replicas,
    record_runtime,
    report_parameters,
    result_record,
    start_run,
    train_or_resume,
    training_arguments,
)
from runner.train.context import RunContext, TrainOutcome
from runner.train.embedder import Embedder, EmbeddingCollator, Preprocessor, build_embedder
from runner.train.embedding_eval import EmbeddingEvaluator, primary_metric
from runner.train.losses import build_loss
from runner.train.model import ModelSetupError
from runner.train.trainers.base import RunOutputs
from runner.train.trainers.embedding import EmbeddingTrainer, EvalReporter


def train_embedding(ctx: RunContext) -> TrainOutcome:
    started = time.perf_counter()
    spec = ctx.job.spec
    choice, runtime = start_run(ctx)

    # 1. data: read and check every record (and image) before any weights load
    data = prepare_embedding_job_data(ctx.job)
    data_summary = report_data(ctx, data)
    scored = data.train_report.format == "scored-pairs"
    _check_loss_fits_data(ctx.job, scored)

    # 2. embedder (base model, LoRA adapter per task, pooling, projection) and loss
    embedder, preprocess = build_embedder(ctx.model_path, spec, choice)
    if preprocess.padding_free:  # train.speed.padding_free_embeddings, and the model can take it
        runtime["padding_free"] = True
        record_runtime(ctx, runtime)
    info = embedder.info
    if spec.loss.dims and spec.loss.dims[0] > info.dim:
        raise ModelSetupError(f"loss.dims: {spec.loss.dims[0]} exceeds the embedding size {info.dim} of this model")
    trainable, total = report_parameters(ctx, embedder, runtime, embedder=info.to_dict())
    print(
        f"model: {info.family} embedder, {info.pooling} pooling, {info.dim} dims"
        + (f", adapters {', '.join(info.tasks)}" if info.tasks else "")
        + f"; {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%)",
        flush=True,
    )

    # 3. the trainer, wired to the run's outputs; every setting through its constructor
    has_eval = bool(data.eval)
    primary = primary_metric(scored)
    trainer = EmbeddingTrainer(
        model=embedder,
        args=training_arguments(
            ctx.job,
            ctx.run_dir,
            choice,
            has_eval=has_eval,
            plain_logs=ctx.plain_logs,
            ddp_find_unused_parameters=bool(info.tasks),
        ),  # other tasks' adapters sit out a batch
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=EmbeddingCollator(preprocess),
        run=RunOutputs.of(ctx),
        callbacks=[EvalReporter(ctx.status, primary)] if has_eval else None,
        loss=build_loss(spec.loss, spec.loss_type),
        evaluator=build_evaluator(ctx.job, data, preprocess) if has_eval else None,
        no_duplicates=not scored,
    )

    # 4. baseline, training, final evaluation
    before = after = None
    if has_eval and spec.eval.at_start:  # a resumed run's baseline is in its metrics log already
        before = _values(trainer.evaluate()) if ctx.resume_from is None else _logged_baseline(ctx)
    interrupted = train_or_resume(trainer, ctx)
    if has_eval and spec.eval.at_end and not interrupted:
        last = trainer.last_eval
        after = last[1] if last and last[0] == trainer.state.global_step else _values(trainer.evaluate())
    extra = _eval_summary(primary, before, after) if has_eval else {}

    # 5. the final adapter(s), projection, tokenizer/processor, complete-or-absent; rank 0 writes it
    if not interrupted:
        extra.update(compare_replicas(trainer))
        if distributed.is_writer():
            save_embedder(embedder, preprocess, ctx, runtime)
    return TrainOutcome(
        interrupted=interrupted,
        global_step=trainer.state.global_step,
        total_steps=trainer.state.max_steps,
        eval_loss_before=before["loss"] if before else None,
        eval_loss_after=after["loss"] if after else None,
        trainable_params=trainable,
        total_params=total,
        device=choice,
        data=data_summary,
        seconds=time.perf_counter() - started,
        extra=extra,
    )


def prepare_embedding_job_data(job: LoadedJob) -> EmbeddingData:
    spec = job.spec
    data = spec.data
    return prepare_embedding_data(
        [job.resolve_data(p) for p in data.train],
        eval_files=[job.resolve_data(p) for p in data.eval],
        eval_fraction=data.eval_fraction,
        seed=spec.train.seed,
        format=data.format,
        fields=dict(data.fields.items()),
        image_root=job.resolve_path(data.image_root) if data.image_root else None,
        on_bad_record=data.on_bad_record,
        tasks=list(spec.loss.tasks) if spec.loss_type == "multi-task" else None,
        max_records=data.max_records,
        eval_max_records=spec.eval.max_records,
        read_options=ReadOptions(text_unit=data.text_unit, csv_header=data.csv_header),
    )


def report_data(ctx: RunContext, data: EmbeddingData) -> dict[str, Any]:
    """Print what the data gave (and the first skipped records), record it in status.json."""
    report = data.train_report
    summary = data.summary()
    print(
        f"data: {len(data.train)} train examples ({report.format}: {report.format_reason}), "
        f"{len(data.eval)} eval examples, {summary['bad_records_skipped']} bad records skipped",
        flush=True,
    )
    for bad in [*report.bad_records, *(data.eval_report.bad_records if data.eval_report else [])][:20]:
        print(f"  skipped {bad}", file=sys.stderr)
    ctx.status.update(extra={"data": summary})
    return summary


def build_evaluator(job: LoadedJob, data: EmbeddingData, preprocess: Preprocessor) -> EmbeddingEvaluator:
    """Retrieval (or Spearman) metrics and the loss on the held-out examples."""
    spec = job.spec
    return EmbeddingEvaluator(
        data.eval,
        preprocess,
        build_loss(spec.loss, spec.loss_type, gather=False),
        batch_size=spec.eval.batch_size or spec.train.batch_size,
        recall_at=spec.eval.recall_at,
        dims=spec.loss.dims if spec.loss_type == "matryoshka" else (),
    )


def _eval_summary(primary: str, before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"eval_metric": primary}
    if before is not None:
        extra["eval_before"] = before
    if after is not None:
        extra["eval_after"] = after
    if before is not None and after is not None:
        print(f"eval {primary}: {before[primary]:.4f} -> {after[primary]:.4f} (before -> after training)", flush=True)
    return extra


def _check_loss_fits_data(job: LoadedJob, scored: bool) -> None:
    """CoSENT needs scored pairs and scored pairs need CoSENT (the format may have been detected)."""
    spec = job.spec
    if spec.loss_type == "multi-task":
        kinds: set[str] = {task.type for task in spec.loss.tasks.values()}
    else:
        kinds = {spec.loss.base if spec.loss_type == "matryoshka" else spec.loss_type}
    if scored and kinds != {"cosent"}:
        raise ModelSetupError(
            'the data are scored pairs: train them with loss.type = "cosent" (or matryoshka / multi-task with cosent)'
        )
    if not scored and "cosent" in kinds:
        raise ModelSetupError("cosent needs scored pairs (sentence1, sentence2, score); this data has none")


def _logged_baseline(ctx: RunContext) -> dict[str, float] | None:
    logged = [r for r in ctx.metrics.read() if r.get("step") == 0 and "eval_loss" in r]
    return _values({k: v for k, v in logged[-1].items() if k.startswith("eval_")}) if logged else None


def _values(metrics: dict[str, float]) -> dict[str, float]:
    return {k.removeprefix("eval_"): v for k, v in metrics.items() if k != "eval_runtime"}


def save_embedder(embedder: Embedder, preprocess: Preprocessor, ctx: RunContext, runtime: dict[str, Any]) -> Path:
    """adapter/ holds the adapter(s) (or full model), projection, tokenizer/processor and how to rebuild it."""
    spec = ctx.job.spec
    target = ctx.run_dir / "adapter"
    with atomic_dir(target, replace=True) as tmp:
        embedder.save_pretrained(tmp)
        preprocess.save_pretrained(tmp)
        atomic_write_json(
            tmp / "runner_adapter.json",
            result_record(
                ctx,
                kind=spec.model.kind,
                embedder=embedder.info.to_dict(),
                loss=spec.loss_type,
                matryoshka_dims=list(spec.loss.dims),
                runtime=runtime,
            ),
        )
    return target
