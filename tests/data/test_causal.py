"""Tokenisation: assistant-only labels (even without {% generation %} markers), text, truncation."""

from __future__ import annotations

from typing import Any

import pytest

from runner.data import IGNORE_INDEX, RecordError, causal, encode_conversation, to_example, tokenize_conversation
from runner.data.causal import has_generation_markers

from .helpers import SMOLLM2_TEMPLATE, make_tokenizer

CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "Translate to French: good morning"},
    {"role": "assistant", "content": "Bonjour."},
]


def trained_ids(example: dict[str, list[int]]) -> list[int]:
    return [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label != IGNORE_INDEX]


def expected_assistant_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """Each assistant content's own tokens followed by the end-of-turn token <|im_end|>."""
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    out: list[int] = []
    for m in messages:
        if m["role"] == "assistant":
            out += tokenizer(m["content"], add_special_tokens=False)["input_ids"] + [end_of_turn]
    return out


def test_without_generation_markers_exactly_the_assistant_tokens_are_trained(tokenizer: Any) -> None:
    assert not has_generation_markers(SMOLLM2_TEMPLATE)  # transformers' own mask would be all zeros
    example = tokenize_conversation(tokenizer, CONVERSATION, max_length=512)

    assert example["input_ids"] == tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False)
    assert trained_ids(example) == expected_assistant_ids(tokenizer, CONVERSATION)
    # labels equal the input ids where trained, -100 elsewhere (prompt, headers, newlines)
    assert all(label in (IGNORE_INDEX, t) for t, label in zip(example["input_ids"], example["labels"], strict=True))
    prompt = tokenizer.decode(
        [t for t, label in zip(example["input_ids"], example["labels"], strict=True) if label == IGNORE_INDEX]
    )
    assert "What is the capital of France?" in prompt and "SmolLM" in prompt and "Paris" not in prompt
    assert example["attention_mask"] == [1] * len(example["input_ids"])


def test_train_on_prompt_trains_every_token(tokenizer: Any) -> None:
    example = tokenize_conversation(tokenizer, CONVERSATION, max_length=512, train_on_prompt=True)
    assert example["labels"] == example["input_ids"]


def test_tool_results_are_prompt_and_function_calls_are_trained(tokenizer: Any) -> None:
    messages = [
        {"role": "user", "content": "I have chicken and rice."},
        {"role": "assistant", "content": '{"name": "search_recipes"}'},
        {"role": "tool", "content": '{"recipes": []}'},
        {"role": "assistant", "content": "No recipes."},
    ]
    example = tokenize_conversation(tokenizer, messages, max_length=512)
    assert trained_ids(example) == expected_assistant_ids(tokenizer, messages)


def test_the_tokenizer_mask_is_used_when_the_template_has_generation_markers(monkeypatch) -> None:
    tokenizer = make_tokenizer(chat_template=None)  # no template: the built-in ChatML, which has markers
    expected = expected_assistant_ids(tokenizer, CONVERSATION)

    def no_fallback(*args: Any) -> None:
        raise AssertionError("the prefix-diff fallback should not run")

    monkeypatch.setattr(causal, "_mask_from_prefixes", no_fallback)
    example = tokenize_conversation(tokenizer, CONVERSATION, max_length=512)
    assert tokenizer.decode(example["input_ids"]).startswith("<|im_start|>user\nWhat is")
    assert trained_ids(example) == expected


@pytest.mark.parametrize(
    "markers",
    [
        "{% if false %}{% generation %}x{% endgeneration %}{% endif %}",  # never rendered: all-zero mask
        "{% generation %}{% endgeneration %}",  # empty block: transformers' mask code fails
    ],
)
def test_an_unusable_tokenizer_mask_falls_back_to_prefix_diff(markers: str) -> None:
    tokenizer = make_tokenizer(chat_template=markers + SMOLLM2_TEMPLATE)
    example = tokenize_conversation(tokenizer, CONVERSATION, max_length=512)
    assert trained_ids(example) == expected_assistant_ids(tokenizer, CONVERSATION)


def test_builtin_chatml_puts_tools_in_the_prompt_not_in_the_labels() -> None:
    tokenizer = make_tokenizer(chat_template=None)
    tools = [{"name": "search_recipes", "parameters": {"type": "object"}}]
    example = tokenize_conversation(tokenizer, CONVERSATION, max_length=512, tools=tools)
    text = tokenizer.decode(example["input_ids"])
    assert text.startswith("<|im_start|>system\nYou can call these tools") and '"search_recipes"' in text
    assert trained_ids(example) == expected_assistant_ids(tokenizer, CONVERSATION)


def test_text_format_trains_on_all_tokens_plus_eos(tokenizer: Any) -> None:
    messages = [{"role": "text", "content": "The quick brown fox."}]
    example = tokenize_conversation(tokenizer, messages, max_length=512)
    assert example["input_ids"] == tokenizer("The quick brown fox.")["input_ids"] + [tokenizer.eos_token_id]
    assert example["labels"] == example["input_ids"]


def test_truncation_keeps_the_start_and_reports_it(tokenizer: Any) -> None:
    encoded = encode_conversation(tokenizer, CONVERSATION)
    first_answer_start = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    first_answer_end = encoded.labels.index(IGNORE_INDEX, first_answer_start)
    example, truncated = to_example(encoded, max_length=first_answer_end)
    assert truncated and len(example["input_ids"]) == first_answer_end
    assert example["input_ids"] == encoded.input_ids[:first_answer_end]
    assert trained_ids(example) == expected_assistant_ids(tokenizer, CONVERSATION[:2])
    assert to_example(encoded, max_length=len(encoded.input_ids))[1] is False


def test_an_example_with_no_response_left_after_truncation_is_a_bad_record(tokenizer: Any) -> None:
    encoded = encode_conversation(tokenizer, CONVERSATION)
    prompt_length = next(i for i, label in enumerate(encoded.labels) if label != IGNORE_INDEX)
    with pytest.raises(RecordError) as info:
        to_example(encoded, max_length=prompt_length)
    assert str(info.value) == (
        f"no response tokens left after truncation to max_length={prompt_length} "
        f"(the example has {len(encoded.input_ids)} tokens); raise data.max_length"
    )
    # one response token is enough to keep the example
    assert to_example(encoded, max_length=prompt_length + 1)[0]["labels"][-1] != IGNORE_INDEX


def test_a_conversation_the_template_refuses_is_a_record_error() -> None:
    strict = (
        "{% for m in messages %}{% if m['role'] == 'tool' %}{{ raise_exception('no tool role') }}{% endif %}"
        "{% endfor %}"
    )
    tokenizer = make_tokenizer(chat_template=strict + SMOLLM2_TEMPLATE)
    messages = [*CONVERSATION[:2], {"role": "tool", "content": "{}"}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(RecordError, match=r"^the chat template rejected this conversation: no tool role$"):
        encode_conversation(tokenizer, messages)
