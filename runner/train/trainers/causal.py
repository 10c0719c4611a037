"""The causal-LM trainer: what a causal LM changes in training, through the Trainer's public methods.

- `compute_loss`: the LM head only where a label counts (`loss_positions_only`);
- `training_step`: a packed batch forwarded in parts of at most `token_budget` tokens, and the
  FSDP check (`require_sharded`) at the first step.

All three come in through the constructor, from the job's [train.speed] and [resources].
"""

from __future__ import annotations

from typing import Any

from runner.train import distributed
from runner.train.trainers.base import RunTrainer


class CausalTrainer(RunTrainer):
    """`loss_positions_only`: logits only where a label counts (see `compute_loss`);
    `token_budget`: forward/backward a packed batch at most this many tokens at a time (None: whole);
    `require_sharded`: resources.strategy = "fsdp", refuse to train a model that is only replicated."""

    def __init__(
        self,
        *args: Any,
        loss_positions_only: bool = False,
        token_budget: int | None = None,
        require_sharded: bool = False,
        **kwargs: Any,
    ) -> None:
        self.loss_positions_only = loss_positions_only
        self.token_budget = token_budget or None
        self.require_sharded = require_sharded
        self._sharding_checked = False
        super().__init__(*args, **kwargs)

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        if self.require_sharded and not self._sharding_checked:
            self._sharding_checked = True
            check_sharded(self.model_wrapped)
        parts = self.micro_batches(inputs, num_items_in_batch)
        if len(parts) == 1:
            return super().training_step(model, inputs, num_items_in_batch)
        # each part's loss is its summed token loss over the whole batch's token count, so the parts'
        # gradients add up to the batch's gradient, and their losses to its loss
        total = None
        for part in parts:
            loss = super().training_step(model, part, num_items_in_batch)
            total = loss if total is None else total + loss
        return total

    def micro_batches(self, inputs: dict[str, Any], num_items_in_batch: Any) -> list[dict[str, Any]]:
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
        if (
            not budget
            or ids is None
            or positions is None
            or "attention_mask" in inputs
            or ids.shape[0] != 1
            or ids.shape[1] <= budget
            or num_items_in_batch is None
            or not self.loss_positions_only
            or self.args.world_size > 1
        ):
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

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
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
        if (
            not self.loss_positions_only
            or labels is None
            or not self.model_accepts_loss_kwargs
            or self.label_smoother is not None
            or self.compute_loss_func is not None
            or self.compute_metrics is not None
        ):
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
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
            raise RuntimeError(
                f"the model returned logits for {logits.shape[0]} positions, expected "
                f"{kept_targets.shape[0]}: it does not support a boolean logits_to_keep"
            )
        if num_items_in_batch is None:
            loss = F.cross_entropy(logits.float(), kept_targets)
        else:  # as ForCausalLMLoss and Trainer.compute_loss do with a token count
            loss = F.cross_entropy(logits.float(), kept_targets, reduction="sum")
            loss = loss / (
                num_items_in_batch.to(loss.device) if torch.is_tensor(num_items_in_batch) else num_items_in_batch
            )
            if self.args.average_tokens_across_devices:
                loss = loss * (self.accelerator.num_processes // self.get_tp_size())
        return (loss, outputs) if return_outputs else loss


def check_sharded(model_wrapped: Any) -> None:
    """accelerate falls back to DDP where it cannot shard (e.g. on the CPU) without a word; a job
    that asked for FSDP stops at its first step instead of training unsharded."""
    from runner.train.model import ModelSetupError

    report = distributed.sharding_report(model_wrapped)
    if not report["sharded"]:
        raise ModelSetupError(
            f'resources.strategy = "fsdp", but the model was prepared as {report["kind"]} with every '
            f"parameter in every process ({report['local_elements']:,} of {report['global_elements']:,}): "
            'it is not sharded here; use strategy = "ddp"'
        )
