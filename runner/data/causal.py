"""Tokenise normalised conversations for causal-LM fine-tuning, with assistant-only labels.

How the trainable tokens are found, in order of preference:

1. The template has ``{% generation %}`` markers: use the tokenizer's own
   ``return_assistant_tokens_mask``, if it marks anything.
2. Otherwise (SmolLM2's template has no markers, and transformers then returns an
   all-zero mask), diff growing prefixes of the *rendered text*: assistant turn k spans
   from the end of ``render(messages[:k], add_generation_prompt=True)`` (its header) to
   the end of ``render(messages[:k+1])``, minus trailing whitespace, so the content and
   its end-of-turn token (``<|im_end|>``) are trained and the newline before the next
   header is not. Character spans are mapped to tokens with the offsets of a single
   tokenisation of the whole text, so BPE merges at turn boundaries cannot shift them.

A tokenizer without a chat template gets `CHATML_TEMPLATE` (ChatML with generation
markers; ``<|im_start|>``/``<|im_end|>`` are tokenised as text unless the tokenizer has
them as added tokens). Labels are -100 outside the trainable tokens; "trainable"
counts ``labels[1:]`` because the model shifts labels by one, so a label on the first
token never contributes to the loss.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from runner.data.formats import TEXT_ROLE, RecordError
from runner.data.report import DataError

IGNORE_INDEX = -100
Example = dict[str, list[int]]

CHATML_TEMPLATE = (
    "{% if tools %}{{ '<|im_start|>system\\n' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ 'You can call these tools (JSON schemas):\\n' }}"
    "{% for tool in tools %}{{ (tool | tojson) + '\\n' }}{% endfor %}{{ '<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}"
    "{% if message['role'] == 'assistant' %}{{ '<|im_start|>assistant\\n' }}"
    "{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}{{ '\\n' }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endif %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_GENERATION_TAG = re.compile(r"\{%-?\s*generation\s*-?%\}")  # the test transformers itself uses


class TemplateError(DataError):
    """The chat template renders conversations in a way the assistant mask cannot follow."""


@dataclass(frozen=True)
class Encoded:
    """A tokenised example before truncation."""

    input_ids: list[int]
    labels: list[int]

    @property
    def trainable(self) -> int:
        """Tokens that contribute to the loss (labels are shifted by one inside the model)."""
        return sum(1 for label in self.labels[1:] if label != IGNORE_INDEX)


def chat_template_for(tokenizer: Any, tools: Sequence[dict[str, Any]] | None = None) -> str:
    """The tokenizer's chat template, or the built-in ChatML one when it has none."""
    if tokenizer.chat_template is None:
        return CHATML_TEMPLATE
    return tokenizer.get_chat_template(None, list(tools) if tools else None)


def has_generation_markers(template: str) -> bool:
    return _GENERATION_TAG.search(template) is not None


def encode_text(tokenizer: Any, text: str) -> Encoded:
    """Plain completion: the tokenizer's own special tokens (e.g. BOS) + text + EOS, loss on all."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return Encoded(ids, list(ids))


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    train_on_prompt: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Encoded:
    """Render with the chat template and label the assistant tokens (all tokens if train_on_prompt).

    A template that refuses the conversation (many raise on roles they do not know,
    e.g. "tool") makes it a bad record, not a crash.
    """
    try:
        return _encode_conversation(tokenizer, list(messages), train_on_prompt, tools)
    except jinja2.TemplateError as e:
        raise RecordError(f"the chat template rejected this conversation: {e}") from None


def _encode_conversation(
    tokenizer: Any, messages: list[dict[str, Any]], train_on_prompt: bool, tools: Sequence[dict[str, Any]] | None
) -> Encoded:
    if len(messages) == 1 and messages[0]["role"] == TEXT_ROLE:
        return encode_text(tokenizer, messages[0]["content"])
    tools = list(tools) if tools else None
    template = chat_template_for(tokenizer, tools)
    if train_on_prompt:
        ids = _render_ids(tokenizer, messages, template, tools)
        return Encoded(ids, list(ids))
    if has_generation_markers(template):
        try:
            out = tokenizer.apply_chat_template(
                messages,
                tools=tools,
                chat_template=template,
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        except (OverflowError, IndexError):  # transformers fails on an empty generation block
            mask = []
        if any(mask):
            return _apply_mask(ids, mask)
    ids, mask = _mask_from_prefixes(tokenizer, messages, template, tools)
    return _apply_mask(ids, mask)


def to_example(encoded: Encoded, max_length: int) -> tuple[Example, bool]:
    """Truncate to max_length (keeping the start); return (example, was_truncated).

    Raises RecordError when no trainable token is left, since such an example only
    costs compute (and a batch made only of them has a NaN loss).
    """
    if max_length < 2:
        raise ValueError(f"max_length must be at least 2, got {max_length}")
    truncated = len(encoded.input_ids) > max_length
    kept = Encoded(encoded.input_ids[:max_length], encoded.labels[:max_length])
    if kept.trainable == 0:
        if truncated:
            raise RecordError(
                f"no response tokens left after truncation to max_length={max_length} "
                f"(the example has {len(encoded.input_ids)} tokens); raise data.max_length"
            )
        raise RecordError("no trainable tokens: the chat template rendered no assistant tokens")
    n = len(kept.input_ids)
    return {"input_ids": kept.input_ids, "labels": kept.labels, "attention_mask": [1] * n}, truncated


def tokenize_conversation(
    tokenizer: Any,
    messages: Sequence[dict[str, Any]],
    *,
    max_length: int,
    train_on_prompt: bool = False,
    tools: Sequence[dict[str, Any]] | None = None,
) -> Example:
    """One conversation -> {input_ids, labels, attention_mask}, truncated to max_length."""
    encoded = encode_conversation(tokenizer, messages, train_on_prompt=train_on_prompt, tools=tools)
    return to_example(encoded, max_length)[0]


# ---------------------------------------------------------------------------------------


def _render(tokenizer: Any, messages: list[dict[str, Any]], template: str, tools: Any, gen: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, tools=tools, chat_template=template, tokenize=False, add_generation_prompt=gen
    )


def _render_ids(tokenizer: Any, messages: list[dict[str, Any]], template: str, tools: Any) -> list[int]:
    text = _render(tokenizer, messages, template, tools, False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])  # as apply_chat_template does


def _apply_mask(ids: list[int], mask: Sequence[int]) -> Encoded:
    return Encoded(ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)])


def _assistant_spans(
    tokenizer: Any, messages: list[dict[str, Any]], template: str, tools: Any
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character span of each assistant turn."""
    text = _render(tokenizer, messages, template, tools, False)
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if k == 0:
            raise RecordError("conversation starts with an assistant turn")
        before = _render(tokenizer, messages[:k], template, tools, True)
        through = _render(tokenizer, messages[: k + 1], template, tools, False)
        if not (text.startswith(before) and text.startswith(through) and len(through) > len(before)):
            raise TemplateError(
                f"the chat template is not prefix-stable at assistant turn {k + 1}: rendering the conversation "
                "up to that turn is not a prefix of the whole rendering, so the assistant tokens cannot be "
                "located; use a template with {% generation %} markers, or train_on_prompt = true"
            )
        spans.append((len(before), len(before) + len(through[len(before) :].rstrip())))
    return text, spans


def _mask_from_prefixes(
    tokenizer: Any, messages: list[dict[str, Any]], template: str, tools: Any
) -> tuple[list[int], list[int]]:
    text, spans = _assistant_spans(tokenizer, messages, template, tools)
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
        mask = [int(any(end > s and start < e for s, e in spans)) for start, end in offsets]
        return ids, mask
    # slow tokenizers have no offsets: map span edges to tokens by tokenising text prefixes
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def boundary(char: int) -> int:
        head = list(tokenizer(text[:char], add_special_tokens=False)["input_ids"])
        if ids[: len(head)] != head:
            raise TemplateError("tokenisation is not prefix-stable at a turn boundary; use a fast tokenizer")
        return len(head)

    mask = [0] * len(ids)
    for s, e in spans:
        for i in range(boundary(s), boundary(e)):
            mask[i] = 1
    return ids, mask
