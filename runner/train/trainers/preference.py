"""The preference trainer: DPO, IPO, ORPO, SimPO and KTO through the Trainer's public methods.

- `training_step`: a batch comes in parts of at most [train.speed] token_budget row tokens
  (runner.data.preference_collate), each forwarded and backpropagated on its own with the batch's
  totals, so the parts' gradients add up to the batch's (KTO's reference point is computed over
  the whole batch first);
- `compute_loss`: the policy's reply log-probabilities in one padding-free pass (the prompt once
  per pair, the LM head on reply positions only), the reference's (precomputed, or the model with
  its adapter off, or a frozen copy), and the job's preference loss;
- `log`: the step's preference metrics (rewards of the chosen and rejected replies, reward
  accuracy and margin, log-probabilities, and the loss's own: ORPO's NLL and log-odds ratio,
  KTO's KL estimate) go into the same log line as the loss;
- `evaluate`: those metrics and the loss over the held-out pairs, plus `logp_accuracy` (the share
  of pairs whose chosen reply the policy gives the higher per-token log-probability: meaningful
  before training too, when every reward is still 0).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from accelerate.utils import send_to_device
from transformers import TrainerCallback

from runner.outputs.status import StatusFile
from runner.train.losses.preference import BatchTotals, KTOLoss, PreferenceOutput, SequenceLogps, UnpairedLogps
from runner.train.reference import Reference, reply_logps
from runner.train.trainers.base import RunTrainer, TokenCounter


class PreferenceTrainer(RunTrainer):
    """`loss`: the preference loss module; `reference`: how to score the reference model's
    log-probabilities on the fly (None: they are precomputed on the examples, or the loss needs none)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean (or a part's share of it)

    def __init__(self, *args: Any, loss: torch.nn.Module, reference: Reference | None = None, **kwargs: Any) -> None:
        self.preference_loss = loss
        self.reference = reference
        self.unpaired = isinstance(loss, KTOLoss)
        self.step_metrics = PreferenceMetrics()
        super().__init__(*args, token_counter=PreferenceTokenCounter(), **kwargs)

    # --- training ---------------------------------------------------------------------------

    def training_step(self, model: Any, inputs: dict[str, Any], num_items_in_batch: Any = None) -> Any:
        parts = inputs["parts"]
        shared: dict[str, Any] = {}
        if len(parts) > 1:
            shared["totals"] = BatchTotals(int(inputs["items"]), inputs["chosen_tokens"])
            if self.unpaired:  # KTO's reference point is the whole batch's, also for its first part
                parts = send_to_device(parts, self.args.device)
                shared["kl_ratio"] = torch.cat([self.kl_ratio(model, part) for part in parts])
        total = None
        for part in parts:
            loss = super().training_step(model, {**part, **shared}, num_items_in_batch)
            total = loss if total is None else total + loss
        return total

    def compute_loss(
        self, model: Any, inputs: dict[str, Any], return_outputs: bool = False, num_items_in_batch: Any = None
    ) -> Any:
        if "parts" in inputs:  # a whole batch (prediction, tools): its one part
            (inputs,) = inputs["parts"]
        out, policy = self.score(model, inputs)
        if model.training:
            self.step_metrics.add(out, policy)
        return (out.loss, out) if return_outputs else out.loss

    def score(self, model: Any, part: dict[str, Any]) -> tuple[PreferenceOutput, SequenceLogps | UnpairedLogps]:
        """The loss and the policy's log-probabilities of one part of a batch."""
        row = part["policy"]
        logps, tokens = reply_logps(model, row), row["reply_tokens"]
        reference = self.reference_logps(model, part)
        totals = part.get("totals")
        if self.unpaired:
            unpaired = UnpairedLogps(logps, tokens, part["label"])
            kl = part.get("kl_ratio")
            if kl is None:
                kl = self.kl_ratio(model, part)
            unpaired_ref = UnpairedLogps(self.required_reference(model, part)[0::2], tokens, part["label"])
            return self.preference_loss(unpaired, unpaired_ref, kl, totals=totals), unpaired
        policy = SequenceLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])
        ref = (
            SequenceLogps(reference[0::2], reference[1::2], tokens[0::2], tokens[1::2])
            if reference is not None
            else None
        )
        return self.preference_loss(policy, ref, totals=totals), policy

    def reference_logps(self, model: Any, part: dict[str, Any]) -> torch.Tensor | None:
        """The reference model's log-probabilities of the part's replies (per pair: chosen,
        rejected; per unpaired example: completion, KL completion), kept on the part for reuse."""
        if "ref_logps" not in part:
            if self.reference is None:
                return None
            row = part.get("reference", part["policy"])
            part["ref_logps"] = self.reference(self.accelerator.unwrap_model(model), row)
        return part["ref_logps"]

    def required_reference(self, model: Any, part: dict[str, Any]) -> torch.Tensor:
        """`reference_logps` for the losses that cannot do without them (KTO)."""
        reference = self.reference_logps(model, part)
        if reference is None:
            raise ValueError("this loss compares with a reference model, and the run has none")
        return reference

    def kl_ratio(self, model: Any, part: dict[str, Any]) -> torch.Tensor:
        """KTO: the policy-minus-reference log-ratio of each prompt with another example's
        completion, averaged over every process's batch (no gradient): [1]."""
        with torch.no_grad():
            policy = reply_logps(self.accelerator.unwrap_model(model), part["kl"])
        ratio = policy - self.required_reference(model, part)[1::2]
        if self.args.world_size > 1:
            both = self.accelerator.reduce(
                torch.stack([ratio.sum(), torch.tensor(float(ratio.numel()), device=ratio.device)]), "sum"
            )
            return (both[0] / both[1]).reshape(1)
        return ratio.mean().reshape(1)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log line: the preference metrics of the steps since the last one
            logs.update(self.step_metrics.read(self.accelerator))
        super().log(logs, start_time)

    def floating_point_ops(self, inputs: dict[str, Any]) -> int:
        """6 x parameters x tokens forwarded (the batch is not in the stock `input_ids` form)."""
        tokens = sum(int(part["policy"]["input_ids"].numel()) for part in inputs["parts"])
        count = getattr(self.model, "num_parameters", None)
        return 6 * tokens * (count(exclude_embeddings=True) if count else 0)

    # --- evaluation -------------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """The loss and the preference metrics over the held-out examples, logged like the
        Trainer's own evaluation (and reported to callbacks with on_evaluate)."""
        started = time.perf_counter()
        model: Any = self.model
        was_training = model.training
        model.eval()
        metrics = PreferenceMetrics()
        with torch.no_grad():
            for batch in self.get_eval_dataloader(eval_dataset):
                batch = send_to_device(batch, self.args.device)
                for part in batch["parts"]:
                    out, policy = self.score(model, part)
                    metrics.add(out, policy, with_loss=True)
        model.train(was_training)
        values = {f"{metric_key_prefix}_{name}": value for name, value in metrics.read(self.accelerator).items()}
        values[f"{metric_key_prefix}_runtime"] = round(time.perf_counter() - started, 3)
        self.log(dict(values))  # Trainer.log adds "epoch" to the dict it is given
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, values)
        return values


class PreferenceMetrics:
    """Sums of preference metrics over batches, read as means (summed over every process first).

    Kept as tensors until read, so logging costs one device sync per log line, not one per step."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, float] = {}

    def _add(self, name: str, values: torch.Tensor) -> None:
        if values.numel() == 0:
            return
        values = values.detach().float()
        self.sums[name] = self.sums[name] + values.sum() if name in self.sums else values.sum()
        self.counts[name] = self.counts.get(name, 0.0) + values.numel()

    def add(self, out: PreferenceOutput, policy: SequenceLogps | UnpairedLogps, *, with_loss: bool = False) -> None:
        self._add("reward_chosen", out.chosen_rewards)
        self._add("reward_rejected", out.rejected_rewards)
        if isinstance(policy, SequenceLogps):
            self._add("reward_accuracy", (out.chosen_rewards > out.rejected_rewards).float())
            self._add("logp_chosen", policy.chosen)
            self._add("logp_rejected", policy.rejected)
            chosen_mean, rejected_mean = policy.mean()
            self._add("logp_accuracy", (chosen_mean > rejected_mean).float())
            items = policy.chosen.numel()
        else:
            desirable = policy.desirable.bool()
            self._add("logp_chosen", policy.logps[desirable])
            self._add("logp_rejected", policy.logps[~desirable])
            items = policy.logps.numel()
        if with_loss:  # a batch's mean loss, weighted by its items
            self._add("loss", out.loss.detach().float().reshape(1).repeat(items))
        for name, value in out.extra.items():
            self._add(name, value.detach().float().reshape(1))

    def read(self, accelerator: Any = None) -> dict[str, float]:
        """The means (and the reward margin) since the last read; then starts over."""
        names = sorted(self.sums)
        if not names:
            return {}
        sums = torch.stack([self.sums[n] for n in names])
        counts = torch.tensor([self.counts[n] for n in names], device=sums.device)
        if accelerator is not None and accelerator.num_processes > 1:
            sums, counts = accelerator.reduce(sums, "sum"), accelerator.reduce(counts, "sum")
        means = {n: float(s / c) for n, s, c in zip(names, sums.tolist(), counts.tolist(), strict=True)}
        if "reward_chosen" in means and "reward_rejected" in means:
            means["reward_margin"] = means["reward_chosen"] - means["reward_rejected"]
        self.sums, self.counts = {}, {}
        return {k: round(v, 6) for k, v in means.items()}


class PreferenceTokenCounter(TokenCounter):
    """Tokens of the batch's sequences as they would be computed one by one (the prompt once per
    reply), whatever the layout: throughput then compares across layouts and with other tools."""

    def add(self, inputs: dict[str, Any]) -> None:
        self._total = self._total + inputs["tokens"]


SHOWN = ("reward_accuracy", "reward_margin", "logp_accuracy", "loss", "kl", "nll")


class PreferenceReporter(TrainerCallback):
    """The latest preference metrics in status.json (`extra.preference` for training, `extra.eval`
    for the held-out pairs), and each evaluation printed."""

    def __init__(self, status: StatusFile, primary: str) -> None:
        self.status, self.primary = status, primary

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or "loss" not in logs or not state.is_world_process_zero:
            return
        values = {
            k: logs[k]
            for k in (
                "reward_accuracy",
                "reward_margin",
                "reward_chosen",
                "reward_rejected",
                "logp_chosen",
                "logp_rejected",
                "kl",
                "nll",
            )
            if k in logs
        }
        if values:
            self.status.update(extra={"preference": {"step": state.global_step, **values}})

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if not metrics or not state.is_world_process_zero:
            return
        values = {k.removeprefix("eval_"): round(v, 6) for k, v in metrics.items() if k != "eval_runtime"}
        shown = " ".join(f"{k}={values[k]:.4f}" for k in SHOWN if k in values)
        print(f"eval at step {state.global_step}: {shown}", flush=True)
        latest = {"step": state.global_step, **values}
        # the baseline (step 0) stays in view while the run goes on; the recipe records the final pair
        self.status.update(extra={"eval": latest, **({"eval_before": values} if state.global_step == 0 else {})})
