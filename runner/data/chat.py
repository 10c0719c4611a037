"""Chat records (sharegpt ``conversations[{from, value}]``, OpenAI / LLaMA-Factory ``messages[{role,
content}]``) -> `Conversation`.

Per message:
- ``content`` is a string or a list of typed parts (runner.data.content);
- the reasoning comes from reasoning parts or a ``reasoning_content`` / ``reasoning`` /
  ``thinking`` key (data.fields.reasoning names another);
- ``loss_weight`` (or Axolotl's ``train``; data.fields.loss_weight names another) is 0 or 1 (or
  a boolean) and overrides the default mask of the message: the causal loss weighs every trained
  token equally, so a fraction could not be honoured exactly and is refused;
- sharegpt ``function_call`` turns holding ``{"name", "arguments"}`` JSON become tool calls.

Roles: human/user, gpt/assistant/function_call, system, observation/tool, plus data.roles.
Turns alternate as LLaMA-Factory's converters require; media (image parts, an ``images`` list,
``<image>`` markers) follow data.images.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from runner.data.content import IMAGE_MARKER, count_markers, parse_content, tool_calls_of
from runner.data.conversation import Conversation, RecordError, RecordOptions
from runner.data.records import loads_bounded

# sharegpt and OpenAI role names -> normalised role
ROLES: dict[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "function_call": "assistant",
    "system": "system",
    "observation": "tool",
    "tool": "tool",
}
REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")
WEIGHT_KEYS = ("loss_weight", "train")
# OpenAI tool-calling fields passed through to the chat template untouched
_PASSTHROUGH = ("tool_call_id", "name")


def normalize_chat(
    data: Mapping[str, Any], fields: Mapping[str, str], fmt: str, options: RecordOptions | None = None
) -> Conversation:
    options = options or RecordOptions()
    key = fields["conversations"]
    if key not in data:
        raise RecordError(f"missing '{key}'")
    turns = data[key]
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"'{key}' is empty" if isinstance(turns, list) else f"'{key}' is not a list")
    roles = {**ROLES, **dict(options.roles)}
    messages: list[dict[str, Any]] = []
    system = data.get(fields["system"])
    if system is not None and not isinstance(system, str):
        raise RecordError(f"'{fields['system']}' is a {type(system).__name__}; expected a string")
    if system and system.strip():
        messages.append({"role": "system", "content": system})
    parts = markers = 0
    for n, turn in enumerate(turns, start=1):
        message, found = _message(turn, n, key, fields, roles)
        parts += found
        markers += count_markers(message["content"])
        role = message["role"]
        where = f"'{key}' turn {n}"
        if role == "system":
            if messages:
                raise RecordError(f"{where} is a system turn; only the first turn may be one")
        elif role == "assistant" and not (
            message["content"].strip() or message.get("tool_calls") or message.get("reasoning")
        ):
            raise RecordError(f"empty assistant turn ({where})")
        elif role == "user" and not message["content"].strip() and not (found or count_markers(message["content"])):
            raise RecordError(f"empty user turn ({where})")
        elif role == "tool" and (not messages or messages[-1]["role"] not in ("assistant", "tool")):
            raise RecordError(
                f"{where} is a tool result ({turn[fields['role']]!r}) that does not follow an assistant turn"
            )
        if messages and role != "system":
            check_turn_order(messages[-1]["role"], role, where, n, fmt)
        messages.append(message)
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is None or first["role"] != "user":
        raise RecordError("conversation does not start with a user turn")
    if messages[-1]["role"] != "assistant":
        raise RecordError("conversation does not end with an assistant turn")
    media = parts + max(markers, _listed_media(data, fields))  # <image> markers stand for the listed images
    messages, dropped = apply_media_policy(messages, media, options.images)
    return Conversation(messages, tools_of(data, fields["tools"]), media_dropped=dropped)


def _message(
    turn: Any, n: int, key: str, fields: Mapping[str, str], roles: Mapping[str, str]
) -> tuple[dict[str, Any], int]:
    """One turn -> (normalised message, media parts its content held)."""
    where = f"'{key}' turn {n}"
    role_key, content_key = fields["role"], fields["content"]
    if not isinstance(turn, dict):
        raise RecordError(f"{where} is a {type(turn).__name__}; expected an object")
    if role_key not in turn:
        raise RecordError(f"{where} has no '{role_key}'")
    name = turn[role_key]
    role = roles.get(name) if isinstance(name, str) else None
    if role is None:
        raise RecordError(
            f"{where} has role {name!r}; expected one of {', '.join(roles)} "
            '(more names for a role: data.roles, e.g. {assistant = ["bot"]})'
        )
    content = parse_content(turn.get(content_key), f"{where} '{content_key}'")
    message: dict[str, Any] = {"role": role, "content": content.text}
    calls = list(content.tool_calls)
    given = turn.get("tool_calls")
    if given is not None:  # OpenAI's own shape goes to the template as written
        if not (isinstance(given, list) and all(isinstance(c, dict) for c in given)):
            raise RecordError(f"{where} 'tool_calls' must be a list of objects")
        calls += given
    if name == "function_call" and not calls:
        calls = _function_call(content.text)
        if calls:
            message["content"] = ""
    if calls:
        message["tool_calls"] = calls
    message.update({k: turn[k] for k in _PASSTHROUGH if turn.get(k) is not None})
    reasoning = content.reasoning + _reasoning_field(turn, fields, where)
    if reasoning:
        if role != "assistant":
            raise RecordError(f"{where} is a {role} turn with reasoning; only assistant turns reason")
        message["reasoning"] = reasoning
    weight = _loss_weight(turn, fields, where)
    if weight is not None:
        message["loss_weight"] = weight
    return message, content.media


def _function_call(text: str) -> list[dict[str, Any]]:
    """A sharegpt function_call turn's JSON as tool calls; [] when it is not one (kept as text)."""
    try:
        return tool_calls_of(json.loads(text), "function_call")
    except (json.JSONDecodeError, RecordError, RecursionError):
        return []


def _reasoning_field(turn: Mapping[str, Any], fields: Mapping[str, str], where: str) -> str:
    keys = (fields["reasoning"],) if "reasoning" in fields else REASONING_KEYS
    for key in keys:
        value = turn.get(key)
        if value is None or value == "":
            continue
        if not isinstance(value, str):
            raise RecordError(f"{where} '{key}' is a {type(value).__name__}; expected a string")
        return value
    return ""


def _loss_weight(turn: Mapping[str, Any], fields: Mapping[str, str], where: str) -> float | None:
    keys = (fields["loss_weight"],) if "loss_weight" in fields else WEIGHT_KEYS
    key = next((k for k in keys if k in turn and turn[k] is not None), None)
    if key is None:
        return None
    value = turn[key]
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if not isinstance(value, int | float):
        raise RecordError(f"{where} '{key}' is a {type(value).__name__}; expected 0 or 1 (or true/false)")
    if value not in (0, 1):
        raise RecordError(
            f"{where} '{key}' is {value}: only 0 (masked) and 1 (trained) are honoured; the causal loss weighs "
            "every trained token equally, so a fractional weight cannot be applied exactly. Round it, or "
            "repeat the records you want to weigh more"
        )
    return float(value)


def check_turn_order(previous: str, role: str, where: str, n: int, fmt: str) -> None:
    """Turns alternate: user (or a tool result) then assistant, as LLaMA-Factory's sharegpt converter
    requires (user/observation in odd places, gpt/function_call in even ones). OpenAI-style
    `messages` may hold several tool results in a row (parallel tool calls), as there."""
    if role == "user" and previous == "user":
        raise RecordError(
            f"{where} is a second user turn in a row (after turn {n - 1}); merge them, "
            "or put the assistant's reply between them"
        )
    if role == "user" and previous == "tool":
        raise RecordError(
            f"{where} is a user turn right after a tool result (turn {n - 1}); the assistant's "
            "answer to the tool result goes between them"
        )
    if role == "assistant" and previous == "assistant":
        raise RecordError(
            f"{where} is a second assistant turn in a row (after turn {n - 1}); merge them, "
            "or put the user's turn between them"
        )
    if role == "tool" and previous == "tool" and fmt == "sharegpt":
        raise RecordError(
            f"{where} is a second tool result in a row (after turn {n - 1}); sharegpt turns "
            "alternate (user or observation, then gpt or function_call): merge the results"
        )


def tools_of(data: Mapping[str, Any], key: str) -> list[dict[str, Any]] | None:
    """Tool schemas, given as a list or as a JSON string holding one (as in glaive data)."""
    tools = data.get(key)
    if tools is None or tools == "" or tools == []:
        return None
    if isinstance(tools, str):
        try:
            tools = loads_bounded(tools)
        except json.JSONDecodeError as e:
            raise RecordError(f"'{key}' is a string but not valid JSON ({e.msg} at column {e.colno})") from None
        except ValueError as e:
            raise RecordError(f"'{key}' holds JSON that cannot be used: {e}") from None
    if isinstance(tools, dict):
        tools = [tools]
    if not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
        raise RecordError(f"'{key}' must be a list of tool schemas (objects)")
    return tools or None


def _listed_media(data: Mapping[str, Any], fields: Mapping[str, str]) -> int:
    """Media listed beside the messages (LLaMA-Factory's and TRL's 'images', 'videos', 'audios')."""
    count = 0
    for key in (fields.get("images", "images"), "videos", "audios"):
        value = data.get(key)
        if isinstance(value, list):
            count += len(value)
        elif isinstance(value, str) and value:
            count += 1
    return count


def apply_media_policy(messages: list[dict[str, Any]], media: int, policy: str) -> tuple[list[dict[str, Any]], int]:
    """Refuse a record with media (data.images = "refuse"), or drop the media and their <image>
    markers ("drop"); returns the messages and how many media were dropped."""
    if not media:
        return messages, 0
    if policy != "drop":
        raise RecordError(
            f"holds {media} image{'s' if media != 1 else ''} or other media (image parts, an 'images' list or "
            f"{IMAGE_MARKER} markers, as in LLaMA-Factory's multimodal layout); a causal LM here reads text only: "
            'set data.images = "drop" to train on the text without them'
        )
    for message in messages:
        if IMAGE_MARKER in message["content"]:
            message["content"] = message["content"].replace(IMAGE_MARKER, "")
    return messages, media
