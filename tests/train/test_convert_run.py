"""A converted Axolotl and LLaMA-Factory config each validates and runs on a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.commands import main
from runner.outputs.runs import list_runs
from runner.spec.convert import convert_config, to_toml

CHAT = [
    {"conversations": [{"from": "human", "value": f"What is {i} + {i}?"}, {"from": "gpt", "value": f"{2 * i}."}]}
    for i in range(12)
]
SEGMENTS = [
    {"segments": [{"label": False, "text": f"Question: {i} + {i}? "}, {"label": True, "text": f"{2 * i}"}]}
    for i in range(12)
]
ALPACA = [{"instruction": f"What is {i} + {i}?", "input": "", "output": f"{2 * i}."} for i in range(12)]


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def _run(config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict:
    job = tmp_path / "jobs" / f"{config.stem}.toml"
    job.parent.mkdir(exist_ok=True)
    job.write_text(to_toml(convert_config(config, job_path=job)), encoding="utf-8")
    assert main(["validate", str(job)]) == 0, capsys.readouterr()
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0, capsys.readouterr()
    (run,) = list_runs(runs, job.stem)
    return json.loads((run / "status.json").read_text())


def test_a_converted_axolotl_config_runs(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _jsonl(tmp_path / "data" / "chat.jsonl", CHAT)
    _jsonl(tmp_path / "data" / "segments.jsonl", SEGMENTS)
    config = tmp_path / "lora.yml"
    config.write_text(
        f"""\
base_model: {tiny_model_dir}
datasets:
  - path: data/chat.jsonl
    type: chat_template
    field_messages: conversations
    message_property_mappings:
      role: from
      content: value
  - path: data/segments.jsonl
    type: input_output
val_set_size: 0.25
output_dir: ./outputs/lora-out
adapter: lora
sequence_len: 128
lora_r: 4
lora_alpha: 8
lora_target_linear: true
micro_batch_size: 4
gradient_accumulation_steps: 1
max_steps: 2
learning_rate: 0.001
optimizer: adamw_torch
eval_steps: 2
""",
        encoding="utf-8",
    )
    status = _run(config, tmp_path, capsys)
    assert status["state"] == "succeeded" and status["step"] == 2
    assert status["extra"]["data"]["format"] == "mixed"  # each file detected on its own
    assert status["adapter"]["r"] == 4


def test_a_converted_llamafactory_config_runs(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    _jsonl(data / "qa.jsonl", ALPACA)
    (data / "dataset_info.json").write_text(json.dumps({"qa": {"file_name": "qa.jsonl"}}), encoding="utf-8")
    config = tmp_path / "sft.yaml"
    config.write_text(
        f"""\
model_name_or_path: {tiny_model_dir}
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 4
lora_target: all
dataset: qa
template: qwen
cutoff_len: 128
output_dir: saves/tiny
per_device_train_batch_size: 4
gradient_accumulation_steps: 1
learning_rate: 1.0e-3
max_steps: 2
disable_gradient_checkpointing: true
""",
        encoding="utf-8",
    )
    status = _run(config, tmp_path, capsys)
    assert status["state"] == "succeeded" and status["step"] == 2
    assert status["extra"]["data"]["format"] == "alpaca" and status["adapter"]["alpha"] == 8
