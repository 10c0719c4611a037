"""`runner data validate` on files written in each layout that LLaMA-Factory's, Axolotl's and TRL's dataset
documentation describe: every record reads, or the file is refused with the layout it looks like and the
setting that reads it. The records are written here from the documented shapes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.commands import main

TOOLS = [
    {
        "name": "get_weather",
        "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def t(value: str, kind: str = "text") -> dict[str, str]:
    return {"type": kind, "value": value}


LAYOUTS: dict[str, tuple[str, list[Any] | str]] = {
    # LLaMA-Factory data/README: alpaca with system and history
    "lf_alpaca.json": (
        "alpaca",
        [
            {
                "instruction": "Add the numbers",
                "input": "2 and 3",
                "output": "5",
                "system": "You are a calculator.",
                "history": [["What is 1 + 1?", "2"], ["And 2 + 2?", "4"]],
            }
        ],
    ),
    # LLaMA-Factory: sharegpt with function_call / observation and tools (glaive style)
    "lf_sharegpt_tools.json": (
        "sharegpt",
        [
            {
                "conversations": [
                    {"from": "human", "value": "Weather in Paris?"},
                    {
                        "from": "function_call",
                        "value": json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}),
                    },
                    {"from": "observation", "value": '{"temperature": 20}'},
                    {"from": "gpt", "value": "It is 20 degrees in Paris."},
                ],
                "system": "You help with the weather.",
                "tools": json.dumps(TOOLS),
            }
        ],
    ),
    # LLaMA-Factory: the OpenAI layout
    "lf_openai.json": (
        "messages",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello."},
                ]
            }
        ],
    ),
    # LLaMA-Factory v1: content as typed parts, per-message loss_weight
    "lf_v1_parts.jsonl": (
        "messages",
        [
            {
                "messages": [
                    {"role": "user", "content": [t("Introduce yourself.")], "loss_weight": 0.0},
                    {"role": "assistant", "content": [t("I am an AI assistant.")], "loss_weight": 1.0},
                ]
            }
        ],
    ),
    # LLaMA-Factory v1: reasoning parts with tools and tool calls
    "lf_v1_reasoning_tools.jsonl": (
        "messages",
        [
            {
                "tools": json.dumps(TOOLS),
                "messages": [
                    {"role": "system", "content": [t("You help with the weather.")], "loss_weight": 0.0},
                    {"role": "user", "content": [t("Weather in Paris?")], "loss_weight": 0.0},
                    {
                        "role": "assistant",
                        "content": [
                            t("I should look it up.", "reasoning"),
                            t(json.dumps({"name": "get_weather", "arguments": {"city": "Paris"}}), "tool_call"),
                        ],
                        "loss_weight": 1.0,
                    },
                    {"role": "tool", "content": [t('{"temperature": 20}')], "loss_weight": 0.0},
                    {
                        "role": "assistant",
                        "content": [t("20 degrees is mild.", "reasoning"), t("It is 20 degrees.")],
                        "loss_weight": 1.0,
                    },
                ],
            }
        ],
    ),
    # LLaMA-Factory: pre-training text
    "lf_pretrain.json": ("text", [{"text": "document one"}, {"text": "document two"}]),
    # plain text corpus
    "corpus.txt": ("text", "First document.\n\nSecond document.\n"),
    # Axolotl: template-free input_output
    "ax_input_output.jsonl": (
        "segments",
        [
            {
                "segments": [
                    {"label": True, "text": "<s>Hello\n"},
                    {"label": True, "text": "hi there!. "},
                    {"label": False, "text": "goodbye "},
                    {"label": True, "text": "farewell</s>"},
                ]
            }
        ],
    ),
    # Axolotl: completion
    "ax_completion.jsonl": ("text", [{"text": "first row"}, {"text": "second row"}]),
    # Axolotl: chat_template with per-message training flags
    "ax_chat_template.jsonl": (
        "sharegpt",
        [
            {
                "conversations": [
                    {"from": "system", "value": "You are an AI assistant.", "train": False},
                    {"from": "human", "value": "Hello", "train": False},
                    {"from": "assistant", "value": "Hello", "train": True},
                    {"from": "human", "value": "How are you?", "train": True},
                    {"from": "assistant", "value": "I'm doing very well, thank you!"},
                ]
            }
        ],
    ),
    # TRL: conversational prompt-completion, and conversational language modelling
    "trl_prompt_completion.jsonl": (
        "prompt-completion",
        [
            {
                "prompt": [{"role": "user", "content": "What color is the sky?"}],
                "completion": [{"role": "assistant", "content": "It is blue."}],
            }
        ],
    ),
    "trl_messages.jsonl": (
        "messages",
        [
            {
                "messages": [
                    {"role": "user", "content": "What color is the sky?"},
                    {"role": "assistant", "content": "It is blue."},
                ]
            }
        ],
    ),
}


def _write(folder: Path, name: str, content: list[Any] | str) -> Path:
    path = folder / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    elif name.endswith(".jsonl"):
        path.write_text("".join(json.dumps(r) + "\n" for r in content), encoding="utf-8")
    else:
        path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_record_of_a_documented_layout_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    fmt, content = LAYOUTS[name]
    path = _write(tmp_path, name, content)
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    count = 2 if isinstance(content, str) else len(content)
    assert out.startswith(f"format: {fmt} (") and f"{count} read, {count} usable, 0 bad" in out


def test_a_multimodal_file_is_refused_naming_the_setting_and_reads_with_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # LLaMA-Factory's multimodal layout (mllm_demo): <image> markers and an images list
    path = _write(
        tmp_path,
        "mllm.json",
        [
            {
                "messages": [
                    {"role": "user", "content": "<image>Who are they?"},
                    {"role": "assistant", "content": "Two footballers."},
                ],
                "images": ["mllm_demo_data/1.jpg"],
            }
        ],
    )
    assert main(["data", "validate", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"{path}[0]: holds 1 image or other media" in out and 'set data.images = "drop"' in out
    assert main(["data", "validate", "--data", "images=drop", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 read, 1 usable, 0 bad" in out
    assert "warning: 1 images (or other media) were dropped from 1 records" in out


@pytest.mark.parametrize(
    ("name", "record", "options", "message"),
    [
        (
            "trl_prompt_only.jsonl",
            {"prompt": [{"role": "user", "content": "What color is the sky?"}]},
            [],
            "it looks like prompt-only (a 'prompt' and no response): there is nothing to train on",
        ),
        (
            "lf_preference.json",
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"},
            },
            ["--format", "sharegpt"],
            "it looks like preference ('chosen' and 'rejected')",
        ),
    ],
)
def test_a_layout_that_is_not_supervised_fine_tuning_is_refused_with_what_it_looks_like(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    record: dict[str, Any],
    options: list[str],
    message: str,
) -> None:
    path = _write(tmp_path, name, [record])
    assert main(["data", "validate", *options, str(path)]) == 1
    captured = capsys.readouterr()
    assert message in captured.out + captured.err


def test_llamafactory_preference_data_reads_as_preference_pairs_when_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(
        tmp_path,
        "lf_preference.json",
        [
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"},
            }
        ],
    )
    assert main(["data", "validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("format: sharegpt-preference (") and "1 read, 1 usable, 0 bad" in out


def test_a_bad_data_setting_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "corpus.txt", "text")
    assert main(["data", "validate", "--data", "text_unit=sentence", str(path)]) == 2
    assert "--data: text_unit: Input should be 'paragraph', 'file' or 'line'" in capsys.readouterr().err
