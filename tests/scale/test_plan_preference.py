"""`runner plan` for preference jobs: two replies per record in one padding-free row (the prompt once
when it is shared), the batch in parts of the token budget, the LM head on reply positions, and the
reference model's share of the peak (none when precomputed; a second set of weights for a copy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.commands import main
from runner.plan import BatchShape
from runner.plan.preference import PreferenceRows, passes_per_token, preference_batch, reference_kind
from runner.spec.model import JobSpec

PAIRS = [
    {
        "instruction": f"What is {i} + {i}?",
        "input": "",
        "chosen": f"{i} + {i} = {2 * i}.",
        "rejected": f"I cannot answer questions about {i}.",
    }
    for i in range(40)
]


def _plan(write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str], name: str, **sections: Any) -> dict:
    job = write_job(name, rows=PAIRS, **sections)
    assert main(["plan", str(job), "--json", "--no-calibrate"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_dpo_plan_counts_both_replies_the_shared_prompt_and_the_reference(
    write_job: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shared = _plan(write_job, capsys, "dpo", loss={"type": "dpo"}, train={"speed": {"token_budget": 0}})
    repeated = _plan(
        write_job, capsys, "dpo2", loss={"type": "dpo"}, train={"speed": {"token_budget": 0, "shared_prompt": False}}
    )
    assert shared["data"]["format"] == "alpaca-preference" and shared["data"]["train_examples"] == 40
    assert shared["data"]["peak_batch"][0] == 1  # always one padding-free row
    # the same replies, each prompt once instead of twice
    assert shared["data"]["train_tokens"] < repeated["data"]["train_tokens"]
    assert shared["data"]["trainable_tokens"] == repeated["data"]["trainable_tokens"]
    lora = shared["memory"]["methods"]["lora"]
    assert lora["reference"] > 0  # the adapter-off pass's logits, beside the policy's activations
    assert shared["memory"]["methods"]["full"]["reference"] == 0  # full fine-tuning: 'auto' precomputes
    precomputed = _plan(
        write_job, capsys, "dpo3", loss={"type": "dpo", "reference": "precompute"}, train={"speed": {"token_budget": 0}}
    )
    assert precomputed["memory"]["methods"]["lora"]["reference"] == 0
    other = precomputed["memory"]["methods"]["lora"]  # the runtime is this process's measured RSS: left out
    assert other["peak"] - other["runtime"] == lora["peak"] - lora["runtime"] - lora["reference"]
    copy = _plan(
        write_job,
        capsys,
        "dpo4",
        loss={"type": "dpo", "reference": "copy"},
        adapter={"method": "full"},
        train={"speed": {"token_budget": 0}},
    )
    weights = copy["memory"]["methods"]["full"]["gradients"]  # fp32: gradients are one copy of the weights
    assert copy["memory"]["methods"]["full"]["reference"] >= weights
    assert any("preference (dpo)" in note for note in shared["notes"])


def test_the_token_budget_bounds_the_largest_part() -> None:
    rows = PreferenceRows(row_lengths=(100, 120, 90, 110), reply_lengths=(40, 50, 30, 45))
    whole = preference_batch(rows, 4, 0)
    parts = preference_batch(rows, 4, 250)
    assert whole.peak_tokens == 420 and whole.peak_logit_tokens == 165
    assert parts.peak_tokens <= 250 and parts.peak_logit_tokens < whole.peak_logit_tokens
    assert parts.mean_tokens == whole.mean_tokens  # the same work per step, in smaller parts
    assert isinstance(parts, BatchShape) and parts.peak_rows == 1


def test_the_reference_and_kto_add_forward_passes_to_the_time() -> None:
    def spec(**loss: Any) -> JobSpec:
        return JobSpec.model_validate({"model": {"source": "local:m"}, "data": {"train": "t.jsonl"}, "loss": loss})

    dpo, simpo, kto = spec(type="dpo"), spec(type="simpo"), spec(type="kto")
    assert reference_kind(dpo, "lora") == "adapter-off" and reference_kind(dpo, "full") == "precompute"
    assert reference_kind(simpo, "lora") is None
    assert passes_per_token(simpo, None) == 1.0
    assert passes_per_token(dpo, "adapter-off") == pytest.approx(4 / 3)
    assert passes_per_token(dpo, "precompute") == 1.0
    assert passes_per_token(kto, "adapter-off") == pytest.approx(2.0)
