"""Tools in prompts: what a chat template can render, and a documented rendering when it cannot.

A record's tool definitions reach the model in one of three ways (data.tools decides the last two):
- the template renders ``tools`` (Qwen2.5, Llama 3.1, Mistral, ...): passed as they are, in the
  OpenAI shape ``{"type": "function", "function": {...}}`` (flat ``{"name", "description",
  "parameters"}`` definitions, as in glaive data, are wrapped);
- ``render``: otherwise they go into the system prompt in the Hermes / Qwen2.5 convention that
  LLaMA-Factory also uses for templates without tool support, appended to the record's system
  message (or as one, which replaces a template's default system prompt)::

      # Tools

      You may call one or more functions to assist with the user query.

      You are provided with function signatures within <tools></tools> XML tags:
      <tools>
      {"type": "function", "function": {"name": ..., "description": ..., "parameters": ...}}
      </tools>

      For each function call, return a json object with function name and arguments within
      <tool_call></tool_call> XML tags:
      <tool_call>
      {"name": <function-name>, "arguments": <args-json-object>}
      </tool_call>

- ``drop``: left out (counted in the data report); ``refuse``: the record is a bad record.

Tool calls of assistant messages go to a template that renders ``tool_calls`` as they are; for
any other template they are written into the message as ``<tool_call>\\n{"name": ..., "arguments":
...}\\n</tool_call>`` (one block per call, after the message's text), the form the block above asks for.

What a template can do is found by rendering a probe conversation once per template and looking
for the probe's names in the output: templates say nothing else about it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

TOOLS_PROMPT_HEAD = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
TOOLS_PROMPT_TAIL = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": '
    "<args-json-object>}\n</tool_call>"
)
_PROBE = "zq_probe_7f3a"
_REASONING_KEYS = ("reasoning_content", "thinking", "reasoning")


@dataclass(frozen=True)
class TemplateFeatures:
    """What a chat template renders: tool definitions, tool calls, and under which message key
    reasoning (None: it has no place for reasoning, which then goes in a <think> block)."""

    tools: bool
    tool_calls: bool
    reasoning_key: str | None


_FEATURES: dict[str, TemplateFeatures] = {}


def template_features(tokenizer: Any, template: str) -> TemplateFeatures:
    found = _FEATURES.get(template)
    if found is None:
        found = TemplateFeatures(
            tools=_renders(tokenizer, template, [{"role": "user", "content": "hi"}], tools=[_probe_tool()]),
            tool_calls=_renders(
                tokenizer,
                template,
                [
                    {"role": "user", "content": "hi"},
                    {
                        "role": "assistant",
                        "content": "",
                        "tool_calls": [{"type": "function", "function": {"name": _PROBE, "arguments": {"x": 1}}}],
                    },
                ],
                tools=[_probe_tool("other")],
            ),
            reasoning_key=next(
                (
                    key
                    for key in _REASONING_KEYS
                    if _renders(
                        tokenizer,
                        template,
                        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok", key: _PROBE}],
                    )
                ),
                None,
            ),
        )
        if len(_FEATURES) > 64:
            _FEATURES.clear()
        _FEATURES[template] = found
    return found


def as_openai_tools(tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat definitions ({"name", "description", "parameters"}) wrapped as {"type": "function", ...}."""
    out = []
    for tool in tools:
        if "function" in tool or "type" in tool:
            out.append(dict(tool))
        else:
            out.append({"type": "function", "function": dict(tool)})
    return out


def tools_prompt(tools: Sequence[dict[str, Any]]) -> str:
    """The system-prompt block that lists the tools (see the module docstring)."""
    lines = "".join("\n" + json.dumps(tool, ensure_ascii=False) for tool in as_openai_tools(tools))
    return TOOLS_PROMPT_HEAD + lines + TOOLS_PROMPT_TAIL


def with_tools_in_system(messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    block = tools_prompt(tools)
    if messages and messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" + block) if first["content"].strip() else block
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def tool_call_text(calls: Sequence[dict[str, Any]]) -> str:
    """Tool calls as <tool_call> blocks, one per call."""
    blocks = []
    for call in calls:
        function = call.get("function", call)
        payload = {"name": function.get("name"), "arguments": function.get("arguments", {})}
        blocks.append("<tool_call>\n" + json.dumps(payload, ensure_ascii=False) + "\n</tool_call>")
    return "\n".join(blocks)


def _probe_tool(name: str = _PROBE) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": name, "description": "probe", "parameters": {"type": "object", "properties": {}}},
    }


def _renders(tokenizer: Any, template: str, messages: list[dict[str, Any]], tools: Any = None) -> bool:
    try:
        text = tokenizer.apply_chat_template(messages, tools=tools, chat_template=template, tokenize=False)
    except (jinja2.TemplateError, TypeError, KeyError, IndexError, ValueError, AttributeError):
        return False
    return _PROBE in text
