"""runner.spec.convert: Axolotl and LLaMA-Factory configs, written here after the examples of the two
projects' documentation, become job files that validate; what has no counterpart is listed with a reason."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from runner.spec.convert import ConvertError, convert_config, to_toml, validate_text

# after LLaMA-Factory's examples/train_lora/llama3_lora_sft.yaml, with eval settings switched on
LLAMAFACTORY = """\
### model
model_name_or_path: meta-llama/Meta-Llama-3-8B-Instruct
trust_remote_code: true

### method
stage: sft
do_train: true
finetuning_type: lora
lora_rank: 8
lora_target: all

### dataset
dataset: identity,glaive_toolcall_en_demo
template: llama3
cutoff_len: 2048
max_samples: 1000
overwrite_cache: true
preprocessing_num_workers: 16

### output
output_dir: saves/llama3-8b/lora/sft
logging_steps: 10
save_steps: 500
plot_loss: true
overwrite_output_dir: true
report_to: none

### train
per_device_train_batch_size: 1
gradient_accumulation_steps: 8
learning_rate: 1.0e-4
num_train_epochs: 3.0
lr_scheduler_type: cosine
warmup_ratio: 0.1
bf16: true
ddp_timeout: 180000000

### eval
val_size: 0.1
per_device_eval_batch_size: 1
eval_strategy: steps
eval_steps: 500
"""
DATASET_INFO = {
    "identity": {"file_name": "identity.json"},
    "glaive_toolcall_en_demo": {
        "file_name": "glaive_toolcall_en_demo.json",
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "tools": "tools"},
    },
    "custom_chat": {
        "file_name": "chat.jsonl",
        "formatting": "sharegpt",
        "columns": {"messages": "dialog"},
        "tags": {"role_tag": "speaker", "content_tag": "text", "user_tag": "me", "assistant_tag": "bot"},
    },
    "alpaca_hub": {"hf_hub_url": "llamafactory/alpaca_en", "subset": "main", "split": "train"},
    "dpo_demo": {"file_name": "dpo.json", "ranking": True, "formatting": "sharegpt"},
}

# after Axolotl's examples (llama-3 QLoRA) and its dataset documentation
AXOLOTL = """\
base_model: NousResearch/Llama-3.2-1B
model_type: AutoModelForCausalLM
tokenizer_type: AutoTokenizer
load_in_4bit: true
strict: false

datasets:
  - path: data/chat.jsonl
    type: chat_template
    field_messages: conversations
    message_property_mappings:
      role: from
      content: value
    roles:
      assistant: [gpt, model]
    roles_to_train: ["assistant"]
    message_field_training: train
  - path: data/segments.jsonl
    type: input_output
  - path: mlabonne/FineTome-100k
    type: chat_template
    split: train
dataset_prepared_path: last_run_prepared
val_set_size: 0.05
output_dir: ./outputs/qlora-out

adapter: qlora
sequence_len: 4096
sample_packing: true
pad_to_sequence_len: true

lora_r: 32
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true

wandb_project: chat-runs

gradient_accumulation_steps: 4
micro_batch_size: 2
num_epochs: 1
optimizer: paged_adamw_32bit
lr_scheduler: cosine
learning_rate: 0.0002
train_on_inputs: false
bf16: auto
tf32: false
gradient_checkpointing: true
logging_steps: 1
flash_attention: true
warmup_steps: 10
evals_per_epoch: 4
weight_decay: 0.0
special_tokens:
  pad_token: "<|end_of_text|>"
"""


def _llamafactory(tmp_path: Path, config: str = LLAMAFACTORY) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "dataset_info.json").write_text(json.dumps(DATASET_INFO), encoding="utf-8")
    (data / "identity.json").write_text(json.dumps([{"instruction": "hi", "input": "", "output": "hello"}] * 8))
    (data / "glaive_toolcall_en_demo.json").write_text(
        json.dumps(
            [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}], "tools": "[]"}] * 8
        )
    )
    (data / "chat.jsonl").write_text(
        json.dumps({"dialog": [{"speaker": "me", "text": "q"}, {"speaker": "bot", "text": "a"}]}) + "\n"
    )
    path = tmp_path / "llama3_lora_sft.yaml"
    path.write_text(config, encoding="utf-8")
    return path


def _convert(config: Path, job: Path) -> tuple[str, dict[str, dict]]:
    conversion = convert_config(config, job_path=job)
    text = to_toml(conversion)
    assert validate_text(text, job) == []
    return text, tomllib.loads(text)


def test_a_llamafactory_config_becomes_a_job_that_validates(tmp_path: Path) -> None:
    text, job = _convert(_llamafactory(tmp_path), tmp_path / "jobs" / "x.toml")
    assert job["model"] == {"source": "hf:meta-llama/Meta-Llama-3-8B-Instruct", "trust_remote_code": True}
    assert job["data"] == {
        "train": ["../data/identity.json", "../data/glaive_toolcall_en_demo.json"],
        "format": "auto",
        "max_length": 2048,
        "max_records": 1000,
        "eval_fraction": 0.1,
    }
    assert job["adapter"] == {"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["all-linear"]}
    assert job["train"] == {
        "batch_size": 1,
        "grad_accum": 8,
        "log_every": 10,
        "save_every": 500,
        "learning_rate": 1e-4,
        "epochs": 3.0,
        "warmup_ratio": 0.1,
        "lr_scheduler": "cosine",
        "gradient_checkpointing": True,
    }
    assert job["eval"] == {"batch_size": 1, "every": 500} and job["resources"] == {"precision": "bf16"}
    # every key without a counterpart is listed, with its reason
    for key in (
        "do_train",
        "template",
        "overwrite_cache",
        "preprocessing_num_workers",
        "output_dir",
        "plot_loss",
        "overwrite_output_dir",
        "ddp_timeout",
    ):
        assert f"\n#   {key}: " in text
    assert "#   template: the model's own chat template (tokenizer_config.json) is used" in text
    # each value names where it came from, LLaMA-Factory's defaults included
    assert "alpha = 16  # lora_alpha unset: LLaMA-Factory's default (2 x lora_rank)" in text
    assert "max_length = 2048  # cutoff_len" in text


def test_dataset_info_columns_tags_and_hub_entries_become_fields_roles_and_hf_sources(tmp_path: Path) -> None:
    config = LLAMAFACTORY.replace(
        "dataset: identity,glaive_toolcall_en_demo", "dataset: custom_chat\neval_dataset: alpaca_hub"
    ).replace("val_size: 0.1\n", "")
    _, job = _convert(_llamafactory(tmp_path, config), tmp_path / "x.toml")
    assert job["data"]["train"] == ["data/chat.jsonl"] and job["data"]["format"] == "auto"  # alpaca eval
    assert job["data"]["eval"] == ["hf:llamafactory/alpaca_en?split=train&subset=main"]
    assert job["data"]["fields"] == {"role": "speaker", "content": "text", "conversations": "dialog"}
    assert job["data"]["roles"] == {"user": ["me"], "assistant": ["bot"]}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("stage: sft", "stage: dpo"),
            "stage: 'dpo': only supervised fine-tuning (sft) and continued pre-training (pt)",
        ),
        (
            ("stage: sft", "stage: kto"),
            (
                'a preference job of its own: write it by hand with [loss] type = "kto" '
                "(jobs/quickstart-dpo.toml is an example)"
            ),
        ),
        (
            ("stage: sft", "stage: ppo"),
            "stage: 'ppo': only supervised fine-tuning (sft) and continued pre-training (pt)",
        ),
        (("dataset: identity,glaive_toolcall_en_demo", "dataset: nowhere"), "dataset: 'nowhere' is not a data set of"),
        (
            ("dataset: identity,glaive_toolcall_en_demo", "dataset: dpo_demo"),
            (
                "data set 'dpo_demo' is a preference data set (ranking: true): it trains a preference job (loss.type = "
                '"dpo", "ipo", "orpo", "simpo" or "kto", data.format = "auto" reads it)'
            ),
        ),
    ],
)
def test_a_llamafactory_config_that_cannot_become_a_job_says_why(
    tmp_path: Path, edit: tuple[str, str], message: str
) -> None:
    with pytest.raises(ConvertError, match=re.escape(message)):
        convert_config(_llamafactory(tmp_path, LLAMAFACTORY.replace(*edit)), job_path=tmp_path / "x.toml")


def _axolotl(tmp_path: Path, config: str = AXOLOTL) -> Path:
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "chat.jsonl").write_text(
        json.dumps({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) + "\n"
    )
    (data / "segments.jsonl").write_text(json.dumps({"segments": [{"label": True, "text": "x"}]}) + "\n")
    path = tmp_path / "qlora.yml"
    path.write_text(config, encoding="utf-8")
    return path


def test_an_axolotl_config_becomes_a_job_that_validates(tmp_path: Path) -> None:
    text, job = _convert(_axolotl(tmp_path), tmp_path / "jobs" / "qlora.toml")
    assert job["model"] == {"source": "hf:NousResearch/Llama-3.2-1B", "attn_implementation": "flash_attention_2"}
    assert job["data"] == {
        "train": ["../data/chat.jsonl", "../data/segments.jsonl", "hf:mlabonne/FineTome-100k?split=train"],
        "format": "auto",
        "max_length": 4096,
        "packing": True,
        "eval_fraction": 0.05,
        "fields": {"loss_weight": "train"},
        "roles": {"assistant": ["model"]},
    }
    assert job["adapter"] == {
        "method": "qlora",
        "quant_type": "nf4",
        "double_quant": True,
        "r": 32,
        "alpha": 16,
        "dropout": 0.05,
        "target_modules": ["all-linear"],
    }
    assert job["train"]["batch_size"] == 2 and job["train"]["grad_accum"] == 4 and job["train"]["epochs"] == 1.0
    assert "optimizer" not in job["train"]
    assert job["resources"] == {"precision": "auto", "device": "cuda"}
    assert job["tracking"] == {"project": "chat-runs", "report_to": ["wandb"]}
    for key, reason in (
        ("optimizer", "'paged_adamw_32bit' is not one of adamw_torch"),
        ("special_tokens", "the tokenizer's own special tokens are used"),
        ("warmup_steps", "warm-up is a share of the steps here"),
        ("dataset_prepared_path", "tokenised data is cached by content"),
    ):
        assert f"#   {key}: {reason}" in text
    assert "QLoRA trains on a CUDA device" in text


def test_the_tool_is_recognised_or_named(tmp_path: Path) -> None:
    unknown = tmp_path / "mystery.yaml"
    unknown.write_text("foo: 1\nbar: 2\n", encoding="utf-8")
    with pytest.raises(ConvertError, match=r"cannot tell which tool this config is for .* --from axolotl"):
        convert_config(unknown)
    conversion = convert_config(_axolotl(tmp_path), job_path=tmp_path / "x.toml", tool="axolotl")
    assert conversion.tool == "Axolotl"


def test_broken_yaml_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("base_model: x\ndatasets:\n  - path: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConvertError, match=r"broken.yaml:\d+:\d+: not valid YAML"):
        convert_config(path)


# ---- the command -----------------------------------------------------------------------------------


def test_runner_convert_writes_a_job_that_runner_validate_accepts_and_never_overwrites_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.commands import main

    config = _axolotl(tmp_path)
    job = tmp_path / "jobs" / "qlora.toml"
    assert main(["convert", str(config), "--to", str(job)]) == 0
    assert "keys not carried over (listed at the top of the file, with the reason)" in capsys.readouterr().err
    assert main(["validate", str(job)]) == 0
    before = job.read_text()
    assert main(["convert", str(config), "--to", str(job)]) == 2
    assert "exists; choose another --to, or --force to overwrite it" in capsys.readouterr().err
    assert job.read_text() == before
    assert main(["convert", str(config), "--to", str(job), "--force"]) == 0


def test_a_conversion_that_would_not_validate_writes_nothing_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.commands import main

    config = _axolotl(tmp_path, AXOLOTL.replace("lora_r: 32", "lora_r: 5000"))
    job = tmp_path / "jobs" / "x.toml"
    assert main(["convert", str(config), "--to", str(job)]) == 1
    err = capsys.readouterr().err
    assert "adapter.r: expected a value <= 1024, found integer 5000" in err
    assert "the converted job does not validate; nothing was written" in err and not job.exists()


def test_without_to_the_job_is_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from runner.commands import main

    config = _llamafactory(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert main(["convert", str(config), "--from", "llamafactory"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Converted by `runner convert` from the LLaMA-Factory config")
    assert tomllib.loads(out)["data"]["train"] == ["data/identity.json", "data/glaive_toolcall_en_demo.json"]


@pytest.mark.parametrize("tool", ["llamafactory", "axolotl"])
def test_counts_that_are_not_positive_whole_numbers_are_listed_and_a_boolean_seed_is_not_a_seed(
    tmp_path: Path, tool: str
) -> None:
    make, batch_key = (
        (_llamafactory, "per_device_train_batch_size") if tool == "llamafactory" else (_axolotl, "micro_batch_size")
    )
    base = LLAMAFACTORY if tool == "llamafactory" else AXOLOTL
    lines = [
        line
        for line in base.splitlines()
        if not line.startswith((f"{batch_key}:", "seed:", "max_steps:", "learning_rate:"))
    ]
    config = "\n".join([*lines, f"{batch_key}: 0.5", "seed: true", "max_steps: -1", "learning_rate: true"]) + "\n"
    text, job = _convert(make(tmp_path, config), tmp_path / "jobs" / "x.toml")
    assert "batch_size" not in job["train"] and "seed" not in job["train"] and "learning_rate" not in job["train"]
    assert f"#   {batch_key}: 0.5 is not a positive whole number" in text
    assert "#   seed: True is not a positive whole number" in text
    if tool == "llamafactory":  # -1 is the Trainer's "not set" for max_steps: nothing to say
        assert "max_steps" not in text and "max_steps" not in job["train"]
    else:
        assert "#   max_steps: -1 is not a positive whole number" in text
