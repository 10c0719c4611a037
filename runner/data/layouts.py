"""Layouts of other tools, and what to say when a record is in a layout the job does not read.

- ``segments`` (Axolotl ``input_output``): ``{"segments": [{"text": ..., "label": true|false}]}``.
  The texts are concatenated as they are, each tokenised on its own (so a segment's tokens are
  exactly its own), with no BOS or EOS added: as in Axolotl, the text says everything. Segments
  with ``label: false`` are masked.
- ``prompt-completion`` (TRL): ``{"prompt": ..., "completion": ...}``. As message lists
  (conversational) they are one conversation rendered with the chat template, the prompt's
  messages masked (TRL's completion-only loss); as strings, plain text: the tokenizer's BOS, the
  prompt (masked), the completion and an EOS (trained). String prompt/completion records are
  detected as alpaca (chat template applied) unless data.format = "prompt-completion" says so.

`explain` names the layout a record looks like and the setting that reads it, for refusals.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from runner.data.chat import normalize_chat
from runner.data.conversation import TEXT_ROLE, Conversation, RecordError, RecordOptions


def normalize_segments(data: Mapping[str, Any], fields: Mapping[str, str]) -> Conversation:
    key = fields["segments"]
    segments = data.get(key)
    if not isinstance(segments, list) or not segments:
        raise RecordError(
            f"missing '{key}'"
            if segments is None
            else f'\'{key}\' must be a non-empty list of {{"text": ..., "label": true|false}}'
        )
    messages = []
    for n, segment in enumerate(segments, start=1):
        where = f"'{key}' item {n}"
        if not isinstance(segment, dict):
            raise RecordError(f'{where} is a {type(segment).__name__}; expected {{"text": ..., "label": ...}}')
        text, label = segment.get("text"), segment.get("label")
        if not isinstance(text, str):
            raise RecordError(f"{where} has no 'text' string")
        if not isinstance(label, bool) and label not in (0, 1):
            raise RecordError(f"{where} 'label' must be true (trained) or false (masked), found {label!r}")
        if text:
            messages.append({"role": TEXT_ROLE, "content": text, "loss_weight": float(bool(label))})
    if not messages:
        raise RecordError(f"every text of '{key}' is empty")
    return Conversation(messages, special_tokens=False)


def normalize_prompt_completion(
    data: Mapping[str, Any], fields: Mapping[str, str], options: RecordOptions | None = None
) -> Conversation:
    prompt_key, completion_key = fields["prompt"], fields["completion"]
    prompt, completion = data.get(prompt_key), data.get(completion_key)
    for key, value in ((prompt_key, prompt), (completion_key, completion)):
        if value is None:
            raise RecordError(f"missing '{key}'")
    if isinstance(prompt, str) and isinstance(completion, str):
        if not completion.strip():
            raise RecordError(f"empty '{completion_key}'")
        return Conversation(
            [
                {"role": TEXT_ROLE, "content": prompt, "loss_weight": 0.0},
                {"role": TEXT_ROLE, "content": completion, "loss_weight": 1.0},
            ]
        )
    if not (isinstance(prompt, list) and isinstance(completion, list)):
        raise RecordError(
            f"'{prompt_key}' is a {type(prompt).__name__} and '{completion_key}' a "
            f"{type(completion).__name__}; write both as strings (plain text) or both as lists "
            "of messages (conversational)"
        )
    chat_fields = {**fields, "conversations": "messages"}
    record = {
        **{k: v for k, v in data.items() if k not in (prompt_key, completion_key)},
        "messages": [*prompt, *completion],
    }
    conv = normalize_chat(record, chat_fields, "messages", options)
    first_completion = len(conv.messages) - len(completion)
    for message in conv.messages[:first_completion]:
        message.setdefault("loss_weight", 0.0)  # the prompt is not trained (TRL's completion-only loss)
    return conv


# ---------------------------------------------------------------------------------------------
# what a record looks like


def explain(data: Mapping[str, Any], current: str | None = None) -> str | None:
    """'it looks like LAYOUT (why): SETTING' for a record in a layout other than `current`, or None."""
    if not isinstance(data, Mapping):
        return None
    keys = set(data)
    found = _layout(data, keys)
    if found is None or found[0] == current:
        return None
    layout, why, setting = found
    return f"it looks like {layout} ({why}): {setting}"


def _layout(data: Mapping[str, Any], keys: set[str]) -> tuple[str, str, str] | None:
    if {"chosen", "rejected"} <= keys:
        return (
            "preference",
            "'chosen' and 'rejected'",
            "preference pairs train a preference job"
            + _preference_losses(("dpo", "ipo", "orpo", "simpo"))
            + ", not supervised fine-tuning",
        )
    if "completion" in keys and isinstance(data.get("label"), bool):
        return (
            "unpaired-preference",
            "'completion' with a true/false 'label'",
            "it trains a preference job" + _preference_losses(("kto",)) + ", not supervised fine-tuning",
        )
    if isinstance(data.get("segments"), list):
        return ("segments", "Axolotl input_output 'segments'", 'set data.format = "segments"')
    if isinstance(data.get("prompt"), list) and isinstance(data.get("completion"), list):
        return (
            "prompt-completion",
            "TRL conversational 'prompt' and 'completion' message lists",
            'set data.format = "prompt-completion"',
        )
    if "input_ids" in keys:
        return ("tokenised", "'input_ids'", "records are read as text, not token ids: export the text instead")
    if "prompt" in keys and not keys & {"completion", "response", "output", "answer", "chosen"}:
        return (
            "prompt-only",
            "a 'prompt' and no response",
            "there is nothing to train on: add the response ('completion')",
        )
    turns = _turn_list(data)
    if turns is not None:
        key, first = turns
        if {"from", "value"} <= set(first):
            return ("sharegpt", f"'{key}' with from/value turns", 'set data.format = "sharegpt"')
        if {"role", "content"} <= set(first):
            return ("messages", f"'{key}' with role/content turns", 'set data.format = "messages"')
        role = next((k for k in first if k in ("from", "role", "speaker", "author", "sender")), None)
        content = next((k for k in first if k in ("value", "content", "text", "message", "utterance")), None)
        if role and content:
            return (
                "chat",
                f"a list of turns under '{key}' with keys '{role}'/'{content}'",
                f'set data.format = "messages" and data.fields = {{conversations = "{key}", role = '
                f'"{role}", content = "{content}"}}',
            )
    if keys & {"instruction", "question", "query"} and keys & {"output", "response", "answer"}:
        return ("alpaca", "an instruction and a response", 'set data.format = "alpaca"')
    if isinstance(data.get("text"), str):
        return ("text", "a 'text' string", 'set data.format = "text"')
    return None


def _preference_losses(wanted: tuple[str, ...]) -> str:
    """' (loss.type = "dpo", ...)' for the preference losses this runner's spec has, or ''."""
    from typing import get_args

    from runner.spec.model import LossType

    known = [loss for loss in wanted if loss in get_args(LossType)]
    return f" (loss.type = {' or '.join(repr(k).replace(chr(39), chr(34)) for k in known)})" if known else ""


def _turn_list(data: Mapping[str, Any]) -> tuple[str, Mapping[str, Any]] | None:
    """The first key holding a non-empty list of objects (the turns of a chat), and its first turn."""
    for key, value in data.items():
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return key, value[0]
    return None
