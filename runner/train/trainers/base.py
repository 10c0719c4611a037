"""The base trainer: how transformers' Trainer writes into a run, and the only place that reaches
into the Trainer's private methods.

`RunTrainer` connects a Trainer to a run's outputs (`RunOutputs`, all given to its constructor):
- progress into status.json and metrics.jsonl, one line per log (`ProgressReporter`);
- checkpoints complete-or-absent under checkpoints/step-N (`CompleteCheckpoints`, on `on_save`);
- a checkpoint-then-stop when the run is asked to stop (`StopRequest`, agreed by every rank at
  each step end, so all ranks stop after the same step and one checkpoint is written);
- every rank's RNG state in the checkpoint, written by rank 0 alone;
- a stop with `TrainingDiverged` at the first nan or infinite gradient or loss (`HealthCheck`).

Under torchrun every rank runs these hooks; only rank 0 writes the run's files.

Private Trainer methods overridden here, checked against transformers 5.24.0 (`CHECKED_AGAINST`;
`PRIVATE_OVERRIDES` records their parameters, and tests/train/test_trainer_seam.py fails when a
signature changes, when the Trainer stops calling one, or when any other trainer overrides a
private method):
- `_save_rng_state(output_dir)`: under torchrun the Trainer has every rank write its own
  rng_state_N.pth into the checkpoint folder, each on its own schedule; a rank that writes after
  rank 0 has finished and renamed the folder would recreate it half-empty (and ranks on other
  nodes may not see rank 0's disk). Here the states are gathered to rank 0, which writes them all
  before the folder is marked complete. No public hook runs between the Trainer's writes and the
  end of `_save_checkpoint`: `on_save` comes after the other ranks' files are written.
- `_load_from_checkpoint(resume_from_checkpoint, model=None)`: a trainer whose checkpoints hold a
  model part of its own (`load_checkpoint_weights`; the embedding trainer keeps only its trained
  weights) loads it itself. The stock loader knows only full-model and adapter files and refuses
  anything else ("Can't find a valid checkpoint"), and `train(resume_from_checkpoint=...)`, which
  also restores the optimizer, scheduler, RNG and step, calls it with no public hook around it.

Everything else goes through public hooks: callbacks (`on_save`, `on_log`, `on_step_end`), and in
the subclasses the documented overrides (`compute_loss`, `training_step`, `evaluate`,
`get_train_dataloader`, `save_model`). One subclass per model kind, each in its own module here.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import PrinterCallback, Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from runner.fsutil import atomic_write_json
from runner.outputs.checkpoints import BASE_RECORD, mark_complete, prune
from runner.outputs.metrics import MetricsLog
from runner.outputs.status import StatusFile
from runner.train import distributed
from runner.train.health import HealthCheck, likely_setting
from runner.train.stop import StopRequest

if TYPE_CHECKING:
    from runner.train.context import RunContext

CHECKED_AGAINST = "5.24.0"  # the transformers version whose private methods PRIVATE_OVERRIDES describes
# private Trainer method -> its parameters in CHECKED_AGAINST, and the Trainer method that calls it
PRIVATE_OVERRIDES: dict[str, tuple[tuple[str, ...], str]] = {
    "_save_rng_state": (("self", "output_dir"), "_save_checkpoint"),
    "_load_from_checkpoint": (("self", "resume_from_checkpoint", "model"), "train"),
}


@dataclass(frozen=True)
class RunOutputs:
    """Where a trainer reports: the run's status and metrics, its checkpoints and its stop request."""

    status: StatusFile
    metrics: MetricsLog
    stop: StopRequest
    checkpoints: Path
    keep_checkpoints: int = 2
    base_model: dict[str, Any] | None = None  # written into every checkpoint (BASE_RECORD); resume checks it
    plain_logs: bool = True
    divergence_hint: str = "lower train.learning_rate"  # what a `diverged` failure suggests (runner.train.health)

    @classmethod
    def of(cls, ctx: RunContext) -> RunOutputs:
        return cls(
            status=ctx.status,
            metrics=ctx.metrics,
            stop=ctx.stop,
            checkpoints=ctx.run_dir / "checkpoints",
            keep_checkpoints=ctx.job.spec.train.keep_checkpoints,
            base_model=ctx.model_info,
            plain_logs=ctx.plain_logs,
            divergence_hint=likely_setting(ctx.job.spec),
        )


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
    """A Trainer that reports into a run (`run`), counts real tokens (`token_counter`), and keeps
    checkpoints complete-or-absent. Without `run` it writes nothing of a run (tests, tools)."""

    def __init__(
        self,
        *args: Any,
        run: RunOutputs | None = None,
        token_counter: TokenCounter | None = None,
        callbacks: list[TrainerCallback] | None = None,
        **kwargs: Any,
    ) -> None:
        self.token_counter = token_counter if token_counter is not None else TokenCounter()
        ours: list[TrainerCallback] = []
        if run is not None:
            ours = [
                ProgressReporter(run.status, run.metrics, run.stop, self.token_counter, run.plain_logs),
                CompleteCheckpoints(run.checkpoints, run.keep_checkpoints, run.base_model),
                HealthCheck(run.divergence_hint),
            ]  # a nan loss or gradient stops the run as diverged
            if distributed.is_writer():  # under torchrun, rank 0 alone writes the run's files
                run.checkpoints.mkdir(parents=True, exist_ok=True)
        # the caller's callbacks first: a stop one of them asks for at a step end is seen at that step
        super().__init__(*args, callbacks=[*(callbacks or []), *ours], **kwargs)  # type: ignore[misc]  # args never reach callbacks
        if run is not None and run.plain_logs:  # ProgressReporter prints one line per log; the printer would repeat it
            self.remove_callback(PrinterCallback)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        self.token_counter.add(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def load_checkpoint_weights(self, folder: str, model: Any) -> bool:
        """Load a checkpoint's model part written in a format of this trainer's own (see its
        `save_model`) and return True; False lets the Trainer's stock loader read it."""
        return False

    # --- private overrides: listed in the module docstring and PRIVATE_OVERRIDES ------------

    def _save_rng_state(self, output_dir: str) -> None:
        """Every rank's RNG state goes into the checkpoint, but only rank 0 writes: the states are
        gathered to it (Trainer would have each rank write its own file)."""
        if self.args.world_size <= 1:
            super()._save_rng_state(output_dir)
            return
        import random

        import numpy as np
        import torch

        states: dict[str, Any] = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cpu": torch.random.get_rng_state(),
        }
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.random.get_rng_state_all()
        gathered = distributed.gather_to_writer(states)
        if gathered is None:
            return
        os.makedirs(output_dir, exist_ok=True)
        for index, rank_states in enumerate(gathered):
            torch.save(rank_states, os.path.join(output_dir, f"rng_state_{index}.pth"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        if not self.load_checkpoint_weights(resume_from_checkpoint, model if model is not None else self.model):
            super()._load_from_checkpoint(resume_from_checkpoint, model)


@dataclass
class CompleteCheckpoints(TrainerCallback):
    """Checkpoints complete-or-absent, named checkpoints/step-N.

    The Trainer writes checkpoint-N file by file in place, inside the staging folder (its
    output_dir). When it is done (`on_save`), the folder gets a COMPLETE marker (file hashes) and is
    renamed to step-N. A crash mid-save leaves only staging debris, which pruning removes; the
    Trainer's own rotation is off (save_total_limit=None) because it could delete the last complete
    checkpoint before the new one is whole.
    """

    folder: Path
    keep: int
    base_model: dict[str, Any] | None = None

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        step = state.global_step
        written = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
        final = self.folder / f"step-{step}"
        if self.base_model is not None:  # before the marker, so its hash covers it
            atomic_write_json(written / BASE_RECORD, self.base_model)
        mark_complete(written, step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(written, final)
        prune(self.folder, self.keep)


@dataclass
class ProgressReporter(TrainerCallback):
    """Trainer logs into metrics.jsonl lines and status progress; the stop request at each step end."""

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
        record: dict[str, Any] = {
            "step": state.global_step,
            "epoch": round(state.epoch or 0.0, 4),
            "time": round(time.time(), 3),
        }
        if "loss" in logs and tokens_now is not None:
            elapsed = max(now - self._last_time, 1e-9)
            record.update(
                loss=logs["loss"],
                learning_rate=logs.get("learning_rate"),
                grad_norm=logs.get("grad_norm"),
                tokens_per_second=round((tokens_now - self._last_tokens) / elapsed, 2),
                tokens_seen=tokens_now,
            )
            # a trainer's own metrics of the step (added to the logs by its `log`) go along
            record.update({k: v for k, v in logs.items() if k not in record and k != "epoch"})
            self._last_time, self._last_tokens = now, tokens_now
        else:
            record.update({k: v for k, v in logs.items() if k not in ("epoch",)})
        self.metrics.append(record)
        self.status.update(**self._progress(state, record, now))
        if self.plain_logs:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in record.items() if v is not None and k in _SHOWN)
            print(f"[{state.global_step}/{state.max_steps}] {shown}", flush=True)

    def _progress(self, state: Any, record: dict[str, Any], now: float) -> dict[str, Any]:
        progress: dict[str, Any] = {"step": state.global_step, "total_steps": state.max_steps, "epoch": record["epoch"]}
        if "loss" in record:
            progress["loss"] = record["loss"]
            progress["tokens_per_second"] = record["tokens_per_second"]
        if "eval_loss" in record:
            progress["extra"] = {"eval_loss": record["eval_loss"]}
        done = state.global_step - self._start_step
        if done > 0:
            eta = (now - self._start_time) / done * (state.max_steps - state.global_step)
            progress["eta_seconds"] = round(eta, 1)
        return progress


_SHOWN = (
    "epoch",
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens_per_second",
    "eval_loss",
    "train_loss",
    "train_runtime",
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
