"""Preference data: records -> a prompt with a chosen and a rejected reply (or, for KTO, one labelled
completion), in the layouts users already have.

Formats (`data.format`; "auto" detects them):
- ``sharegpt-preference`` (LLaMA-Factory's pairwise sharegpt): ``conversations`` (the prompt turns,
  ``{from, value}``, ending with a human turn) plus ``chosen`` and ``rejected`` turns
  (``{from: gpt, value}``); optional ``system`` and ``tools``;
- ``alpaca-preference`` (LLaMA-Factory's pairwise alpaca): ``instruction``, ``input``, ``chosen``,
  ``rejected`` strings; optional ``system`` and ``history``;
- ``preference`` (TRL's): ``prompt``, ``chosen``, ``rejected`` as strings (plain text, no chat
  template, as TRL treats them) or as message lists (``{role, content}``; the chat template
  applies); without ``prompt``, ``chosen`` and ``rejected`` are whole conversations and the prompt is
  the turns they share (TRL's implicit prompt);
- ``unpaired-preference`` (TRL's, for KTO): ``prompt`` (a string or messages; or the conversation
  in ``messages``) + ``completion`` + a boolean ``label`` (true: desirable).

The prompt and the replies are checked with the SFT formats' own rules (roles, turn order,
system turn, tools; runner.data.formats): a preference record is the SFT conversation it would be
with its chosen (or rejected) reply as the last turn. Every record becomes a `PreferencePair` or
an `UnpairedCompletion`; one that does not fit raises `RecordError` with the reason (the caller
adds the location). Field names map onto the canonical ones through ``data.fields``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from runner.data.detection import DETECT_SAMPLE, vote_on_format
from runner.data.formats import FORMAT_FIELDS, ROLES, TEXT_ROLE, RecordError, normalize_record, resolve_fields

FORMATS: tuple[str, ...] = ("preference", "sharegpt-preference", "alpaca-preference", "unpaired-preference")
PAIRED_FORMATS = FORMATS[:3]

# canonical field -> names tried, in order, when data.fields does not map it
ALIASES: dict[str, tuple[str, ...]] = {
    "prompt": ("prompt",),
    "chosen": ("chosen", "chosen_response", "accepted"),
    "rejected": ("rejected", "rejected_response"),
    "completion": ("completion", "response"),
    "label": ("label",),
    "messages": ("messages", "conversations"),
}
_OWN_FIELDS = {  # the fields each format reads itself; the rest go to the SFT format it builds on
    "sharegpt-preference": ("chosen", "rejected"),
    "alpaca-preference": ("chosen", "rejected"),
    "preference": ("prompt", "chosen", "rejected"),
    "unpaired-preference": ("prompt", "completion", "label", "messages"),
}
_BASE_FORMAT = {
    "sharegpt-preference": "sharegpt",
    "alpaca-preference": "alpaca",
    "preference": "messages",
    "unpaired-preference": "messages",
}
Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class PreferencePair:
    """A prompt (chat messages, or one TEXT_ROLE message for plain text) and two replies to it
    (the messages that follow the prompt; one TEXT_ROLE message for plain text)."""

    prompt: Messages
    chosen: Messages
    rejected: Messages
    tools: list[dict[str, Any]] | None = None

    @property
    def is_text(self) -> bool:
        return self.prompt[0]["role"] == TEXT_ROLE


@dataclass(frozen=True)
class UnpairedCompletion:
    """A prompt and one completion, desirable or not (KTO's data)."""

    prompt: Messages
    completion: Messages
    desirable: bool
    tools: list[dict[str, Any]] | None = None

    @property
    def is_text(self) -> bool:
        return self.prompt[0]["role"] == TEXT_ROLE


# ---------------------------------------------------------------------------------------------
# detection and field resolution


def _key(data: Mapping[str, Any], canonical: str, fields: Mapping[str, str]) -> str | None:
    """The record's key for a canonical field: the mapped name, else the first alias present."""
    if canonical in fields:
        return fields[canonical] if fields[canonical] in data else None
    return next((alias for alias in ALIASES.get(canonical, (canonical,)) if alias in data), None)


def _classify(data: Mapping[str, Any], fields: Mapping[str, str]) -> tuple[str, str] | None:
    chosen, rejected = _key(data, "chosen", fields), _key(data, "rejected", fields)
    if chosen and rejected:
        conversations = fields.get("conversations", "conversations")
        if isinstance(data.get(conversations), list) and isinstance(data[chosen], dict):
            return "sharegpt-preference", f"'{conversations}' with '{chosen}'/'{rejected}' turns"
        instruction = fields.get("instruction", "instruction")
        if instruction in data:
            return "alpaca-preference", f"'{instruction}' with '{chosen}'/'{rejected}' replies"
        prompt = _key(data, "prompt", fields)
        return "preference", (
            f"'{prompt}', '{chosen}' and '{rejected}' keys"
            if prompt
            else f"'{chosen}' and '{rejected}' conversations sharing their prompt"
        )
    completion, label = _key(data, "completion", fields), _key(data, "label", fields)
    if completion and label:
        return "unpaired-preference", f"'{completion}' with a boolean '{label}'"
    return None


def preference_vote(
    records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """The preference format most of the first records have, or None when most of them are not
    preference records (SFT data with a stray 'chosen' key stays SFT data)."""
    sample = records[:DETECT_SAMPLE]
    votes = Counter(guess for data in sample if (guess := _classify(data, dict(fields or {}))) is not None)
    if not votes or 2 * sum(votes.values()) <= len(sample):
        return None
    (fmt, reason), count = votes.most_common(1)[0]
    return fmt, f"{reason} ({count} of {len(sample)} sampled records)"


def field_names(fmt: str) -> list[str]:
    """The canonical field names data.fields may map for preference format `fmt`."""
    names = {*_OWN_FIELDS[fmt], *FORMAT_FIELDS[_BASE_FORMAT[fmt]], "role", "content"} - {"output"}
    return sorted(names)


def detect_format(records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Guess the preference format from the first records; (format, human-readable reason)."""
    return vote_on_format(
        records,
        lambda data: _classify(data, dict(fields or {})),
        "preference data format: the first records have keys {keys}; expected chosen + rejected replies "
        "(with 'prompt', 'conversations' or 'instruction') or a completion with a boolean label. Set data.format "
        "(one of " + ", ".join(FORMATS) + ") and map your field names with data.fields.",
    )


@dataclass(frozen=True)
class Fields:
    """Where a format's parts are in the records: its own fields, and the resolved fields of the
    SFT format it builds on (for the prompt conversation)."""

    own: dict[str, str]
    base: dict[str, str]


def resolve_preference_fields(
    fmt: str, records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None
) -> Fields:
    """Map every canonical field of `fmt` to the record key that holds it (`fields` wins)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown preference format {fmt!r}; expected one of {FORMATS}")
    fields = dict(fields or {})
    own_names = _OWN_FIELDS[fmt]
    base_format = _BASE_FORMAT[fmt]
    base_given = {k: v for k, v in fields.items() if k not in own_names}
    allowed = {*field_names(fmt), "messages", "conversations"}  # the replies are chosen / rejected, not output
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} for format {fmt!r}; expected some of {sorted(allowed)}")
    sample = records[:100]
    own = {}
    for name in own_names:
        aliases = (fields[name],) if name in fields else ALIASES[name]
        own[name] = next((a for a in aliases if any(a in d for d in sample)), aliases[0])
    if fmt == "unpaired-preference":
        base_given.setdefault("conversations", own["messages"])
    base = resolve_fields(base_format, _prompt_sample(fmt, sample, own), base_given)
    return Fields(own, base)


def _prompt_sample(fmt: str, sample: Sequence[Mapping[str, Any]], own: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """Records as the base format's field resolution should see them (message lists where the
    preference format keeps its conversation under its own keys)."""
    if fmt != "preference":
        return list(sample)
    out: list[Mapping[str, Any]] = []
    for data in sample:
        for key in (own["prompt"], own["chosen"]):
            if isinstance(data.get(key), list):
                out.append({"messages": data[key]})
                break
    return out


# ---------------------------------------------------------------------------------------------
# normalisation


def normalize_preference(data: Mapping[str, Any], fmt: str, fields: Fields) -> PreferencePair | UnpairedCompletion:
    """One record -> PreferencePair (paired formats) or UnpairedCompletion, or RecordError with the reason."""
    if fmt == "sharegpt-preference":
        return _sharegpt(data, fields)
    if fmt == "alpaca-preference":
        return _alpaca(data, fields)
    if fmt == "preference":
        return _trl(data, fields)
    if fmt == "unpaired-preference":
        return _unpaired(data, fields)
    raise ValueError(f"unknown preference format {fmt!r}; expected one of {FORMATS}")


def _require(data: Mapping[str, Any], key: str) -> Any:
    if key not in data or data[key] is None:
        raise RecordError(f"missing '{key}'")
    return data[key]


def _split_last(conversation: Messages) -> tuple[Messages, Messages]:
    """(prompt, [reply]) of a normalised conversation whose last turn is the reply."""
    return conversation[:-1], conversation[-1:]


def _check_distinct(chosen: Messages, rejected: Messages, where: str) -> None:
    if _strip(chosen) == _strip(rejected):
        raise RecordError(
            f"the chosen and rejected replies are identical{where}: a pair must differ to teach a preference"
        )


def _strip(messages: Messages) -> list[tuple[str, str]]:
    return [(m["role"], str(m.get("content", "")).strip()) for m in messages]


def _sharegpt(data: Mapping[str, Any], fields: Fields) -> PreferencePair:
    base = fields.base
    role_key, content_key, conv_key = base["role"], base["content"], base["conversations"]
    turns = _require(data, conv_key)
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"'{conv_key}' is empty" if isinstance(turns, list) else f"'{conv_key}' is not a list")
    last = turns[-1]
    if isinstance(last, dict) and ROLES.get(str(last.get(role_key))) not in ("user", "tool"):
        raise RecordError(
            f"the prompt ('{conv_key}') must end with a human (or observation) turn, which the chosen "
            f"and rejected replies answer; its last turn is {last.get(role_key)!r}"
        )
    replies = []
    for name in ("chosen", "rejected"):
        key = fields.own[name]
        reply = _require(data, key)
        if isinstance(reply, str):
            reply = {role_key: "gpt", content_key: reply}
        if not isinstance(reply, dict):
            raise RecordError(f"'{key}' is a {type(reply).__name__}; expected a turn {{{role_key}, {content_key}}}")
        reply = {role_key: "gpt", **reply}
        if ROLES.get(reply[role_key]) != "assistant":
            raise RecordError(f"'{key}' is a {reply[role_key]!r} turn; the replies are assistant turns ('gpt')")
        _check_reply_text(reply.get(content_key), key)
        conversation = normalize_record({**data, conv_key: [*turns, reply]}, "sharegpt", base)
        replies.append(conversation)
    (prompt, chosen), (_, rejected) = (_split_last(c.messages) for c in replies)
    _check_distinct(chosen, rejected, "")
    return PreferencePair(prompt, chosen, rejected, replies[0].tools)


def _check_reply_text(content: Any, key: str) -> None:
    if not isinstance(content, str):
        raise RecordError(f"'{key}' has no text (found {type(content).__name__}); expected a string")
    if not content.strip():
        raise RecordError(f"empty '{key}' reply")


def _alpaca(data: Mapping[str, Any], fields: Fields) -> PreferencePair:
    replies = []
    for name in ("chosen", "rejected"):
        key = fields.own[name]
        reply = _require(data, key)
        _check_reply_text(reply, key)
        base = {**fields.base, "output": key}
        replies.append(normalize_record(data, "alpaca", base).messages)
    (prompt, chosen), (_, rejected) = (_split_last(c) for c in replies)
    _check_distinct(chosen, rejected, "")
    return PreferencePair(prompt, chosen, rejected)


def _text(value: Any, key: str, *, reply: bool) -> Messages:
    if not isinstance(value, str):
        raise RecordError(f"'{key}' is a {type(value).__name__}; expected a string or a list of messages")
    if not value.strip():
        raise RecordError(f"empty '{key}'" + (" reply" if reply else ""))
    return [{"role": TEXT_ROLE, "content": value}]


def _conversation(messages: Any, key: str, fields: Fields) -> Messages:
    """A message list checked as an SFT conversation (it must end with an assistant turn)."""
    if not isinstance(messages, list) or not messages:
        raise RecordError(
            f"'{key}' is empty"
            if isinstance(messages, list)
            else f"'{key}' is a {type(messages).__name__}; expected a list of messages"
        )
    base = {**fields.base, "conversations": key}
    return normalize_record({key: messages}, "messages", base).messages


def _as_reply(value: Any, key: str, fields: Fields) -> Messages:
    """A reply given as a message list (assistant turns), a single message or a plain string."""
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, str):
        _check_reply_text(value, key)
        return [{"role": "assistant", "content": value}]
    if not isinstance(value, list) or not value:
        raise RecordError(
            f"'{key}' is empty"
            if isinstance(value, list)
            else f"'{key}' is a {type(value).__name__}; expected a string or a list of messages"
        )
    role_key, content_key = fields.base["role"], fields.base["content"]
    first = value[0]
    if isinstance(first, dict) and ROLES.get(first.get(role_key)) != "assistant":  # type: ignore[arg-type]
        raise RecordError(f"'{key}' starts with a {first.get(role_key)!r} turn; a reply starts with an assistant turn")
    if isinstance(first, dict):
        _check_reply_text(first.get(content_key) if not first.get("tool_calls") else "tool call", key)
    return value


def _trl(data: Mapping[str, Any], fields: Fields) -> PreferencePair:
    own = fields.own
    chosen_raw, rejected_raw = _require(data, own["chosen"]), _require(data, own["rejected"])
    prompt_raw = data.get(own["prompt"])
    if prompt_raw is None:
        return _implicit_prompt(chosen_raw, rejected_raw, fields)
    if isinstance(prompt_raw, str) and isinstance(chosen_raw, str) and isinstance(rejected_raw, str):
        prompt = _text(prompt_raw, own["prompt"], reply=False)
        chosen, rejected = (
            _text(chosen_raw, own["chosen"], reply=True),
            _text(rejected_raw, own["rejected"], reply=True),
        )
        _check_distinct(chosen, rejected, "")
        return PreferencePair(prompt, chosen, rejected)
    if isinstance(prompt_raw, str):
        prompt_raw = [{fields.base["role"]: "user", fields.base["content"]: prompt_raw}]
    if not isinstance(prompt_raw, list):
        raise RecordError(
            f"'{own['prompt']}' is a {type(prompt_raw).__name__}; expected a string or a list of messages"
        )
    replies = [
        _conversation([*prompt_raw, *_as_reply(raw, own[name], fields)], own[name], fields)
        for name, raw in (("chosen", chosen_raw), ("rejected", rejected_raw))
    ]
    cut = len(prompt_raw)  # normalising keeps one message per turn
    _check_distinct(replies[0][cut:], replies[1][cut:], "")
    return PreferencePair(replies[0][:cut], replies[0][cut:], replies[1][cut:])


def _implicit_prompt(chosen_raw: Any, rejected_raw: Any, fields: Fields) -> PreferencePair:
    """TRL's implicit prompt: the turns both conversations share are the prompt."""
    own = fields.own
    if isinstance(chosen_raw, str) or isinstance(rejected_raw, str):
        raise RecordError(
            f"missing '{own['prompt']}': plain-text replies need their prompt in '{own['prompt']}' "
            "(only message lists can share an implicit prompt)"
        )
    chosen = _conversation(chosen_raw, own["chosen"], fields)
    rejected = _conversation(rejected_raw, own["rejected"], fields)
    shared = 0
    while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
        shared += 1
    if shared == len(chosen) == len(rejected):
        _check_distinct(chosen, rejected, "")
    while shared and chosen[shared - 1]["role"] == "assistant":  # a reply starts with the first differing turn
        shared -= 1
    prompt = chosen[:shared]
    if not any(m["role"] == "user" for m in prompt):
        raise RecordError(
            f"'{own['chosen']}' and '{own['rejected']}' share no prompt (no user turn in common): give "
            f"the prompt in '{own['prompt']}', or make both conversations start with it"
        )
    pair = PreferencePair(prompt, chosen[shared:], rejected[shared:])
    _check_distinct(pair.chosen, pair.rejected, "")
    return pair


def _unpaired(data: Mapping[str, Any], fields: Fields) -> UnpairedCompletion:
    own = fields.own
    label = _require(data, own["label"])
    if not isinstance(label, bool):
        raise RecordError(f"'{own['label']}' is {label!r}; expected true (desirable) or false (undesirable)")
    raw = _require(data, own["completion"])
    prompt_raw = data.get(own["prompt"])
    if prompt_raw is None:
        prompt_raw = data.get(own["messages"])
        if prompt_raw is None:
            raise RecordError(f"missing '{own['prompt']}' (or the conversation in '{own['messages']}')")
    if isinstance(prompt_raw, str) and isinstance(raw, str):
        return UnpairedCompletion(
            _text(prompt_raw, own["prompt"], reply=False), _text(raw, own["completion"], reply=True), label
        )
    if isinstance(prompt_raw, str):
        prompt_raw = [{fields.base["role"]: "user", fields.base["content"]: prompt_raw}]
    if not isinstance(prompt_raw, list):
        raise RecordError(f"the prompt is a {type(prompt_raw).__name__}; expected a string or a list of messages")
    reply = _as_reply(raw, own["completion"], fields)
    messages = _conversation([*prompt_raw, *reply], own["completion"], fields)
    cut = len(messages) - len(reply)
    return UnpairedCompletion(messages[:cut], messages[cut:], label)


def unpair(pair: PreferencePair) -> tuple[UnpairedCompletion, UnpairedCompletion]:
    """A pair as KTO sees it: the chosen reply desirable, the rejected one not."""
    return (
        UnpairedCompletion(pair.prompt, pair.chosen, True, pair.tools),
        UnpairedCompletion(pair.prompt, pair.rejected, False, pair.tools),
    )
