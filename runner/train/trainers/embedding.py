"""The embedding trainer: what an embedding model changes in training, through the Trainer's public
methods.

- `compute_loss`: the job's embedding loss over the query, positive and negative sides (and, for
  multi-task, the batch's task adapter);
- `get_train_dataloader`: batches of one task each without duplicate texts (`EmbeddingBatchSampler`);
- `evaluate`: retrieval or Spearman metrics instead of a prediction loop (`EmbeddingEvaluator`);
- `save_model` / `load_checkpoint_weights`: a checkpoint holds only the trained weights
  (adapters and projection), not the frozen base.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from runner.data.embedding import EmbeddingBatchSampler
from runner.outputs.status import StatusFile
from runner.train.embedding_eval import EmbeddingEvaluator
from runner.train.trainers.base import RunTrainer, TokenCounter

TRAINED_WEIGHTS = "embedder.safetensors"  # a checkpoint's model part: every trained weight, nothing else


class EmbeddingTrainer(RunTrainer):
    """`loss`: the embedding loss module; `evaluator`: None without eval data; `no_duplicates`:
    a batch never holds the same text twice (in-batch negatives would contradict the positives)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(
        self,
        *args: Any,
        loss: torch.nn.Module,
        evaluator: EmbeddingEvaluator | None,
        no_duplicates: bool,
        **kwargs: Any,
    ) -> None:
        self.embedding_loss = loss
        self.evaluator = evaluator
        self.no_duplicates = no_duplicates
        self.last_eval: tuple[int, dict[str, float]] | None = None
        super().__init__(*args, token_counter=EmbeddingTokenCounter(), **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        examples: Any = self.train_dataset  # the recipe's list of EmbeddingExample
        sampler = EmbeddingBatchSampler(
            examples,
            self.args.per_device_train_batch_size,
            world_size=self.args.world_size,
            seed=self.args.seed,
            shuffle=self.args.train_sampling_strategy != "sequential",
            no_duplicates=self.no_duplicates,
        )
        loader = DataLoader(
            examples, batch_sampler=sampler, collate_fn=self.data_collator, num_workers=self.args.dataloader_num_workers
        )
        return self.accelerator.prepare(loader)

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        task = inputs.get("task")
        if task is not None:  # multi-task: this batch's LoRA adapter and loss
            self.accelerator.unwrap_model(model).set_task(task)
        sides = {side: inputs[side] for side in ("query", "positive", "negative") if side in inputs}
        embeddings = model(**sides)
        loss = self.embedding_loss(
            embeddings["query"],
            embeddings["positive"],
            embeddings.get("negative"),
            inputs.get("scores"),
            **({"task": task} if task is not None else {}),
        )
        return (loss, embeddings) if return_outputs else loss

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
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

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """A checkpoint holds the trained weights only (adapters, projection), not the frozen base."""
        if not self.args.should_save:
            return
        from safetensors.torch import save_file

        folder = output_dir or self.args.output_dir
        if folder is None:
            raise ValueError("no output_dir to save the model in")
        os.makedirs(folder, exist_ok=True)
        save_file(
            self.accelerator.unwrap_model(self.model).trainable_state_dict(), os.path.join(folder, TRAINED_WEIGHTS)
        )

    def load_checkpoint_weights(self, folder: str, model: Any) -> bool:
        from safetensors.torch import load_file

        embedder = self.accelerator.unwrap_model(model)
        embedder.load_trainable_state_dict(load_file(os.path.join(folder, TRAINED_WEIGHTS)))
        return True


class EmbeddingTokenCounter(TokenCounter):
    """Real tokens of every side of an embedding batch: texts, and VLM image prompts (image pads
    included); a dual encoder's images have no tokens."""

    def add(self, inputs: dict[str, Any]) -> None:
        for side in ("query", "positive", "negative"):
            for modality in ("text", "image"):
                features = (inputs.get(side) or {}).get(modality) or {}
                mask = features.get("attention_mask")
                if mask is not None:
                    self._total = self._total + mask.sum()
                elif "lengths" in features:  # padding-free texts: every id is a real token
                    self._total = self._total + features["input_ids"].numel()


class EvalReporter(TrainerCallback):
    """Prints each evaluation and keeps the latest metrics in status.json (extra.eval)."""

    def __init__(self, status: StatusFile, primary: str) -> None:
        self.status, self.primary = status, primary

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not metrics or not state.is_world_process_zero:
            return
        values = {k.removeprefix("eval_"): round(v, 6) for k, v in metrics.items() if k != "eval_runtime"}
        shown = [self.primary, "loss", *sorted(k for k in values if k not in (self.primary, "loss") and "_" not in k)]
        print(
            f"eval at step {state.global_step}: " + " ".join(f"{k}={values[k]:.4f}" for k in shown if k in values),
            flush=True,
        )
        self.status.update(extra={"eval": {"step": state.global_step, **values}})
