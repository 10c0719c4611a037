"""How the transformers Trainer reports into a run's outputs, saves checkpoints, and stops cleanly.

The Trainer is the engine; these hooks are the only places where it touches our files:
- `RunTrainer._save_checkpoint` makes checkpoints complete-or-absent (Trainer writes in place),
- `ProgressReporter` turns Trainer logs into metrics.jsonl lines and status progress,
- `StopRequest` lets a signal handler ask for "checkpoint now, then stop".

Under torchrun every rank runs these hooks; only rank 0 writes (status, metrics, checkpoints,
including the other ranks' RNG states, gathered to it), and a stop is agreed on by all ranks at
each step end, so they all stop after the same step and one checkpoint is written.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from transformers import PrinterCallback, Trainer, TrainerCallback

from runner.fsutil import atomic_write_json
from runner.outputs.checkpoints import BASE_RECORD, mark_complete, prune
from runner.outputs.metrics import MetricsLog
from runner.outputs.status import StatusFile
from runner.train import distributed

if TYPE_CHECKING:
    from runner.train.context import RunContext

STAGING = ".trainer"  # Trainer's output_dir, beside (not inside) checkpoints/ so pruning never touches it


@dataclass
class StopRequest:
    """Set from a signal handler; read by the Trainer loop at the next step boundary."""

    requested: bool = False
    signal_name: str | None = None

    def install(self) -> Callable[[], None]:
        """Route SIGTERM/SIGINT here for the duration of training; returns an undo function."""
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

        def handler(signum: int, _frame: Any) -> None:
            if self.requested and signum == signal.SIGINT:  # a second Ctrl-C means "now"
                raise KeyboardInterrupt
            self.requested = True
            self.signal_name = signal.Signals(signum).name
            print(f"\n{self.signal_name} received: saving a checkpoint, then stopping", file=sys.stderr, flush=True)

        for sig in previous:
            signal.signal(sig, handler)

        def restore() -> None:
            for sig, old in previous.items():
                signal.signal(sig, old)

        return restore

    def agreed(self) -> bool:
        """Whether any rank was asked to stop; every rank must call it at the same point (one
        all-reduce when several processes train, a plain read otherwise)."""
        if distributed.any_rank(self.requested) and not self.requested:
            self.requested = True
            self.signal_name = self.signal_name or "SIGTERM (on another rank)"
        return self.requested


@dataclass
class TokenCounter:
    """Real (non-padding) training tokens, summed without a device sync per step.

    Padded batches count their attention mask; padding-free batches have no padding, so every
    input id is real. The running total stays a tensor until a log line reads it.
    """

    _total: Any = 0

    def add(self, inputs: dict[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        self._total = self._total + (mask.sum() if mask is not None else inputs["input_ids"].numel())

    @property
    def tokens(self) -> int:
        return int(self._total)

    def tokens_all_ranks(self) -> int:
        """The total over every training process (collective when there are several)."""
        return distributed.sum_over_ranks(self.tokens)


class RunTrainer(Trainer):
    """Trainer whose checkpoints are complete-or-absent and named checkpoints/step-N.

    Trainer writes checkpoint-N file by file in place. Here it writes inside a staging folder; when
    it returns, the folder gets a COMPLETE marker (file hashes) and is renamed to step-N. A crash
    mid-save leaves only staging debris, which pruning removes; Trainer's own rotation is off
    (save_total_limit=None) because it could delete the last complete checkpoint before the new
    one is whole.
    """

    keep_checkpoints: int = 2
    checkpoints_dir: Path | None = None
    token_counter: TokenCounter | None = None
    base_model_info: dict[str, Any] | None = None  # written into every checkpoint (BASE_RECORD)

    require_sharded: bool = False  # strategy = "fsdp": refuse to train a model that is only replicated
    _sharding_checked: bool = False

    token_budget: int | None = None  # packed batches: forward/backward at most this many tokens at a time

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        if self.require_sharded and not self._sharding_checked:
            self._check_sharded()
        if self.token_counter is not None:
            self.token_counter.add(inputs)
        parts = self._micro_batches(inputs, num_items_in_batch)
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        # each part's loss is its summed token loss over the whole batch's token count, so the parts'
        # gradients add up to the batch's gradient, and their losses to its loss
        total = None
        for part in parts:
            loss = super().training_step(model, part, num_items_in_batch)
            total = loss if total is None else total + loss
        return total

    def _micro_batches(self, inputs: dict[str, Any], num_items_in_batch: Any) -> list[dict[str, Any]]:
        """A packed batch cut at sequence boundaries into parts of at most `token_budget` tokens
        (a longer sequence is a part of its own), or [inputs] when it is not to be cut.

        Why: without activation checkpointing, the activations kept for the backward pass grow with
        the tokens in flight (~1.7 MB per token for SmolLM2-135M with LoRA), and a flattened batch
        of 8 alpaca examples holds ~2,000 tokens. Cutting it bounds peak memory by the budget
        instead of the batch, at no cost in arithmetic (unlike checkpointing, which recomputes the
        forward pass). Exact because the loss is a sum over tokens divided by the batch's
        `num_items_in_batch`, and the first label of each sequence is -100 (no loss crosses a cut).
        Only for one process with the positions-only loss: under DDP every part's backward would
        all-reduce.
        """
        import torch

        from runner.train.attention import sequence_bounds

        budget = self.token_budget
        ids, positions = inputs.get("input_ids"), inputs.get("position_ids")
        if (not budget or ids is None or positions is None or "attention_mask" in inputs or ids.shape[0] != 1
                or ids.shape[1] <= budget or num_items_in_batch is None or not self.loss_positions_only
                or self.args.world_size > 1):
            return [inputs]
        length = ids.shape[1]
        if any(torch.is_tensor(v) and tuple(v.shape[:2]) != (1, length) for v in inputs.values()):
            return [inputs]  # something this cut would not know how to split
        cuts: list[tuple[int, int]] = []
        for start, end in sequence_bounds(positions):
            if cuts and end - cuts[-1][0] <= budget:
                cuts[-1] = (cuts[-1][0], end)
            else:
                cuts.append((start, end))
        return [{k: (v[:, s:e] if torch.is_tensor(v) else v) for k, v in inputs.items()} for s, e in cuts]

    loss_positions_only: bool = False  # causal LMs: logits only where a label counts (see compute_loss)

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """The model's causal-LM loss, with the LM head applied only where a label counts.

        The stock path projects every position onto the vocabulary (49k columns for SmolLM2) and
        then ignores the prompt and separator positions in the cross-entropy; here the hidden
        states are first cut to the positions whose next label is not -100 (transformers 5's
        boolean `logits_to_keep`), and the same cross-entropy (fp32, summed, divided by the
        Trainer's `num_items_in_batch`, else averaged) is taken on those rows only. Same loss, same
        gradients (tests/train/test_loss_parity.py); the head's matmuls and the logits buffer
        shrink by the prompt share of the batch. Anything unusual (custom metrics that want the
        logits, label smoothing, a custom loss function) takes the stock path.
        """
        labels = inputs.get("labels")
        if (not self.loss_positions_only or labels is None or not self.model_accepts_loss_kwargs
                or self.label_smoother is not None or self.compute_loss_func is not None
                or self.compute_metrics is not None):
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        import torch
        import torch.nn.functional as F

        targets = labels[:, 1:]
        counted = targets != -100
        keep = F.pad(counted, (0, 1), value=False)  # position t predicts label t + 1
        outputs = model(**{k: v for k, v in inputs.items() if k != "labels"}, logits_to_keep=keep)
        logits = outputs.logits
        if logits.dim() == 3 and logits.shape[:2] == keep.shape:  # a model that ignores logits_to_keep
            logits = logits[keep]
        kept_targets = targets[counted]
        if logits.shape[0] != kept_targets.shape[0]:
            raise RuntimeError(f"the model returned logits for {logits.shape[0]} positions, expected "
                               f"{kept_targets.shape[0]}: it does not support a boolean logits_to_keep")
        if num_items_in_batch is None:
            loss = F.cross_entropy(logits.float(), kept_targets)
        else:  # as ForCausalLMLoss and Trainer.compute_loss do with a token count
            loss = F.cross_entropy(logits.float(), kept_targets, reduction="sum")
            loss = loss / (num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch)
                           else num_items_in_batch)
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss

    def _check_sharded(self) -> None:
        """accelerate falls back to DDP where it cannot shard (e.g. on the CPU) without a word; a
        job that asked for FSDP stops at its first step instead of training unsharded."""
        from runner.train.model import ModelSetupError

        self._sharding_checked = True
        report = distributed.sharding_report(self.model_wrapped)
        if not report["sharded"]:
            raise ModelSetupError(
                f"resources.strategy = \"fsdp\", but the model was prepared as {report['kind']} with every "
                f"parameter in every process ({report['local_elements']:,} of {report['global_elements']:,}): "
                "it is not sharded here; use strategy = \"ddp\""
            )

    def _save_rng_state(self, output_dir: str) -> None:
        """Every rank's RNG state goes into the checkpoint, but only rank 0 writes: the states are
        gathered to it (Trainer would have each rank write its own file)."""
        if self.args.world_size <= 1:
            super()._save_rng_state(output_dir)
            return
        import random

        import numpy as np
        import torch

        states: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(),
                                  "cpu": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.random.get_rng_state_all()
        gathered = distributed.gather_to_writer(states)
        if gathered is None:
            return
        os.makedirs(output_dir, exist_ok=True)
        for index, rank_states in enumerate(gathered):
            torch.save(rank_states, os.path.join(output_dir, f"rng_state_{index}.pth"))

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save or self.checkpoints_dir is None:
            return
        step = self.state.global_step
        written = Path(self.args.output_dir) / f"checkpoint-{step}"
        final = self.checkpoints_dir / f"step-{step}"
        if self.base_model_info is not None:  # before the marker, so its hash covers it
            atomic_write_json(written / BASE_RECORD, self.base_model_info)
        mark_complete(written, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(written, final)
        prune(self.checkpoints_dir, self.keep_checkpoints)


@dataclass
class ProgressReporter(TrainerCallback):
    status: StatusFile
    metrics: MetricsLog
    stop: StopRequest
    tokens: TokenCounter
    plain_logs: bool
    _last_time: float = field(default_factory=time.perf_counter)
    _last_tokens: int = 0
    _start_time: float = field(default_factory=time.perf_counter)
    _start_step: int = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start_time = self._last_time = time.perf_counter()
        self._start_step = state.global_step
        self._last_tokens = self.tokens.tokens_all_ranks()
        if state.is_world_process_zero:
            self.status.update(step=state.global_step, total_steps=state.max_steps)
            print(f"training: steps {state.global_step + 1}-{state.max_steps}", flush=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.stop.agreed():  # every rank asks at every step end, so all stop after the same step
            control.should_save = True
            control.should_training_stop = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        # every rank logs the same lines; the token count is summed over ranks (a collective), then
        # only rank 0 writes
        tokens_now = self.tokens.tokens_all_ranks() if logs and "loss" in logs else None
        if not logs or not state.is_world_process_zero:
            return
        now = time.perf_counter()
        record: dict[str, Any] = {"step": state.global_step, "epoch": round(state.epoch or 0.0, 4),
                                  "time": round(time.time(), 3)}
        if "loss" in logs and tokens_now is not None:
            tokens = tokens_now - self._last_tokens
            elapsed = max(now - self._last_time, 1e-9)
            record.update(
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens_per_second=round(tokens / elapsed, 2),
                tokens_seen=tokens_now,
            )
            self._last_time, self._last_tokens = now, tokens_now
        else:
            record.update({k: v for k, v in logs.items() if k not in ("epoch",)})
        self.metrics.append(record)
        done = state.global_step - self._start_step
        eta = (now - self._start_time) / done * (state.max_steps - state.global_step) if done > 0 else None
        progress: dict[str, Any] = {"step": state.global_step, "total_steps": state.max_steps, "epoch": record["epoch"]}
        if "loss" in record:
            progress["loss"] = record["loss"]
            progress["tokens_per_second"] = record["tokens_per_second"]
        if "eval_loss" in record:
            progress["extra"] = {"eval_loss": record["eval_loss"]}
        if eta is not None:
            progress["eta_seconds"] = round(eta, 1)
        self.status.update(**progress)
        if self.plain_logs:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if v is not None and k in _SHOWN)
            print(f"[{state.global_step}/{state.max_steps}] {shown}", flush=True)


def connect_outputs(trainer: RunTrainer, ctx: RunContext, counter: TokenCounter | None = None) -> TokenCounter:
    """Wire a RunTrainer to a run: progress into status.json and metrics.jsonl, complete-or-absent
    checkpoints under run_dir/checkpoints, a checkpoint-then-stop on SIGTERM/SIGINT."""
    counter = counter if counter is not None else TokenCounter()
    trainer.add_callback(ProgressReporter(ctx.status, ctx.metrics, ctx.stop, counter, ctx.plain_logs))
    if ctx.plain_logs:  # ProgressReporter prints one line per log; Trainer's printer would repeat it
        trainer.remove_callback(PrinterCallback)
    trainer.checkpoints_dir = ctx.run_dir / "checkpoints"
    if distributed.is_writer():  # under torchrun, rank 0 alone writes the run's files
        trainer.checkpoints_dir.mkdir(parents=True, exist_ok=True)
    trainer.keep_checkpoints = ctx.job.spec.train.keep_checkpoints
    trainer.token_counter = counter
    trainer.base_model_info = ctx.model_info  # every checkpoint records the exact base (resume checks it)
    return counter


_SHOWN = ("epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "eval_loss", "train_loss", "train_runtime")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
