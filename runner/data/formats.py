"""Turn records of the common SFT data formats into one shape: a list of chat messages.

Formats (names as in LLaMA-Factory's dataset_info):
- ``alpaca``: instruction / input / output, optional system and history
  (a list of [user, assistant] pairs);
- ``sharegpt``: ``conversations: [{from, value}]`` with roles human/gpt/system/
  function_call/observation (user/assistant/tool accepted too), optional ``system`` and
  ``tools`` fields. function_call is an assistant turn, observation a tool turn;
- ``messages``: OpenAI style ``messages: [{role, content}]`` (same role vocabulary);
- ``text``: ``{"text": ...}``, plain completion with loss on every token.

Every record becomes a `Conversation` whose messages are ``{"role": system|user|
assistant|tool, "content": str}``; a text record is a single message with role
`TEXT_ROLE`. A record that does not fit raises `RecordError` with a precise reason;
the caller attaches the record's location.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.data.records import loads_bounded
from runner.data.report import DataError

FORMATS: tuple[str, ...] = ("alpaca", "sharegpt", "messages", "text")
TEXT_ROLE = "text"  # marker role: the record is plain text, not a conversation
DETECT_SAMPLE = 100  # records looked at by detect_format

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
}
FORMAT_FIELDS: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "input", "output", "system", "history"),
    "sharegpt": ("conversations", "role", "content", "system", "tools"),
    "messages": ("conversations", "role", "content", "system", "tools"),
    "text": ("text",),
}
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
# synonyms accepted as keys of data.fields
_FIELD_SYNONYMS = {"messages": "conversations", "from": "role", "value": "content"}
# OpenAI tool-calling fields passed through to the chat template untouched
_PASSTHROUGH = ("tool_calls", "tool_call_id", "name")


class RecordError(DataError):
    """A record that cannot be normalised; the message is the reason, without location."""


class FieldsError(DataError, ValueError):
    """A format name or a field mapping that does not fit the data (a setting, not a record)."""


@dataclass(frozen=True)
class Conversation:
    """A normalised record: chat messages (or one TEXT_ROLE message) and optional tools."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None

    @property
    def is_text(self) -> bool:
        return len(self.messages) == 1 and self.messages[0]["role"] == TEXT_ROLE


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


def vote_on_format(
    records: Sequence[Mapping[str, Any]],
    classify: Callable[[Mapping[str, Any]], tuple[str, str] | None],
    expected: str,
) -> tuple[str, str]:
    """Each of the first DETECT_SAMPLE records votes with `classify`; the most common answer wins,
    so a few stray records do not flip the decision (they fail later as bad records). `expected`
    completes the error when no record matches ("cannot detect ...: the first records have keys ...")."""
    votes: Counter[tuple[str, str]] = Counter()
    sample = records[:DETECT_SAMPLE]
    for data in sample:
        guess = classify(data)
        if guess is not None:
            votes[guess] += 1
    if not votes:
        keys = sorted({k for data in sample for k in data})
        raise DataError(f"cannot detect the {expected.format(keys=keys)}")
    (fmt, reason), count = votes.most_common(1)[0]
    return fmt, f"{reason} ({count} of {len(sample)} sampled records)"


def detect_format(
    records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """Guess the format from the first records; return (format, human-readable reason)."""
    from runner.data.preference import preference_vote  # imports this module

    preference = preference_vote(records, fields)
    if preference is not None:  # they would pass for sharegpt or alpaca records with every record bad
        raise DataError(f"the records are preference data ({preference[0]}: {preference[1]}): train them with "
                        "loss.type = \"dpo\" (or ipo, orpo, simpo, kto), or set data.format")
    canonical = _canonical(fields)
    return vote_on_format(
        records, lambda data: _classify(data, canonical),
        "data format: the first records have keys {keys}; expected "
        "'conversations'/'messages' (sharegpt/messages), instruction + output (alpaca) or 'text'. "
        "Set data.format (one of " + ", ".join(FORMATS) + ") and map your field names with data.fields.",
    )


def guess_format(records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None) -> tuple[str, str] | None:
    """What the records look like, causal or embedding format (None: nothing fits): for the message
    that explains why every record failed under a format set by hand."""
    from runner.data.embedding import detect_format as detect_embedding  # imports this module
    from runner.data.preference import detect_format as detect_preference

    for detect in (detect_preference, detect_format, detect_embedding):
        try:
            return detect(records, fields)
        except (DataError, ValueError):
            continue
    return None


def usage_problems(data_format: str, fields: Mapping[str, str]) -> list[str]:
    """What is wrong with a format and a field mapping given by hand (a command line, a request),
    worded with the valid choices; empty when both are usable."""
    from runner.data.embedding import ALIASES as EMBEDDING_FIELDS
    from runner.data.embedding import FORMATS as EMBEDDING_FORMATS

    from runner.data.preference import FORMATS as PREFERENCE_FORMATS
    from runner.data.preference import field_names as preference_fields

    formats = ("auto", *FORMATS, *EMBEDDING_FORMATS, *PREFERENCE_FORMATS)
    problems = []
    if data_format not in formats:
        close = difflib.get_close_matches(data_format, formats, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"--format {data_format!r}: expected one of {', '.join(formats)}{hint}")
    if data_format in FORMATS:
        valid = [*FORMAT_FIELDS[data_format], *(k for k, v in _FIELD_SYNONYMS.items() if v in FORMAT_FIELDS[data_format])]
    elif data_format in EMBEDDING_FORMATS:
        valid = list(EMBEDDING_FIELDS)
    elif data_format in PREFERENCE_FORMATS:
        valid = preference_fields(data_format)
    else:
        valid = sorted({*(c for names in FORMAT_FIELDS.values() for c in names), *_FIELD_SYNONYMS, *EMBEDDING_FIELDS,
                        *(c for fmt in PREFERENCE_FORMATS for c in preference_fields(fmt))})
    for canonical, name in fields.items():
        if canonical not in valid:
            swapped = f" (did you mean {name}={canonical}? the field name comes first)" if name in valid else ""
            problems.append(f"--fields {canonical}={name}: {canonical!r} is not a field of "
                            f"{'format ' + repr(data_format) if data_format != 'auto' else 'any format'}{swapped}; "
                            f"expected one of {', '.join(valid)}")
    return problems


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
        aliases = ALIASES[canonical]
        if fmt == "messages" and canonical in ("conversations", "role", "content"):
            aliases = aliases[::-1]  # prefer the OpenAI names: messages, role, content
        pool = _first_turns(sample, resolved["conversations"]) if canonical in ("role", "content") else sample
        resolved[canonical] = next((a for a in aliases if any(a in d for d in pool)), aliases[0])
    return resolved


def _canonical(fields: Mapping[str, str] | None) -> dict[str, str]:
    return {_FIELD_SYNONYMS.get(k, k): v for k, v in (fields or {}).items()}


def _first_turns(sample: Sequence[Mapping[str, Any]], key: str) -> list[Mapping[str, Any]]:
    out = []
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
) -> Conversation:
    """One record -> Conversation, or RecordError with the reason. `fields` from resolve_fields."""
    if fmt == "alpaca":
        conv = _alpaca(data, fields)
    elif fmt in ("sharegpt", "messages"):
        conv = _chat(data, fields, fmt)
    elif fmt == "text":
        text = _string(data, fields["text"], required=True)
        if not text.strip():
            raise RecordError(f"empty '{fields['text']}'")
        conv = Conversation([{"role": TEXT_ROLE, "content": text}])
    else:
        raise ValueError(f"unknown data format {fmt!r}; expected one of {FORMATS}")
    if domain is not None:
        conv = _with_prefix(conv, domain.render(data))
    return conv


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


def _chat(data: Mapping[str, Any], fields: Mapping[str, str], fmt: str) -> Conversation:
    key, role_key, content_key = fields["conversations"], fields["role"], fields["content"]
    if key not in data:
        raise RecordError(f"missing '{key}'")
    turns = data[key]
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"'{key}' is empty" if isinstance(turns, list) else f"'{key}' is not a list")
    messages: list[dict[str, Any]] = []
    system = _string(data, fields["system"])
    if system.strip():
        messages.append({"role": "system", "content": system})
    for n, turn in enumerate(turns, start=1):
        where = f"'{key}' turn {n}"
        if not isinstance(turn, dict):
            raise RecordError(f"{where} is a {type(turn).__name__}; expected an object")
        if role_key not in turn:
            raise RecordError(f"{where} has no '{role_key}'")
        role = ROLES.get(turn[role_key]) if isinstance(turn[role_key], str) else None
        if role is None:
            raise RecordError(f"{where} has role {turn[role_key]!r}; expected one of {', '.join(ROLES)}")
        content = turn.get(content_key)
        message: dict[str, Any] = {"role": role, "content": content if content is not None else ""}
        message.update({k: turn[k] for k in _PASSTHROUGH if turn.get(k) is not None})
        if not isinstance(message["content"], str):
            raise RecordError(f"{where} '{content_key}' is a {type(content).__name__}; expected a string")
        if role == "system":
            if messages:
                raise RecordError(f"{where} is a system turn; only the first turn may be one")
        elif role == "assistant" and not message["content"].strip() and not message.get("tool_calls"):
            raise RecordError(f"empty assistant turn ({where})")
        elif role == "user" and not message["content"].strip():
            raise RecordError(f"empty user turn ({where})")
        elif role == "tool" and (not messages or messages[-1]["role"] not in ("assistant", "tool")):
            raise RecordError(f"{where} is a tool result ({turn[role_key]!r}) that does not follow an assistant turn")
        if messages and role != "system":
            _check_turn_order(messages[-1]["role"], role, where, n, fmt)
        messages.append(message)
    first = next((m for m in messages if m["role"] != "system"), None)
    if first is None or first["role"] != "user":
        raise RecordError("conversation does not start with a user turn")
    if messages[-1]["role"] != "assistant":
        raise RecordError("conversation does not end with an assistant turn")
    return Conversation(messages, _tools(data, fields["tools"]))


def _check_turn_order(previous: str, role: str, where: str, n: int, fmt: str) -> None:
    """Turns alternate: user (or a tool result) then assistant, as LLaMA-Factory's sharegpt converter
    requires (user/observation in odd places, gpt/function_call in even ones). OpenAI-style
    `messages` may hold several tool results in a row (parallel tool calls), as there."""
    if role == "user" and previous == "user":
        raise RecordError(f"{where} is a second user turn in a row (after turn {n - 1}); merge them, "
                          "or put the assistant's reply between them")
    if role == "user" and previous == "tool":
        raise RecordError(f"{where} is a user turn right after a tool result (turn {n - 1}); the assistant's "
                          "answer to the tool result goes between them")
    if role == "assistant" and previous == "assistant":
        raise RecordError(f"{where} is a second assistant turn in a row (after turn {n - 1}); merge them, "
                          "or put the user's turn between them")
    if role == "tool" and previous == "tool" and fmt == "sharegpt":
        raise RecordError(f"{where} is a second tool result in a row (after turn {n - 1}); sharegpt turns "
                          "alternate (user or observation, then gpt or function_call): merge the results")


def _tools(data: Mapping[str, Any], key: str) -> list[dict[str, Any]] | None:
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
    return Conversation(messages, conv.tools)
