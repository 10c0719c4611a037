"""Turn records of the common SFT data formats into one shape: a list of chat messages.

Formats (names as in LLaMA-Factory's dataset_info):
- ``alpaca``: instruction / input / output, optional system and history
  (a list of [user, assistant] pairs);
- ``sharegpt``: ``conversations: [{from, value}]`` with roles human/gpt/system/
  function_call/observation (user/assistant/tool accepted too), optional ``system`` and
  ``tools`` fields. function_call is an assistant turn, observation a tool turn;
- ``messages``: OpenAI / LLaMA-Factory style ``messages: [{role, content}]`` (same role
  vocabulary), ``content`` a string or a list of typed parts (text, reasoning, tool calls, media);
  per-message ``loss_weight`` (runner.data.chat);
- ``text``: ``{"text": ...}``, plain completion with loss on every token;
- ``segments`` and ``prompt-completion``: Axolotl's and TRL's layouts (runner.data.layouts).

Every record becomes a `Conversation` (runner.data.conversation). A record that does not fit
raises `RecordError` with a precise reason, and, when it looks like another layout, which one
and the setting that reads it; the caller attaches the record's location.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.data.chat import ROLES, check_turn_order, normalize_chat, tools_of  # noqa: F401 (re-exported)
from runner.data.conversation import (  # also re-exported: the names have always lived here
    TEXT_ROLE,
    Conversation,
    FieldsError,
    RecordError,
    RecordOptions,
)
from runner.data.detection import DETECT_SAMPLE, vote_on_format
from runner.data.report import DataError

FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "messages", "text", "segments", "prompt-completion")

# canonical field -> names tried, in order, when data.fields does not map it
ALIASES: dict[str, tuple[str, ...]] = {
    "instruction": ("instruction", "question", "prompt", "query"),
    "input": ("input", "context"),
    "output": ("output", "answer", "response", "completion"),
    "system": ("system",),
    "history": ("history",),
    "conversations": ("conversations", "messages"),
    "tools": ("tools",),
    "role": ("from", "role"),
    "content": ("value", "content"),
    "text": ("text",),
    "segments": ("segments",),
    "prompt": ("prompt",),
    "completion": ("completion",),
    "images": ("images",),
    "loss_weight": ("loss_weight",),
    "reasoning": ("reasoning_content",),
}
_CHAT_FIELDS = ("conversations", "role", "content", "system", "tools", "images", "loss_weight", "reasoning")
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": _CHAT_FIELDS,
    "messages": _CHAT_FIELDS,
    "text": ("text",),
    "segments": ("segments",),
    "prompt-completion": ("prompt", "completion", *_CHAT_FIELDS[1:]),
}
# read from a message only when data.fields names them (otherwise runner.data.chat tries its aliases)
MAPPED_ONLY = ("loss_weight", "reasoning")
# synonyms accepted as keys of data.fields (runner.data.kinds lists them as valid field names)
FIELD_SYNONYMS = {"messages": "conversations", "from": "role", "value": "content"}


@dataclass(frozen=True)
class DomainPrefix:
    """Render ``format.format(value=record[field])`` before the first user message.

    Used to tag each example with its source (e.g. "[medical] " or a data hash) so one
    adapter can be conditioned on several domains.
    """

    field: str
    format: str = "[{value}] "

    def __post_init__(self) -> None:
        if "{value}" not in self.format:
            raise ValueError(f"domain_format must contain '{{value}}', got {self.format!r}")

    def render(self, data: Mapping[str, Any]) -> str:
        if self.field not in data or data[self.field] is None:
            raise RecordError(f"missing domain field {self.field!r}")
        value = data[self.field]
        if not isinstance(value, str | int | float):
            raise RecordError(f"domain field {self.field!r} is a {type(value).__name__}; expected a string")
        return self.format.format(value=value)


# ---------------------------------------------------------------------------------------
# detection and field resolution


def detect_sft_format(records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Guess the SFT format from the first records; return (format, human-readable reason).
    runner.data.kinds.detect_format first rules out preference data, which would pass for sharegpt or
    alpaca records."""
    canonical = _canonical(fields)
    try:
        return vote_on_format(
            records,
            lambda data: _classify(data, canonical),
            "data format: the first records have keys {keys}; expected "
            "'conversations'/'messages' (sharegpt/messages), instruction + output (alpaca), 'text', "
            "'segments' or prompt + completion message lists. "
            "Set data.format (one of " + ", ".join(FORMATS) + ") and map your field names with data.fields.",
        )
    except DataError as exc:
        from runner.data.layouts import explain

        hint = explain(records[0]) if records else None
        raise DataError(f"{exc} The first record: {hint}." if hint else str(exc)) from None


def _classify(data: Mapping[str, Any], fields: Mapping[str, str]) -> tuple[str, str] | None:
    conv_key = _present(data, "conversations", fields)
    if conv_key is not None and isinstance(data[conv_key], list):
        turns = [t for t in data[conv_key] if isinstance(t, dict)]
        if turns:
            role, content = _present(turns[0], "role", fields), _present(turns[0], "content", fields)
            if (role, content) == ("from", "value"):
                return "sharegpt", f"'{conv_key}' key with 'from'/'value' turns"
            if (role, content) == ("role", "content"):
                return "messages", f"'{conv_key}' key with 'role'/'content' turns"
            if role and content:
                fmt = "messages" if conv_key == "messages" else "sharegpt"
                return fmt, f"'{conv_key}' key with mapped '{role}'/'{content}' turns"
    segments = _present(data, "segments", fields)
    if segments and isinstance(data[segments], list) and all(isinstance(s, dict) for s in data[segments]):
        return "segments", f"'{segments}' key holding text segments (Axolotl input_output)"
    prompt, completion = _present(data, "prompt", fields), _present(data, "completion", fields)
    if prompt and completion and isinstance(data[prompt], list) and isinstance(data[completion], list):
        return "prompt-completion", f"'{prompt}'/'{completion}' keys holding message lists (TRL conversational)"
    instruction, output = _present(data, "instruction", fields), _present(data, "output", fields)
    if instruction and output:
        return "alpaca", f"'{instruction}' and '{output}' keys"
    text = _present(data, "text", fields)
    if text and isinstance(data[text], str):
        return "text", f"'{text}' key holding a string"
    return None


def _present(data: Mapping[str, Any], canonical: str, fields: Mapping[str, str]) -> str | None:
    """The record's key for a canonical field: the mapped name, else the first alias present."""
    if canonical in fields:
        return fields[canonical] if fields[canonical] in data else None
    return next((alias for alias in ALIASES[canonical] if alias in data), None)


def resolve_fields(
    fmt: str, records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Map every canonical field of `fmt` to the record key that holds it.

    Explicit `fields` win; the rest are auto-detected from the first records using
    ALIASES (so "question"/"answer" work without a mapping); a field nobody uses keeps
    its canonical name.
    """
    if fmt not in FORMATS:
        raise FieldsError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
    fields = _canonical(fields)
    unknown = sorted(set(fields) - set(FORMAT_FIELDS[fmt]))
    if unknown:
        raise FieldsError(f"unknown field(s) {unknown} for format {fmt!r}; expected some of {list(FORMAT_FIELDS[fmt])}")
    sample = records[:DETECT_SAMPLE]
    resolved: dict[str, str] = {}
    for canonical in FORMAT_FIELDS[fmt]:  # "conversations" comes before "role"/"content"
        if canonical in fields:
            resolved[canonical] = fields[canonical]
            continue
        if canonical in MAPPED_ONLY:
            continue
        aliases = ALIASES[canonical]
        if fmt == "messages" and canonical in ("conversations", "role", "content"):
            aliases = aliases[::-1]  # prefer the OpenAI names: messages, role, content
        turns_key = resolved.get("conversations", resolved.get("prompt", ""))
        pool = _first_turns(sample, turns_key) if canonical in ("role", "content") else sample
        resolved[canonical] = next((a for a in aliases if any(a in d for d in pool)), aliases[0])
    return resolved


def _canonical(fields: Mapping[str, str] | None) -> dict[str, str]:
    return {FIELD_SYNONYMS.get(k, k): v for k, v in (fields or {}).items()}


def _first_turns(sample: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    out: list[Mapping[str, Any]] = []
    for data in sample:
        turns = data.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            out.append(turns[0])
    return out


# ---------------------------------------------------------------------------------------
# normalisation


def normalize_record(
    data: Mapping[str, Any],
    fmt: str,
    fields: Mapping[str, str],
    domain: DomainPrefix | None = None,
    options: RecordOptions | None = None,
) -> Conversation:
    """One record -> Conversation, or RecordError with the reason (and, when the record looks like
    another layout, which one and the setting that reads it). `fields` from resolve_fields."""
    try:
        conv = _normalize(data, fmt, fields, options or RecordOptions())
    except RecordError as exc:
        from runner.data.layouts import explain

        hint = explain(data, fmt)
        raise RecordError(f"{exc}; {hint}" if hint else str(exc)) from None
    if domain is not None:
        conv = _with_prefix(conv, domain.render(data))
    return conv


def _normalize(data: Mapping[str, Any], fmt: str, fields: Mapping[str, str], options: RecordOptions) -> Conversation:
    from runner.data.layouts import normalize_prompt_completion, normalize_segments

    if fmt == "alpaca":
        return _alpaca(data, fields)
    if fmt in ("sharegpt", "messages"):
        return normalize_chat(data, fields, fmt, options)
    if fmt == "text":
        text = _string(data, fields["text"], required=True)
        if not text.strip():
            raise RecordError(f"empty '{fields['text']}'")
        return Conversation([{"role": TEXT_ROLE, "content": text}])
    if fmt == "segments":
        return normalize_segments(data, fields)
    if fmt == "prompt-completion":
        return normalize_prompt_completion(data, fields, options)
    raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS}")


def _alpaca(data: Mapping[str, Any], fields: Mapping[str, str]) -> Conversation:
    instruction = _string(data, fields["instruction"], required=True)
    extra = _string(data, fields["input"])
    output = _string(data, fields["output"], required=True)
    system = _string(data, fields["system"])
    prompt = "\n".join(part for part in (instruction, extra) if part.strip())
    if not prompt.strip():
        raise RecordError(f"empty '{fields['instruction']}' (and no '{fields['input']}')")
    if not output.strip():
        raise RecordError(f"empty assistant turn: '{fields['output']}' is empty")
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system.strip() else []
    history = data.get(fields["history"])
    if history is not None:
        if not isinstance(history, list):
            raise RecordError(
                f"'{fields['history']}' is a {type(history).__name__}; expected a list of [user, assistant] pairs"
            )
        for i, pair in enumerate(history, start=1):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise RecordError(f"'{fields['history']}' item {i} is not a [user, assistant] pair of strings")
            if not pair[1].strip():
                raise RecordError(f"empty assistant turn in '{fields['history']}' item {i}")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    messages += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return Conversation(messages)


def _string(data: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = data.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing '{key}'")
        return ""
    if not isinstance(value, str):
        raise RecordError(f"'{key}' is a {type(value).__name__}; expected a string")
    return value


def _with_prefix(conv: Conversation, prefix: str) -> Conversation:
    messages = [dict(m) for m in conv.messages]
    target = next(m for m in messages if m["role"] in ("user", TEXT_ROLE))
    target["content"] = prefix + target["content"]
    return Conversation(messages, conv.tools, conv.special_tokens, conv.media_dropped)
