"""`plan_job`: gather what a loaded job needs (its device, model shape, data, a calibration) and
put the estimates together into a `Plan`, the record `runner plan` prints or writes as JSON."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.plan import preference
from runner.plan.calibration import Calibration, analytic_calibration, calibrate
from runner.plan.data import BatchShape, DataStats, batch_shape, data_stats, optimizer_steps
from runner.plan.estimate import (
    ALLOCATOR_RETENTION,
    METHODS,
    MemoryEstimate,
    TimeEstimate,
    estimate_memory,
    estimate_time,
    suggest,
)
from runner.plan.machine import available_memory, rss_bytes
from runner.plan.shape import ModelShape, lora_targets, model_shape, trainable_parameters
from runner.spec.model import PREFERENCE_LOSSES

if TYPE_CHECKING:
    from runner.spec import JobSpec, LoadedJob
    from runner.train.model import DeviceChoice

__all__ = ["Plan", "plan_job"]

WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Plan:
    job: str
    model: dict[str, Any]
    data: dict[str, Any]
    steps: dict[str, Any]
    memory: dict[str, Any]
    time: dict[str, Any] | None
    budget: dict[str, Any]
    fits: bool | None
    suggestions: list[str]
    notes: list[str]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class _Steps:
    total: int
    per_epoch: int
    batch: BatchShape


def plan_job(
    job: LoadedJob,
    *,
    runs_root: Path | None = None,
    registry: Path | None = None,
    allow_remote_code: bool = False,
    memory_budget: int | None = None,
    calibrate_device: bool = True,
    use_cache: bool = True,
) -> Plan:
    """Everything `runner plan` reports for a loaded job (raises ModelSetupError / SourceError /
    DataError with a reason when the job cannot run here)."""
    from runner.lineage import resolve_job_model
    from runner.train.common import load_tokenizer
    from runner.train.model import ModelSetupError, choose_device

    spec = job.spec
    if spec.model.kind != "causal-lm":
        raise ModelSetupError(f"runner plan estimates causal-LM jobs; this job's model.kind is '{spec.model.kind}'")
    choice = choose_device(spec.model, spec.resources, spec.adapter)  # the job's own device; refuses what cannot run
    resolved, model_info = resolve_job_model(
        job, runs_root=runs_root, registry=registry, allow_remote_code=allow_remote_code
    )
    model_path = Path(resolved.path)
    tokenizer = load_tokenizer(model_path, spec.model.trust_remote_code)
    import runner.train.causal_lm  # noqa: F401 - the run's imports, so the runtime measured below is the run's

    runtime_bytes = rss_bytes()
    shape = model_shape(model_path, trust_remote_code=spec.model.trust_remote_code)
    rows = None  # preference jobs: what each example puts in the row (runner.plan.preference)
    if spec.loss_type in PREFERENCE_LOSSES:
        stats, rows = preference.preference_stats(job, tokenizer)
        cached = False
    else:
        stats, cached = data_stats(job, tokenizer, model_info.get("files") or {}, cache=use_cache)
    steps = _steps(spec, stats, rows)
    notes: list[str] = []
    calibration = _calibration(shape, model_path, spec, choice, steps.batch, calibrate_device, notes)
    calibration = replace(calibration, runtime_bytes=runtime_bytes)
    estimates, qlora_ok = _estimates(shape, spec, choice, steps.batch, calibration, stats, notes, rows is not None)

    detected, source = available_memory(choice.device)
    budget = memory_budget if memory_budget is not None else detected
    per_node = spec.resources.nproc if choice.device == "cpu" else 1  # CPU processes share the machine's memory
    needed = estimates[spec.adapter.method].peak * per_node
    fits = None if budget is None else needed <= budget
    suggestions: list[str] = []
    if budget is not None and not fits and rows is not None:

        def peak(method: str, batch: BatchShape, checkpointing: bool, kind: str | None) -> int:
            return _estimate(shape, spec, choice, batch, calibration, stats, method, kind, checkpointing).peak

        suggestions = preference.suggest_preference(shape, spec, rows, peak, budget // per_node, qlora_ok)
    elif budget is not None and not fits:
        suggestions = suggest(
            shape, spec, stats, calibration, choice.device, budget // per_node, WEIGHT_BYTES[choice.dtype], qlora_ok
        )
    time_estimate = _time(spec, stats, steps, calibration)
    return Plan(
        job=job.name,
        model=_model_record(spec, model_path, shape, choice),
        data=_data_record(stats, steps.batch, cached),
        steps=_steps_record(spec, steps),
        memory=_memory_record(spec, choice, calibration, estimates, per_node),
        time=None if time_estimate is None else _time_record(time_estimate, calibration),
        budget={"bytes": budget, "source": "--memory" if memory_budget is not None else source, "needed_bytes": needed},
        fits=fits,
        suggestions=suggestions,
        notes=notes,
    )


def _steps(spec: JobSpec, stats: DataStats, rows: preference.PreferenceRows | None = None) -> _Steps:
    total, per_epoch = optimizer_steps(
        stats.train_examples,
        batch_size=spec.train.batch_size,
        nproc=spec.resources.world_size,
        grad_accum=spec.train.grad_accum,
        epochs=spec.train.epochs,
        max_steps=spec.train.max_steps,
    )
    if rows is not None:  # preference batches: always padding-free, in parts of the token budget
        batch = preference.preference_batch(
            rows, spec.train.batch_size, preference.token_budget(spec), seed=spec.train.seed
        )
    else:
        batch = batch_shape(stats.train_lengths, spec.train.batch_size, packing=spec.data.packing, seed=spec.train.seed)
    return _Steps(total, per_epoch, batch)


def _calibration(
    shape: ModelShape,
    model_path: Path,
    spec: JobSpec,
    choice: DeviceChoice,
    batch: BatchShape,
    measure: bool,
    notes: list[str],
) -> Calibration:
    """Measured on this device (`measure`), else the rule of thumb; the optimizer time scaled to the
    job's trainable parameters."""
    import torch

    nproc = spec.resources.nproc
    if not measure:
        notes.append("no calibration (--no-calibrate): activation memory from a rule of thumb, no time estimate")
        return analytic_calibration(shape, choice.device)
    threads = spec.resources.threads or (
        max(1, (os.cpu_count() or 1) // nproc) if nproc > 1 else torch.get_num_threads()
    )
    calibration = calibrate(
        model_path,
        spec,
        choice,
        rows=batch.peak_rows or 1,
        columns=batch.peak_columns or spec.data.max_length,
        threads=threads,
    )
    if choice.device == "cpu" and hasattr(os, "getloadavg"):
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if load > cores:
            notes.append(
                f"the CPU was busy during the calibration (load {load:.1f} on {cores} cores): the time "
                "estimate may be several times too long"
            )
    if calibration.optimizer_seconds is not None:  # measured per trainable parameter; scale to the job's
        trainable_job = trainable_parameters(
            shape,
            spec.adapter.method,
            r=spec.adapter.r,
            target_modules=spec.adapter.target_modules,
            bias=spec.adapter.bias,
        )
        calibration = replace(calibration, optimizer_seconds=calibration.optimizer_seconds * trainable_job)
    return calibration


def _estimate(
    shape: ModelShape,
    spec: JobSpec,
    choice: DeviceChoice,
    batch: BatchShape,
    calibration: Calibration,
    stats: DataStats,
    method: str,
    reference: str | None,
    checkpointing: bool,
) -> MemoryEstimate:
    """The peak of `method`; `reference`: a preference job's reference for it (runner.plan.preference)."""
    adapter, weight_bytes = spec.adapter, WEIGHT_BYTES[choice.dtype]
    return estimate_memory(
        shape,
        method,
        device=choice.device,
        batch=batch,
        calibration=calibration,
        r=adapter.r,
        target_modules=adapter.target_modules,
        bias=adapter.bias,
        double_quant=adapter.double_quant,
        optimizer=spec.train.optimizer,
        weight_bytes=weight_bytes,
        gradient_checkpointing=checkpointing,
        data_tokens=stats.train_tokens + stats.eval_tokens,
        reference_bytes=preference.reference_bytes(shape, reference, batch, weight_bytes),
    )


def _estimates(
    shape: ModelShape,
    spec: JobSpec,
    choice: DeviceChoice,
    batch: BatchShape,
    calibration: Calibration,
    stats: DataStats,
    notes: list[str],
    is_preference: bool = False,
) -> tuple[dict[str, MemoryEstimate], bool]:
    """The peak of each method (full, LoRA, QLoRA), and whether QLoRA can run here."""
    from runner.train.model import quantization_problem

    estimates = {
        method: _estimate(
            shape,
            spec,
            choice,
            batch,
            calibration,
            stats,
            method,
            preference.reference_kind(spec, method) if is_preference else None,
            spec.train.gradient_checkpointing,
        )
        for method in METHODS
    }
    if is_preference:
        notes.extend(
            preference.notes(spec, preference.reference_kind(spec, spec.adapter.method), preference.token_budget(spec))
        )
    qlora_problem = quantization_problem(choice.device)
    if qlora_problem:
        notes.append(f"qlora cannot run here: {qlora_problem}")
    if choice.device == "cpu":
        notes.append(
            "CPU: peaks are resident memory (RSS) of each process; LoRA's and QLoRA's include the "
            "mapped checkpoint file, which the kernel can reclaim as page cache"
        )
    return estimates, qlora_problem is None


def _time(spec: JobSpec, stats: DataStats, steps: _Steps, calibration: Calibration) -> TimeEstimate | None:
    evaluations = 0
    if stats.eval_examples:
        evaluations = int(spec.eval.at_start) + int(spec.eval.at_end)
        if spec.eval.every:
            evaluations += steps.total // spec.eval.every
    eval_tokens = sum(stats.eval_lengths)  # the causal-LM recipe evaluates every eval example
    passes = 1.0
    if spec.loss_type in PREFERENCE_LOSSES:  # the reference (and KTO's KL) passes; evaluation scores both models
        kind = preference.reference_kind(spec, spec.adapter.method)
        passes = preference.passes_per_token(spec, kind)
        eval_tokens = int(eval_tokens * (2 if kind in ("adapter-off", "copy") else 1))
    return estimate_time(
        calibration,
        steps.batch,
        steps=steps.total,
        grad_accum=spec.train.grad_accum,
        eval_tokens=math.ceil(eval_tokens / max(1, spec.resources.nproc)),
        evaluations=evaluations,
        passes=passes,
    )


# ------------------------------------------------------------------------------ the record


def _model_record(spec: JobSpec, model_path: Path, shape: ModelShape, choice: DeviceChoice) -> dict[str, Any]:
    return {
        "source": spec.model.source,
        "path": str(model_path),
        "architecture": shape.architecture,
        "layers": shape.num_layers,
        "hidden_size": shape.hidden_size,
        "vocab_size": shape.vocab_size,
        "parameters": shape.parameters,
        "checkpoint_parameters": shape.checkpoint_parameters,
        "checkpoint_bytes": shape.checkpoint_bytes,
        "checkpoint_dtypes": list(shape.checkpoint_dtypes),
        "linear_layers": len(shape.linears),
        "lora_layers": len(lora_targets(shape, spec.adapter.target_modules)),
        "device": choice.to_dict(),
    }


def _data_record(stats: DataStats, batch: BatchShape, cached: bool) -> dict[str, Any]:
    return {
        "format": stats.format,
        "records": stats.records,
        "train_examples": stats.train_examples,
        "eval_examples": stats.eval_examples,
        "train_tokens": stats.train_tokens,
        "eval_tokens": stats.eval_tokens,
        "trainable_tokens": stats.trainable_tokens,
        "longest": max(stats.train_lengths, default=0),
        "truncated": stats.truncated,
        "bad_records": stats.bad_records,
        "cached": cached,
        "peak_batch_tokens": batch.peak_tokens,
        "peak_batch": [batch.peak_rows, batch.peak_columns],
        "mean_batch_tokens": round(batch.mean_tokens, 1),
        "real_token_fraction": round(batch.real_fraction, 3),
    }


def _steps_record(spec: JobSpec, steps: _Steps) -> dict[str, Any]:
    train, nproc = spec.train, spec.resources.nproc
    return {
        "total": steps.total,
        "per_epoch": steps.per_epoch,
        "batch_size": train.batch_size,
        "processes": nproc,
        "grad_accum": train.grad_accum,
        "global_batch": train.batch_size * spec.resources.world_size * train.grad_accum,
    }


def _memory_record(
    spec: JobSpec, choice: DeviceChoice, calibration: Calibration, estimates: dict[str, MemoryEstimate], per_node: int
) -> dict[str, Any]:
    return {
        "device": choice.device,
        "per_process": True,
        "processes_sharing_memory": per_node,
        "calibration": {
            "saved_bytes_per_token": calibration.saved_per_token,
            "saved_bytes_per_token_per_column": calibration.saved_per_token_sq,
            "runtime_bytes": calibration.runtime_bytes,
            "allocator_retention": ALLOCATOR_RETENTION.get(choice.device, {}),
        },
        "methods": {m: e.to_dict() for m, e in estimates.items()},
        "job_method": spec.adapter.method,
    }


def _time_record(estimate: TimeEstimate, calibration: Calibration) -> dict[str, Any]:
    return {
        "seconds_per_step": round(estimate.seconds_per_step, 3),
        "train_seconds": round(estimate.train_seconds, 1),
        "evaluations": estimate.evaluations,
        "eval_seconds": round(estimate.eval_seconds, 1),
        "total_seconds": round(estimate.total_seconds, 1),
        "calibration": {
            "device": calibration.device,
            "threads": calibration.threads,
            "seconds_per_1k_tokens": round(1000 * (calibration.seconds_per_token or 0.0), 4),
            "seconds_per_pass": round(calibration.seconds_per_pass, 4),
            "optimizer_seconds": round(calibration.optimizer_seconds or 0.0, 4),
            "seconds_spent": round(calibration.seconds_spent, 1),
        },
    }
