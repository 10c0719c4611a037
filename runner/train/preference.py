"""The preference-tuning recipe (DPO, IPO, ORPO, SimPO, KTO), read top to bottom.

start -> tokenizer -> preference data (bad records reported before any weights load) -> model +
adapter, with the shared-prompt attention kernel -> reference (the adapter switched off, a frozen
copy, computed once and cached, or none for ORPO / SimPO) -> `PreferenceTrainer` -> baseline
evaluation -> train (or resume) -> final evaluation -> adapter saved complete-or-absent.

Everything the recipe knows comes from the typed spec: the loss and its settings ([loss]), where
the reference comes from (loss.reference), and the speed switches ([train.speed]: shared_prompt,
packed_attention, token_budget, lora_fold). A typical job's model is another job's result
(``model.source = "job:<sft job>"``), so the reference is the SFT model.
"""

from __future__ import annotations

import copy
import sys
import time
from typing import Any

from runner.data.preference_collate import PreferenceCollator
from runner.data.preference_tokens import PreferenceReport, PreparedPreference, prepare_preference_data
from runner.spec.loader import LoadedJob
from runner.train import distributed
from runner.train.attention import PACKED_SDPA, use_packed_sdpa
from runner.train.causal_lm import save_final
from runner.train.common import (
    compare_replicas,
    load_tokenizer,
    record_runtime,
    report_parameters,
    start_run,
    train_or_resume,
    training_arguments,
)
from runner.train.context import RunContext, TrainOutcome
from runner.train.lora_fold import fold_applies, fold_lora_layers
from runner.train.losses.preference import build_preference_loss
from runner.train.model import DeviceChoice, apply_adapter, load_causal_lm, quantization_record
from runner.train.reference import (
    AdapterOff,
    FrozenCopy,
    base_reference,
    compute_reference_logps,
    precompute_reference,
    reference_cache_key,
)
from runner.train.shared_prompt import SHARED_PROMPT_SDPA, use_shared_prompt_sdpa
from runner.train.trainers.base import RunOutputs
from runner.train.trainers.preference import PreferenceReporter, PreferenceTrainer

PRIMARY = "reward_accuracy"


def train_preference(ctx: RunContext) -> TrainOutcome:
    started = time.perf_counter()
    spec = ctx.job.spec
    choice, runtime = start_run(ctx)

    # 1. data: read, check, tokenise (bad records are reported before any weights load)
    tokenizer = load_tokenizer(ctx.model_path, spec.model.trust_remote_code)
    data = prepare_preference_job_data(ctx.job, tokenizer)
    data_summary = report_data(ctx, data)

    # 2. model, attention kernel, adapter and reference
    model, shared_prompt = load_model(ctx, choice, runtime)
    reference_kind = spec.reference
    frozen = FrozenCopy(copy.deepcopy(model)) if reference_kind == "copy" else None  # the base, before any update
    model = apply_adapter(model, spec.adapter, gradient_checkpointing=spec.train.gradient_checkpointing)
    fold_adapter(ctx, model, runtime)
    trainable, total = report_parameters(
        ctx,
        model,
        runtime,
        preference={"loss": spec.loss_type, "beta": spec.preference_beta, "reference": reference_kind},
    )
    print(
        f"model: {total:,} parameters, {trainable:,} trainable ({100 * trainable / total:.2f}%); "
        f"{spec.loss_type} (beta {spec.preference_beta}), reference: {reference_kind or 'none (reference-free)'}",
        flush=True,
    )

    # 3. the trainer, wired to the run's outputs; every setting through its constructor
    has_eval = bool(data.eval)
    speed = spec.train.speed
    budget = speed.token_budget if (distributed.world_size() == 1 and not spec.train.gradient_checkpointing) else 0
    trainer = PreferenceTrainer(
        model=model,
        args=training_arguments(ctx.job, ctx.run_dir, choice, has_eval=has_eval, plain_logs=ctx.plain_logs),
        train_dataset=data.train,
        eval_dataset=data.eval or None,
        data_collator=PreferenceCollator(shared_prompt=shared_prompt, token_budget=budget or None),
        processing_class=tokenizer,
        run=RunOutputs.of(ctx),
        callbacks=[PreferenceReporter(ctx.status, PRIMARY)],
        loss=build_preference_loss(
            spec.loss_type,
            beta=spec.preference_beta,
            label_smoothing=spec.loss.label_smoothing,
            gamma=spec.loss.gamma,
            sft_weight=spec.loss.sft_weight,
            desirable_weight=spec.loss.desirable_weight,
            undesirable_weight=spec.loss.undesirable_weight,
        ),
        reference={"adapter-off": AdapterOff(), "copy": frozen}.get(reference_kind or ""),
    )
    if reference_kind == "precompute":
        precompute(ctx, trainer, data, choice, shared_prompt)

    # 4. baseline, training, final evaluation
    before = after = None
    if has_eval and spec.eval.at_start:  # a resumed run's baseline is in its metrics log already
        before = _values(trainer.evaluate()) if ctx.resume_from is None else _logged_baseline(ctx)
    interrupted = train_or_resume(trainer, ctx)
    if has_eval and spec.eval.at_end and not interrupted:
        last = [h for h in trainer.state.log_history if "eval_loss" in h]
        evaluated_now = last and last[-1].get("step") == trainer.state.global_step
        after = _values(last[-1]) if evaluated_now else _values(trainer.evaluate())
    extra = _eval_summary(before, after) if has_eval else {}

    # 5. the final adapter (or full model) with its tokenizer, complete-or-absent; rank 0 writes it
    if not interrupted:
        extra.update(compare_replicas(trainer))
        if distributed.is_writer():
            save_final(
                trainer.model, tokenizer, ctx, quantization=quantization_record(spec.adapter, choice), runtime=runtime
            )
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


def prepare_preference_job_data(job: LoadedJob, tokenizer: Any, *, progress: bool | None = None) -> PreparedPreference:
    spec = job.spec
    data = spec.data
    return prepare_preference_data(
        [job.resolve_path(p) for p in data.train],
        tokenizer,
        max_length=data.max_length,
        eval_files=[job.resolve_path(p) for p in data.eval],
        eval_fraction=data.eval_fraction,
        seed=spec.train.seed,
        format=data.format,
        fields=dict(data.fields.items()) or None,
        on_bad_record=data.on_bad_record,
        unpaired=spec.loss_type == "kto",
        max_records=data.max_records,
        eval_max_records=spec.eval.max_records,
        progress=progress,
    )


def report_data(ctx: RunContext, data: PreparedPreference) -> dict[str, Any]:
    """Print what the data gave (and the first skipped records), record it in status.json."""
    report: PreferenceReport = data.train_report
    bad = [*report.bad_records, *(data.eval_report.bad_records if data.eval_report else [])]
    print(
        f"data: {len(data.train)} train examples ({report.format}: {report.format_reason}), "
        f"{len(data.eval)} eval examples, {len(bad)} bad records skipped",
        flush=True,
    )
    for line in report.summary().split("\n")[2:5]:
        print(f"  {line}", flush=True)
    for one in bad[:20]:
        print(f"  skipped {one}", file=sys.stderr)
    summary = {
        "format": report.format,
        "format_reason": report.format_reason,
        "train_examples": len(data.train),
        "eval_examples": len(data.eval),
        "bad_records_skipped": len(bad),
        "truncated": report.truncated,
        "trainable_tokens": report.trainable_tokens,
        "lengths": report.part_lengths(),
    }
    ctx.status.update(extra={"data": summary})
    return summary


def load_model(ctx: RunContext, choice: DeviceChoice, runtime: dict[str, Any]) -> tuple[Any, bool]:
    """The base model with the attention kernel for preference rows; whether pairs share their
    prompt (train.speed.shared_prompt, on an SDPA model), recorded in the runtime."""
    spec = ctx.job.spec
    model = load_causal_lm(ctx.model_path, spec.model, spec.adapter, choice)
    speed = spec.train.speed
    shared = speed.shared_prompt and use_shared_prompt_sdpa(model)
    if shared:
        runtime["packed_attention"] = SHARED_PROMPT_SDPA
    elif speed.packed_attention and use_packed_sdpa(model):
        runtime["packed_attention"] = PACKED_SDPA
    runtime["shared_prompt"] = shared
    record_runtime(ctx, runtime)
    return model, shared


def fold_adapter(ctx: RunContext, model: Any, runtime: dict[str, Any]) -> None:
    """LoRA with dropout 0 (train.speed.lora_fold): each adapted layer runs one GEMM with the adapter
    folded into the weight. The adapter-off reference still runs peft's forward (the base weight
    alone), and the fold is kept across it, so it is formed once per optimizer step."""
    spec = ctx.job.spec
    sharded = spec.resources.world_size > 1 and spec.resources.strategy == "fsdp"  # FSDP owns the weights
    if spec.train.speed.lora_fold and fold_applies(spec.adapter.method, spec.adapter.dropout) and not sharded:
        runtime["lora_fold"] = fold_lora_layers(model)
        record_runtime(ctx, runtime)


def precompute(
    ctx: RunContext, trainer: PreferenceTrainer, data: PreparedPreference, choice: DeviceChoice, shared_prompt: bool
) -> None:
    """Reference log-probabilities of every example, from the cache or computed with the base model
    (before training: the adapter switched off, or the untrained full model). Under torchrun rank 0
    computes and stores them; the other ranks read them."""
    spec = ctx.job.spec
    model = trainer.accelerator.unwrap_model(trainer.model)
    score = base_reference(model, spec.adapter.method)
    collate = PreferenceCollator(shared_prompt=shared_prompt)
    batch_size = spec.eval.batch_size or spec.train.batch_size
    settings = {
        "dtype": choice.dtype,
        "precision": choice.precision,
        "device": choice.device,
        "quantization": quantization_record(spec.adapter, choice),
        "shared_prompt": shared_prompt,
        "unpaired": spec.loss_type == "kto",
    }
    key = reference_cache_key(
        [data.train, data.eval], ctx.model_info.get("files") or {"path": str(ctx.model_path)}, settings
    )
    was_training = model.training
    model.eval()

    def compute(examples: Any) -> Any:
        return compute_reference_logps(
            examples,
            lambda row: score(model, row),
            collate,
            batch_size,
            trainer.args.device,
            progress=not ctx.plain_logs,
        )

    started = time.perf_counter()
    hit = False
    if distributed.is_writer():
        hit = precompute_reference([data.train, data.eval], compute, key)
    if distributed.world_size() > 1:
        distributed.all_gather(None)  # the writer's entry is in the cache before the others look
        if not distributed.is_writer():
            precompute_reference([data.train, data.eval], compute, key)
    model.train(was_training)
    how = "read from the cache" if hit else f"computed in {time.perf_counter() - started:.1f} s"
    print(f"reference log-probabilities of {len(data.train) + len(data.eval)} examples {how}", flush=True)
    ctx.status.update(extra={"reference": {"kind": "precompute", "cache_key": key, "cache_hit": hit}})


def _values(metrics: dict[str, Any]) -> dict[str, float]:
    return {k.removeprefix("eval_"): v for k, v in metrics.items() if k.startswith("eval_") and k != "eval_runtime"}


def _logged_baseline(ctx: RunContext) -> dict[str, float] | None:
    logged = [r for r in ctx.metrics.read() if r.get("step") == 0 and "eval_loss" in r]
    return _values(logged[-1]) if logged else None


def _eval_summary(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    extra: dict[str, Any] = {"eval_metric": PRIMARY}
    if before is not None:
        extra["eval_before"] = before
    if after is not None:
        extra["eval_after"] = after
    if before is not None and after is not None:
        shown = [k for k in (PRIMARY, "reward_margin", "logp_accuracy") if k in before and k in after]
        print(
            "held-out "
            + ", ".join(f"{k} {before[k]:.4f} -> {after[k]:.4f}" for k in shown)
            + " (before -> after training)",
            flush=True,
        )
    return extra
