"""The embedding fine-tuning recipe: one function, read top to bottom.

data (checked before any weights load) -> embedder (backbone + LoRA adapter(s) + pooling +
optional projection) -> loss -> Trainer -> baseline eval -> train (or resume) -> final eval ->
adapter(s) saved complete-or-absent.

The engine is the transformers Trainer, through `RunTrainer` (complete-or-absent checkpoints)
and the same `connect_outputs` wiring as the causal-LM recipe, so progress, metrics, SIGTERM
and resume behave the same. `EmbeddingTrainer` changes four things: the loss (`compute_loss`),
the batches (one task each, no duplicate texts: `EmbeddingBatchSampler`), evaluation (retrieval
or Spearman metrics instead of a prediction loop), and what a checkpoint holds (only the trained
weights: adapters and projection).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from runner.data.embedding import EmbeddingBatchSampler, EmbeddingData, prepare_embedding_data
from runner.fsutil import atomic_dir, atomic_write_json
from runner.outputs.status import StatusFile
from runner.spec.loader import LoadedJob
from runner.train import distributed
from runner.train.causal_lm import compare_replicas, result_record, start_run, training_arguments
from runner.train.context import RunContext, TrainOutcome
from runner.train.embedder import Embedder, EmbeddingCollator, EmbeddingTokenCounter, Preprocessor, build_embedder
from runner.train.embedding_eval import EmbeddingEvaluator, primary_metric
from runner.train.hooks import RunTrainer, connect_outputs
from runner.train.losses import build_loss
from runner.train.model import ModelSetupError, count_parameters

TRAINED_WEIGHTS = "embedder.safetensors"  # a checkpoint's model part: every trained weight, nothing else


class EmbeddingTrainer(RunTrainer):
    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(self, *args: Any, loss: torch.nn.Module, evaluator: EmbeddingEvaluator | None,
                 no_duplicates: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.embedding_loss = loss
        self.evaluator = evaluator
        self.no_duplicates = no_duplicates
        self.last_eval: tuple[int, dict[str, float]] | None = None

    def get_train_dataloader(self) -> DataLoader:
        sampler = EmbeddingBatchSampler(
            self.train_dataset, self.args.per_device_train_batch_size, world_size=self.args.world_size,
            seed=self.args.seed, shuffle=self.args.train_sampling_strategy != "sequential",
            no_duplicates=self.no_duplicates,
        )
        loader = DataLoader(self.train_dataset, batch_sampler=sampler, collate_fn=self.data_collator,
                            num_workers=self.args.dataloader_num_workers)
        return self.accelerator.prepare(loader)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        task = inputs.get("task")
        if task is not None:  # multi-task: this batch's LoRA adapter and loss
            self.accelerator.unwrap_model(model).set_task(task)
        sides = {side: inputs[side] for side in ("query", "positive", "negative") if side in inputs}
        embeddings = model(**sides)
        loss = self.embedding_loss(
            embeddings["query"], embeddings["positive"], embeddings.get("negative"), inputs.get("scores"),
            **({"task": task} if task is not None else {}),
        )
        return (loss, embeddings) if return_outputs else loss

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Retrieval / Spearman metrics and the held-out loss, logged like Trainer's own evaluation."""
        assert self.evaluator is not None
        started = time.perf_counter()
        values = self.evaluator(self.accelerator.unwrap_model(self.model))
        metrics = {f"{metric_key_prefix}_{name}": value for name, value in values.items()}
        metrics[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 3)
        self.last_eval = (self.state.global_step, values)
        self.log(dict(metrics))  # Trainer.log adds "epoch" to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _save(self, output_dir: str | None = None, state_dict: Any = None) -> None:
        """A checkpoint holds the trained weights only (adapters, projection), not the frozen base."""
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        folder = output_dir or self.args.output_dir
        os.makedirs(folder, exist_ok=True)
        save_file(self.accelerator.unwrap_model(self.model).trainable_state_dict(), os.path.join(folder, TRAINED_WEIGHTS))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        from safetensors.torch import load_file

        embedder = self.accelerator.unwrap_model(model if model is not None else self.model)
        embedder.load_trainable_state_dict(load_file(os.path.join(resume_from_checkpoint, TRAINED_WEIGHTS)))


class EvalReporter(TrainerCallback):
    """Prints each evaluation and keeps the latest metrics in status.json (extra.eval)."""

    def __init__(self, status: StatusFile, primary: str) -> None:
        self.status, self.primary = status, primary

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not metrics or not state.is_world_process_zero:
            return
        values = {k.removeprefix("eval_"): round(v, 6) for k, v in metrics.items() if k != "eval_runtime"}
        shown = [self.primary, "loss", *sorted(k for k in values if k not in (self.primary, "loss") and "_" not in k)]
        print(f"eval at step {state.global_step}: " + " ".join(f"{k}={values[k]:.4f}" for k in shown if k in values),
              flush=True)
        self.status.update(extra={"eval": {"step": state.global_step, **values}})


def prepare_embedding_job_data(job: LoadedJob) -> EmbeddingData:
    spec = job.spec
    data = spec.data
    return prepare_embedding_data(
        [job.resolve_path(p) for p in data.train],
        eval_files=[job.resolve_path(p) for p in data.eval],
        eval_fraction=data.eval_fraction,
        seed=spec.train.seed,
        format=data.format,
        fields=dict(data.fields),
        image_root=job.resolve_path(data.image_root) if data.image_root else None,
        on_bad_record=data.on_bad_record,
        tasks=list(spec.loss.tasks) if spec.loss_type == "multi-task" else None,
        max_records=data.max_records,
        eval_max_records=spec.eval.max_records,
    )


def train_embedding(ctx: RunContext) -> TrainOutcome:
    started = time.perf_counter()
    spec = ctx.job.spec
    choice, runtime = start_run(ctx)

    # 1. data: read and check every record (and image) before any weights load
    data = prepare_embedding_job_data(ctx.job)
    report = data.train_report
    data_summary = data.summary()
    print(f"data: {len(data.train)} train examples ({report.format}: {report.format_reason}), "
          f"{len(data.eval)} eval examples, {data_summary['bad_records_skipped']} bad records skipped", flush=True)
    for bad in [*report.bad_records, *(data.eval_report.bad_records if data.eval_report else [])][:20]:
        print(f"  skipped {bad}", file=sys.stderr)
    ctx.status.update(extra={"data": data_summary})
    scored = report.format == "scored-pairs"
    _check_loss_fits_data(ctx.job, scored)

    # 2. embedder (base model, LoRA adapter per task, pooling, projection) and loss
    embedder, preprocess = build_embedder(ctx.model_path, spec, choice)
    info = embedder.info
    if spec.loss.dims and spec.loss.dims[0] > info.dim:
        raise ModelSetupError(f"loss.dims: {spec.loss.dims[0]} exceeds the embedding size {info.dim} of this model")
    loss = build_loss(spec.loss, spec.loss_type)
    trainable, total = count_parameters(embedder)
    adapter_settings = spec.adapter.model_dump(include={"method", "r", "alpha", "dropout", "target_modules"})
    print(f"model: {info.family} embedder, {info.pooling} pooling, {info.dim} dims"
          + (f", adapters {', '.join(info.tasks)}" if info.tasks else "")
          + f"; {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%)", flush=True)
    ctx.status.update(trainable_params=trainable, total_params=total, adapter=adapter_settings,
                      extra={"device": runtime, "embedder": info.to_dict()})

    # 3. the Trainer, wired to the run's outputs like the causal-LM recipe
    has_eval = bool(data.eval)
    args = training_arguments(ctx.job, ctx.run_dir, choice, has_eval=has_eval, plain_logs=ctx.plain_logs,
                              ddp_find_unused_parameters=bool(info.tasks))  # other tasks' adapters sit out a batch
    evaluator = None
    if has_eval:
        evaluator = EmbeddingEvaluator(
            data.eval, preprocess, build_loss(spec.loss, spec.loss_type, gather=False),
            batch_size=spec.eval.batch_size or spec.train.batch_size, recall_at=spec.eval.recall_at,
            dims=spec.loss.dims if spec.loss_type == "matryoshka" else (),
        )
    trainer = EmbeddingTrainer(
        model=embedder, args=args, train_dataset=data.train, eval_dataset=data.eval or None,
        data_collator=EmbeddingCollator(preprocess),
        loss=loss, evaluator=evaluator, no_duplicates=not scored,
    )
    connect_outputs(trainer, ctx, EmbeddingTokenCounter())
    primary = primary_metric(scored)
    if has_eval:
        trainer.add_callback(EvalReporter(ctx.status, primary))

    # 4. baseline, training, final evaluation
    before = after = None
    if has_eval and spec.eval.at_start:  # a resumed run's baseline is in its metrics log already
        before = _values(trainer.evaluate()) if ctx.resume_from is None else _logged_baseline(ctx)
    trainer.train(resume_from_checkpoint=str(ctx.resume_from) if ctx.resume_from else None)
    # agreed by every rank (a stop that arrives after the last step lets the run finish)
    interrupted = ctx.stop.agreed() and trainer.state.global_step < trainer.state.max_steps
    if has_eval and spec.eval.at_end and not interrupted:
        last = trainer.last_eval
        after = last[1] if last and last[0] == trainer.state.global_step else _values(trainer.evaluate())
    extra: dict[str, Any] = {"eval_metric": primary} if has_eval else {}
    if before is not None:
        extra["eval_before"] = before
    if after is not None:
        extra["eval_after"] = after
    if before is not None and after is not None:
        print(f"eval {primary}: {before[primary]:.4f} -> {after[primary]:.4f} (before -> after training)", flush=True)

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


def _check_loss_fits_data(job: LoadedJob, scored: bool) -> None:
    """CoSENT needs scored pairs and scored pairs need CoSENT (the format may have been detected)."""
    spec = job.spec
    if spec.loss_type == "multi-task":
        kinds = {task.type for task in spec.loss.tasks.values()}
    else:
        kinds = {spec.loss.base if spec.loss_type == "matryoshka" else spec.loss_type}
    if scored and kinds != {"cosent"}:
        raise ModelSetupError("the data are scored pairs: train them with loss.type = \"cosent\" "
                              "(or matryoshka / multi-task with cosent)")
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
        atomic_write_json(tmp / "runner_adapter.json", result_record(
            ctx, kind=spec.model.kind, embedder=embedder.info.to_dict(), loss=spec.loss_type,
            matryoshka_dims=list(spec.loss.dims), runtime=runtime,
        ))
    return target


train_embedding.supports_distributed = True  # type: ignore[attr-defined]  # rank-aware: runs under torchrun
