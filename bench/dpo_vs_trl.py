"""Our DPO (and IPO) loss and rewards against TRL's own code, on the same log-probabilities.

Two checks, run with the benchmark venv (TRL is a peer, never a dependency of the runner):
    PYTHONPATH=. /work/bench-venv/bin/python bench/dpo_vs_trl.py

1. Formulas. TRL's `DPOTrainer._compute_loss` is run on batches whose per-token log-probabilities
   are given (a stub model returns them; reference log-probabilities come in precomputed, as with
   TRL's precompute_ref_log_probs), and its loss and its logged rewards (chosen, rejected, accuracy,
   margin) are compared with runner.train.losses.preference on the same summed log-probabilities.
2. End to end. A tiny random Llama with a LoRA adapter (random, so the policy differs from its
   reference), four pairs tokenised by TRL's own dataset preparation: TRL's loss, rewards and
   log-probabilities (padded rows, its fused LM head, the adapter switched off for the reference)
   against the runner's (one padding-free row, the prompt shared, the LM head on reply positions).

Prints the largest differences and exits non-zero when one exceeds its tolerance.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import torch

from runner.train.losses.preference import DPOLoss, IPOLoss, SequenceLogps

TOLERANCE = {"formula": 1e-6, "end-to-end": 1e-4}


class GivenLogps(torch.nn.Module):
    """A 'model' that returns the per-token log-probabilities it was given, shaped as TRL's fused
    LM head output (log_probs, entropy, mean_logits, is_top1 over positions 1..L)."""

    def __init__(self, per_token: torch.Tensor) -> None:
        super().__init__()
        self.per_token = per_token

    def forward(self, **kwargs: Any) -> Any:
        zeros = torch.zeros_like(self.per_token)
        return SimpleNamespace(
            log_probs=self.per_token,
            entropy=zeros,
            mean_logits=zeros,
            is_top1=torch.zeros_like(self.per_token, dtype=torch.bool),
        )


def _bare_trainer(loss_type: str, beta: float) -> Any:
    """A DPOTrainer with only what `_compute_loss` reads (no model, no data set up)."""
    from accelerate import Accelerator
    from trl import DPOTrainer

    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.accelerator = Accelerator(cpu=True)
    trainer.model = SimpleNamespace(training=True)
    trainer.aux_loss_enabled, trainer.ld_alpha, trainer.precompute_ref_logps = False, None, True
    trainer.f_divergence_type, trainer.loss_types, trainer.loss_weights = "reverse_kl", [loss_type], [1.0]
    trainer.beta, trainer.label_smoothing, trainer.use_weighting = beta, 0.0, False
    trainer.f_alpha_divergence_coef = 1.0
    trainer._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
    trainer._total_train_tokens, trainer._tp_size = 0, 1
    return trainer


def check_formulas(seed: int, loss_type: str, beta: float) -> dict[str, float]:
    generator = torch.Generator().manual_seed(seed)
    pairs, length = 6, 40
    prompt = torch.randint(3, 12, (pairs,), generator=generator)
    chosen_len = torch.randint(4, 25, (pairs,), generator=generator)
    rejected_len = torch.randint(4, 25, (pairs,), generator=generator)
    completion = torch.zeros(2 * pairs, length, dtype=torch.long)
    for i in range(pairs):
        p = int(prompt[i])
        completion[i, p : p + int(chosen_len[i])] = 1
        completion[pairs + i, p : p + int(rejected_len[i])] = 1
    per_token = -torch.rand(2 * pairs, length - 1, generator=generator, dtype=torch.float64).float() * 3
    per_token = per_token * completion[:, 1:]  # TRL's fused head gives 0 outside the completion
    ref = -torch.rand(2 * pairs, generator=generator).float() * 40 - 5
    inputs = {
        "input_ids": torch.ones(2 * pairs, length, dtype=torch.long),
        "attention_mask": (
            torch.arange(length) < (prompt.repeat(2) + torch.cat([chosen_len, rejected_len]))[:, None]
        ).long(),
        "completion_mask": completion,
        "ref_chosen_logps": ref[:pairs],
        "ref_rejected_logps": ref[pairs:],
    }
    trainer = _bare_trainer(loss_type, beta)
    trl_loss = trainer._compute_loss(GivenLogps(per_token), inputs, return_outputs=False)
    logps = per_token.sum(dim=1)
    tokens = completion.sum(dim=1)
    policy = SequenceLogps(logps[:pairs], logps[pairs:], tokens[:pairs], tokens[pairs:])
    reference = SequenceLogps(ref[:pairs], ref[pairs:], tokens[:pairs], tokens[pairs:])
    ours = (DPOLoss(beta=beta) if loss_type == "sigmoid" else IPOLoss(beta=beta))(policy, reference)
    # relative for the loss: IPO's squared margins run to ~25, where float32 rounding alone is ~1e-6
    diffs = {"loss": abs(float(trl_loss) - float(ours.loss)) / max(1.0, abs(float(ours.loss)))}
    if loss_type == "sigmoid":  # TRL's IPO logs summed-log-ratio rewards; ours are per token (IPO's own scale)
        metrics = trainer._metrics["train"]
        margin = ours.chosen_rewards - ours.rejected_rewards
        diffs.update(
            {
                "rewards/chosen": abs(metrics["rewards/chosen"][-1] - float(ours.chosen_rewards.mean())),
                "rewards/rejected": abs(metrics["rewards/rejected"][-1] - float(ours.rejected_rewards.mean())),
                "rewards/accuracies": abs(metrics["rewards/accuracies"][-1] - float((margin > 0).float().mean())),
                "rewards/margins": abs(metrics["rewards/margins"][-1] - float(margin.mean())),
            }
        )
    return diffs


def check_end_to_end() -> dict[str, float]:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import DPOConfig, DPOTrainer

    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    from runner.data.preference_collate import pack_groups
    from runner.train.reference import AdapterOff, reply_logps
    from runner.train.shared_prompt import use_shared_prompt_sdpa
    from tests.data.helpers import make_tokenizer

    tokenizer = make_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    base = LlamaForCausalLM._from_config(config, attn_implementation="sdpa")
    base.config.use_cache = False
    rows = [
        {
            "prompt": [{"role": "user", "content": q}],
            "chosen": [{"role": "assistant", "content": c}],
            "rejected": [{"role": "assistant", "content": r}],
        }
        for q, c, r in [
            ("What is the capital of France?", "The capital of France is Paris.", "I do not know."),
            ("Hello!", "Hello! How can I help you today?", "What?"),
            ("Translate to French: good morning.", "Bonjour.", "Good morning."),
            ("Describe a process of making crepes.", "Mix flour, eggs and milk, then cook thin layers.", "No."),
        ]
    ]
    args = DPOConfig(
        output_dir="/tmp/dpo-vs-trl",
        per_device_train_batch_size=4,
        beta=0.1,
        report_to="none",
        use_cpu=True,
        bf16=False,
        max_length=256,
        disable_dropout=True,
        gradient_checkpointing=False,
    )
    # TRL's own LoRA set-up (peft_config): its reference is then the base, the adapter switched off, as the
    # runner's; the adapter's B matrices are randomised afterwards so that the policy differs from it
    trainer = DPOTrainer(
        model=base,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"),
    )
    model = trainer.model
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.1)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    model.eval()
    with torch.no_grad():
        trl_loss = float(trainer.compute_loss(model, batch))
    metrics = {k: v[-1] for k, v in trainer._metrics["eval"].items()}

    use_shared_prompt_sdpa(model.get_base_model())
    examples = [trainer.train_dataset[i] for i in range(4)]
    row = pack_groups([(e["prompt_ids"], (e["chosen_ids"], e["rejected_ids"])) for e in examples], shared_prompt=True)
    with torch.no_grad():
        logps = reply_logps(model, row)
        ref = AdapterOff()(model, row)
    tokens = row["reply_tokens"]
    policy = SequenceLogps(logps[0::2], logps[1::2], tokens[0::2], tokens[1::2])
    reference = SequenceLogps(ref[0::2], ref[1::2], tokens[0::2], tokens[1::2])
    ours = DPOLoss(beta=0.1)(policy, reference)
    return {
        "loss": abs(trl_loss - float(ours.loss)),
        "logps/chosen": abs(metrics["logps/chosen"] - float(policy.chosen.mean())),
        "logps/rejected": abs(metrics["logps/rejected"] - float(policy.rejected.mean())),
        "rewards/chosen": abs(metrics["rewards/chosen"] - float(ours.chosen_rewards.mean())),
        "rewards/rejected": abs(metrics["rewards/rejected"] - float(ours.rejected_rewards.mean())),
        "rewards/margins": abs(
            metrics["rewards/margins"] - float((ours.chosen_rewards - ours.rejected_rewards).mean())
        ),
    }


def main() -> int:
    worst: dict[str, float] = defaultdict(float)
    for seed in range(20):
        for loss_type, beta in (("sigmoid", 0.1), ("sigmoid", 0.5), ("ipo", 0.1)):
            for name, diff in check_formulas(seed, loss_type, beta).items():
                key = f"formula {loss_type} {name}"
                worst[key] = max(worst[key], diff)
    for name, diff in check_end_to_end().items():
        worst[f"end-to-end {name}"] = diff
    failed = False
    for key, diff in sorted(worst.items()):
        limit = TOLERANCE[key.split()[0]]
        failed |= diff > limit
        print(f"{'FAIL' if diff > limit else 'ok  '} {key}: max |TRL - runner| = {diff:.2e} (tolerance {limit:g})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
