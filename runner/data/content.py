"""A chat message's ``content``: a string, or a list of typed parts.

Parts as LLaMA-Factory, OpenAI and TRL write them; a part's text is under ``text`` or ``value``:
- ``{"type": "text", "text"|"value": ...}`` (also ``input_text`` / ``output_text``, or a bare
  string): concatenated, in order, with nothing between them (as LLaMA-Factory does);
- ``{"type": "reasoning"|"thinking", ...}``: the message's reasoning, rendered by
  `runner.data.causal` the way the chat template expects it (see data.reasoning);
- ``{"type": "tool_call", "value": "{\\"name\\": ..., \\"arguments\\": ...}"}`` (a JSON string or an
  object): a call of a tool, carried as an OpenAI ``tool_calls`` entry;
- ``{"type": "image"|"image_url"|"input_image", ...}`` and audio / video parts: media, which a
  causal LM does not read (data.images decides: refuse the record, or drop them).

Anything else is refused with the part's position and the types that are read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runner.data.conversation import RecordError

TEXT_TYPES = ("text", "input_text", "output_text")
REASONING_TYPES = ("reasoning", "thinking")
TOOL_CALL_TYPES = ("tool_call", "tool_calls", "function_call")
IMAGE_TYPES = ("image", "image_url", "input_image")
OTHER_MEDIA_TYPES = ("audio", "audio_url", "input_audio", "video", "video_url")
KNOWN_TYPES = (*TEXT_TYPES, *REASONING_TYPES, *TOOL_CALL_TYPES, *IMAGE_TYPES, *OTHER_MEDIA_TYPES)
IMAGE_MARKER = "<image>"  # LLaMA-Factory's placeholder for an image in the text


@dataclass
class Content:
    """What a message's content held, by kind."""

    text: str = ""
    reasoning: str = ""
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    media: int = 0  # image, audio and video parts


def parse_content(value: Any, where: str) -> Content:
    """A message's content (string, list of parts, or null) -> Content; RecordError saying what is wrong."""
    if value is None:
        return Content()
    if isinstance(value, str):
        return Content(text=value)
    if isinstance(value, dict):
        value = [value]  # a single part written without its list
    if not isinstance(value, list):
        raise RecordError(
            f"{where} is a {type(value).__name__}; expected a string or a list of parts "
            '({"type": "text", "text": ...})'
        )
    out = Content()
    texts: list[str] = []
    for n, part in enumerate(value, start=1):
        at = f"{where} part {n}"
        if isinstance(part, str):
            texts.append(part)
            continue
        if not isinstance(part, dict):
            raise RecordError(f"{at} is a {type(part).__name__}; expected an object with a 'type'")
        kind = part.get("type", "text" if ("text" in part or "value" in part) else None)
        if kind in TEXT_TYPES:
            texts.append(_part_text(part, at))
        elif kind in REASONING_TYPES:
            out.reasoning += _part_text(part, at, keys=("text", "value", "reasoning", "thinking"))
        elif kind in TOOL_CALL_TYPES:
            out.tool_calls.extend(tool_calls_of(part.get("value", part.get("tool_call", part.get("function"))), at))
        elif kind in IMAGE_TYPES or kind in OTHER_MEDIA_TYPES:
            out.media += 1
        else:
            raise RecordError(
                f"{at} has type {kind!r}; the parts read are text, reasoning, tool_call and "
                "image (audio and video as media)"
            )
    out.text = "".join(texts)
    return out


def tool_calls_of(value: Any, where: str) -> list[dict[str, Any]]:
    """``{"name", "arguments"}`` (or a list of them, or their JSON text) -> OpenAI tool_calls entries."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RecordError(
                f"{where} is not a JSON tool call ({e.msg} at column {e.colno}); write "
                '{"name": ..., "arguments": {...}}'
            ) from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if isinstance(call, dict) and isinstance(call.get("function"), dict):  # already OpenAI-shaped
            call = call["function"]
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and call["name"]):
            raise RecordError(f'{where} is not a tool call: expected {{"name": ..., "arguments": {{...}}}}')
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError:
                pass  # kept as written: some data sets store arguments as free text
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def count_markers(text: str) -> int:
    return text.count(IMAGE_MARKER)


def _part_text(part: dict[str, Any], where: str, keys: tuple[str, ...] = ("text", "value")) -> str:
    for key in keys:
        if key in part:
            value = part[key]
            if not isinstance(value, str):
                raise RecordError(f"{where} '{key}' is a {type(value).__name__}; expected a string")
            return value
    raise RecordError(f"{where} has no text: write it under 'text' or 'value'")
