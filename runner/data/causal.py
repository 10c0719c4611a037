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

Before rendering, a conversation is fitted to the template (runner.data.tools): tool definitions
and tool calls go where the template takes them, or into the system prompt and <tool_call> text
(data.tools); an assistant's reasoning goes under the template's own key (``reasoning_content``)
or, when it has none, into a ``<think>\n...\n</think>\n\n`` block before the answer.

Messages with a ``loss_weight`` (0 or 1), and reasoning under data.reasoning = "mask", take the
same prefix diff per message: a message's segment runs from the end of the conversation rendered
up to it to the end of the conversation rendered through it (an assistant's from the end of its
header); weight 1 trains the segment (a user turn too, with its header), weight 0 masks it, a
masked reasoning block (with its tags) is cut out of an assistant's trained segment.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import jinja2

from runner.data.conversation import INTERNAL_KEYS, Conversation, RecordError
from runner.data.report import DataError
from runner.data.tools import TemplateFeatures, as_openai_tools, template_features, tool_call_text, with_tools_in_system

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
class EncodeOptions:
    """The job's settings that shape an example: data.train_on_prompt, data.tools, data.reasoning."""

    train_on_prompt: bool = False
    tools: str = "render"  # when the template cannot render tools: render (system prompt) | drop | refuse
    reasoning: str = "train"  # train | mask


@dataclass(frozen=True)
class Encoded:
    """A tokenised example before truncation; `tools` says how the record's tool definitions reached
    the prompt ("template", "system-prompt") or that they were "dropped" (None: it had none)."""

    input_ids: list[int]
    labels: list[int]
    tools: str | None = None

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
    """Render messages with the chat template and label the assistant tokens (all if train_on_prompt)."""
    return encode(
        tokenizer,
        Conversation(list(messages), list(tools) if tools else None),
        EncodeOptions(train_on_prompt=train_on_prompt),
    )


def encode(tokenizer: Any, conv: Conversation, options: EncodeOptions | None = None) -> Encoded:
    """A normalised record -> token ids and labels.

    A template that refuses the conversation (many raise on roles they do not know,
    e.g. "tool") makes it a bad record, not a crash.
    """
    try:
        return _encode(tokenizer, conv, options or EncodeOptions())
    except jinja2.TemplateError as e:
        raise RecordError(f"the chat template rejected this conversation: {e}") from None


def _encode(tokenizer: Any, conv: Conversation, options: EncodeOptions) -> Encoded:
    if conv.is_text:
        if len(conv.messages) == 1 and "loss_weight" not in conv.messages[0]:
            return encode_text(tokenizer, conv.messages[0]["content"])
        return encode_segments(tokenizer, conv.messages, special_tokens=conv.special_tokens)
    template = chat_template_for(tokenizer, conv.tools)
    features = template_features(tokenizer, template)
    messages, metas, tools, handling = _fit_to_template(conv, features, options.tools)
    weighted = any("loss_weight" in m for m in metas) or (
        options.reasoning == "mask" and any(m.get("reasoning") for m in metas)
    )
    if weighted:
        ids, mask = _weighted_mask(tokenizer, messages, metas, template, tools, options)
        return _apply_mask(ids, mask, handling)
    if options.train_on_prompt:
        ids = _render_ids(tokenizer, messages, template, tools)
        return Encoded(ids, list(ids), handling)
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
            return _apply_mask(ids, mask, handling)
    ids, mask = _mask_from_prefixes(tokenizer, messages, template, tools)
    return _apply_mask(ids, mask, handling)


def _fit_to_template(
    conv: Conversation, features: TemplateFeatures, tools_policy: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]] | None, str | None]:
    """The messages as this template takes them, the normalised message behind each (an inserted
    system prompt has a bare one), the tools to pass it, and how the tools were handled."""
    messages: list[dict[str, Any]] = []
    for message in conv.messages:
        shown = {k: v for k, v in message.items() if k not in INTERNAL_KEYS}
        if shown.get("tool_calls") and not features.tool_calls:
            calls = tool_call_text(shown.pop("tool_calls"))
            shown["content"] = f"{shown['content']}\n{calls}" if shown["content"] else calls
        if message.get("reasoning"):
            if features.reasoning_key:
                shown[features.reasoning_key] = message["reasoning"]
            else:
                shown["content"] = think_block(message["reasoning"]) + shown["content"]
        messages.append(shown)
    metas = list(conv.messages)
    if not conv.tools:
        return messages, metas, None, None
    if features.tools:
        return messages, metas, as_openai_tools(conv.tools), "template"
    if tools_policy == "render":
        fitted = with_tools_in_system(messages, conv.tools)
        return fitted, ([{"role": "system"}] if len(fitted) > len(messages) else []) + metas, None, "system-prompt"
    if tools_policy == "drop":
        return messages, metas, None, "dropped"
    raise RecordError(
        f"defines {len(conv.tools)} tool(s), but the chat template does not render tools and "
        'data.tools = "refuse"; set data.tools = "render" to list them in the system prompt, '
        'or "drop" to leave them out'
    )


def think_block(reasoning: str) -> str:
    """Reasoning for a template with no place for it: a <think> block before the answer."""
    return "<think>\n" + reasoning.strip("\n") + "\n</think>\n\n"


def encode_segments(tokenizer: Any, segments: Sequence[dict[str, Any]], *, special_tokens: bool) -> Encoded:
    """Plain-text segments, each tokenised on its own and labelled by its loss_weight. With
    `special_tokens`, the tokenizer's own leading special tokens (e.g. BOS, masked) come first and
    an EOS last (labelled as the last segment)."""
    ids: list[int] = []
    labels: list[int] = []
    if special_tokens:
        lead = list(tokenizer("", add_special_tokens=True)["input_ids"])
        ids += lead
        labels += [IGNORE_INDEX] * len(lead)
    for segment in segments:
        part = list(tokenizer(segment["content"], add_special_tokens=False)["input_ids"])
        trained = segment.get("loss_weight", 1.0) > 0
        ids += part
        labels += part if trained else [IGNORE_INDEX] * len(part)
    eos = tokenizer.eos_token_id
    if special_tokens and eos is not None:
        ids.append(eos)
        labels.append(eos if segments[-1].get("loss_weight", 1.0) > 0 else IGNORE_INDEX)
    return Encoded(ids, labels)


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
        raise RecordError(
            "no trainable tokens: every message is masked (loss_weight 0, segments labelled "
            "false) or the chat template rendered no assistant tokens"
        )
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


def _apply_mask(ids: list[int], mask: Sequence[int], tools: str | None = None) -> Encoded:
    return Encoded(ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)], tools)


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
    return _token_mask(tokenizer, text, spans, [], base=0)


def _weighted_mask(
    tokenizer: Any,
    messages: list[dict[str, Any]],
    metas: list[dict[str, Any]],
    template: str,
    tools: Any,
    options: EncodeOptions,
) -> tuple[list[int], list[int]]:
    """Trained and masked character spans per message (loss_weight, masked reasoning), as tokens."""
    text = _render(tokenizer, messages, template, tools, False)
    prefixes = [""] + [_render(tokenizer, messages[:k], template, tools, False) for k in range(1, len(messages))]
    prefixes.append(text)
    trained: list[tuple[int, int]] = []
    masked: list[tuple[int, int]] = []
    for k, (message, meta) in enumerate(zip(messages, metas, strict=True)):
        start, end = len(prefixes[k]), len(prefixes[k + 1])
        if not (text.startswith(prefixes[k + 1]) and end >= start):
            raise TemplateError(_unstable(k))
        weight = meta.get("loss_weight")
        role = message["role"]
        if weight is None:
            weight = 1.0 if options.train_on_prompt or role == "assistant" else 0.0
        if weight and role == "assistant":
            if k == 0:
                raise RecordError("conversation starts with an assistant turn")
            header = _render(tokenizer, messages[:k], template, tools, True)
            head = len(header)
            if not (text.startswith(header) and start <= head <= end):
                raise TemplateError(_unstable(k))
            trained.append((head, head + len(text[head:end].rstrip())))
        elif weight:
            trained.append((start, end))
        else:
            masked.append((start, end))
        if role == "assistant" and meta.get("reasoning") and options.reasoning == "mask":
            block = _reasoning_span(text, start, end, meta["reasoning"])
            if block is not None:
                masked.append(block)
    return _token_mask(tokenizer, text, trained, masked, base=int(options.train_on_prompt))


_OPEN_TAG = re.compile(r"<[A-Za-z_|]{1,24}>\s*$")
_CLOSE_TAG = re.compile(r"\s*</[A-Za-z_|]{1,24}>[ \t]*\n*")


def _reasoning_span(text: str, start: int, end: int, reasoning: str) -> tuple[int, int] | None:
    """Where the reasoning was rendered inside [start, end), with the tags around it (<think>...</think>)."""
    needle = reasoning.strip()
    at = text.find(needle, start, end)
    if not needle or at < 0:
        return None  # the template left it out: nothing of it to mask
    s, e = at, at + len(needle)
    opening = _OPEN_TAG.search(text, start, s)
    if opening is not None:
        s = opening.start()
    closing = _CLOSE_TAG.match(text, e, end)
    if closing is not None:
        e = closing.end()
    return s, e


def _unstable(k: int) -> str:
    return (
        f"the chat template is not prefix-stable at message {k + 1}: rendering the conversation up to it is "
        "not a prefix of the whole rendering, so its tokens cannot be located; use a template with "
        "{% generation %} markers, or train_on_prompt = true without per-message loss weights"
    )


def _token_mask(
    tokenizer: Any, text: str, trained: Sequence[tuple[int, int]], masked: Sequence[tuple[int, int]], *, base: int
) -> tuple[list[int], list[int]]:
    """1 for tokens that overlap a trained span, 0 for those that overlap a masked one (masked wins),
    `base` for the rest."""
    if tokenizer.is_fast:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]

        def overlaps(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
            return any(end > s and start < e for s, e in spans)

        mask = [0 if overlaps(a, b, masked) else 1 if overlaps(a, b, trained) else base for a, b in offsets]
        return ids, mask
    # slow tokenizers have no offsets: map span edges to tokens by tokenising text prefixes
    ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])

    def boundary(char: int) -> int:
        head = list(tokenizer(text[:char], add_special_tokens=False)["input_ids"])
        if ids[: len(head)] != head:
            raise TemplateError("tokenisation is not prefix-stable at a turn boundary; use a fast tokenizer")
        return len(head)

    mask = [base] * len(ids)
    for value, spans in ((1, trained), (0, masked)):
        for s, e in spans:
            for i in range(boundary(s), boundary(e)):
                mask[i] = value
    return ids, mask
