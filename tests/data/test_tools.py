"""Tools in prompts: a template that renders them gets them; otherwise the system prompt (render),
nothing (drop, counted) or a bad record (refuse); tool calls follow the template too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.data import IGNORE_INDEX, RecordError, build_examples, read_records
from runner.data.causal import EncodeOptions, encode
from runner.data.conversation import Conversation
from runner.data.tools import TOOLS_PROMPT_HEAD, TOOLS_PROMPT_TAIL, template_features, tools_prompt

from .helpers import SMOLLM2_TEMPLATE, make_tokenizer, write_json

TOOLS = [
    {
        "name": "search_recipes",
        "description": "Search for recipes",
        "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}},
    }
]
MESSAGES = [
    {"role": "system", "content": "You can cook."},
    {"role": "user", "content": "I have chicken and rice."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "search_recipes", "arguments": {"ingredients": ["rice"]}}}
        ],
    },
    {"role": "tool", "content": '{"recipes": []}'},
    {"role": "assistant", "content": "No recipes."},
]
# a template that renders tools and tool calls itself, as Qwen2.5's and Llama 3.1's do
TOOL_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\nTOOLS:' }}{% for t in tools %}{{ t.function.name + ';' }}{% endfor %}"
    "{{ '<|im_end|>\n' }}{% endif %}"
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] }}"
    "{% if m.tool_calls %}{% for c in m.tool_calls %}{{ 'CALL ' + c.function.name }}{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def conversation() -> Conversation:
    return Conversation([dict(m) for m in MESSAGES], TOOLS)


def test_the_template_is_probed_for_what_it_renders(tokenizer: Any) -> None:
    assert template_features(tokenizer, SMOLLM2_TEMPLATE).tools is False
    assert template_features(tokenizer, SMOLLM2_TEMPLATE).tool_calls is False
    features = template_features(tokenizer, TOOL_TEMPLATE)
    assert features.tools and features.tool_calls and features.reasoning_key is None


def test_tools_a_template_cannot_render_go_into_the_system_prompt_and_the_token_count_grows_by_them(
    tokenizer: Any,
) -> None:
    rendered = encode(tokenizer, conversation(), EncodeOptions(tools="render"))
    dropped = encode(tokenizer, conversation(), EncodeOptions(tools="drop"))
    assert (rendered.tools, dropped.tools) == ("system-prompt", "dropped")
    block = tools_prompt(TOOLS)
    assert block == (
        TOOLS_PROMPT_HEAD + "\n" + json.dumps({"type": "function", "function": TOOLS[0]}) + TOOLS_PROMPT_TAIL
    )
    text, without = tokenizer.decode(rendered.input_ids), tokenizer.decode(dropped.input_ids)
    assert text == without.replace("You can cook.", "You can cook.\n\n" + block, 1)
    growth = len(rendered.input_ids) - len(dropped.input_ids)
    assert abs(growth - len(tokenizer("\n\n" + block, add_special_tokens=False)["input_ids"])) <= 2
    # the definitions are prompt: the trained tokens are the same either way
    trained = [t for t, label in zip(rendered.input_ids, rendered.labels, strict=True) if label != IGNORE_INDEX]
    assert trained == [t for t, label in zip(dropped.input_ids, dropped.labels, strict=True) if label != IGNORE_INDEX]
    assert tokenizer.decode(trained) == (
        '<tool_call>\n{"name": "search_recipes", "arguments": {"ingredients": '
        '["rice"]}}\n</tool_call><|im_end|>No recipes.<|im_end|>'
    )


def test_without_a_system_message_the_tools_block_is_the_system_prompt(tokenizer: Any) -> None:
    conv = Conversation([dict(m) for m in MESSAGES[1:]], TOOLS)
    text = tokenizer.decode(encode(tokenizer, conv).input_ids)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert "named SmolLM" not in text  # the template's default system prompt gives way


def test_a_template_that_renders_tools_gets_them_and_the_calls_as_they_are() -> None:
    tokenizer = make_tokenizer(chat_template=TOOL_TEMPLATE)
    encoded = encode(tokenizer, conversation(), EncodeOptions(tools="refuse"))
    assert encoded.tools == "template"
    text = tokenizer.decode(encoded.input_ids)
    assert text.startswith("<|im_start|>system\nTOOLS:search_recipes;") and "CALL search_recipes" in text
    assert "<tool_call>" not in text and "# Tools" not in text


def test_refuse_makes_a_record_with_tools_a_bad_record_that_names_the_settings(tokenizer: Any) -> None:
    with pytest.raises(
        RecordError,
        match=r"^defines 1 tool\(s\), but the chat template does not render tools and "
        r'data.tools = "refuse"; set data.tools = "render"',
    ):
        encode(tokenizer, conversation(), EncodeOptions(tools="refuse"))


def _glaive_like(tmp_path: Path) -> Path:
    with_tools = {
        "tools": json.dumps(TOOLS),
        "conversations": [
            {"from": "human", "value": "I have rice."},
            {"from": "function_call", "value": '{"name": "search_recipes", "arguments": {"ingredients": ["rice"]}}'},
            {"from": "observation", "value": '{"recipes": []}'},
            {"from": "gpt", "value": "No recipes."},
        ],
    }
    without = {"tools": "[]", "conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Hi."}]}
    return write_json(tmp_path / "glaive.json", [with_tools, without, with_tools])


def test_dropped_tools_are_counted_and_said_once_in_the_report(tokenizer: Any, tmp_path: Path) -> None:
    records = read_records([_glaive_like(tmp_path)]).records
    examples, report = build_examples(records, tokenizer, max_length=2048, tools="drop")
    assert len(examples) == 3 and report.tools == {"dropped": 2}
    assert report.warnings == [
        "2 of 3 records define tools that the chat template does not render: the definitions "
        'were dropped, the model will not see them (data.tools = "drop"; "render" puts '
        "them in the system prompt)"
    ]
    rendered, report = build_examples(records, tokenizer, max_length=2048)
    assert report.tools == {"system-prompt": 2}
    assert [len(e["input_ids"]) for e in rendered][1] == [len(e["input_ids"]) for e in examples][1]
    assert all(len(r["input_ids"]) > len(d["input_ids"]) for r, d in zip(rendered[::2], examples[::2], strict=True))


def test_refused_tools_are_bad_records_located_in_the_file(tokenizer: Any, tmp_path: Path) -> None:
    path = _glaive_like(tmp_path)
    examples, report = build_examples(
        read_records([path]).records, tokenizer, max_length=2048, tools="refuse", on_bad_record="skip"
    )
    assert len(examples) == 1 and [str(b.location) for b in report.bad_records] == [f"{path}[0]", f"{path}[2]"]
