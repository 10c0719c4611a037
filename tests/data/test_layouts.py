"""Layouts of other tools: typed content parts, reasoning, per-message loss_weight, media, roles,
Axolotl segments and TRL prompt-completion; what each record trains, token by token."""

from __future__ import annotations

from typing import Any

import pytest

from runner.data import IGNORE_INDEX, RecordError, detect_format, normalize_record, resolve_fields
from runner.data.causal import EncodeOptions, encode, think_block
from runner.data.conversation import Conversation, RecordOptions

from .helpers import make_tokenizer

# a template that renders reasoning under its own key, as Qwen3's does (a <think> block)
REASONING_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' }}"
    "{% if m.reasoning_content %}{{ '<think>\n' + m.reasoning_content + '\n</think>\n\n' }}{% endif %}"
    "{{ m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def normalize(record: dict[str, Any], fmt: str | None = None, options: RecordOptions | None = None) -> Conversation:
    fmt = fmt or detect_format([record])[0]
    return normalize_record(record, fmt, resolve_fields(fmt, [record]), options=options)


def trained_text(tokenizer: Any, conv: Conversation, **options: Any) -> str:
    encoded = encode(tokenizer, conv, EncodeOptions(**options))
    return tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    )


def masked_text(tokenizer: Any, conv: Conversation, **options: Any) -> str:
    encoded = encode(tokenizer, conv, EncodeOptions(**options))
    return tokenizer.decode(
        [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label == IGNORE_INDEX]
    )


def parts(*texts: str, spelling: str = "value") -> list[dict[str, str]]:
    return [{"type": "text", spelling: text} for text in texts]


# ---- content parts -------------------------------------------------------------------------------


def test_llamafactory_typed_parts_read_with_the_value_and_the_text_spelling_mixed_with_strings() -> None:
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": parts("What is ", "the capital of France?"), "loss_weight": 0.0},
            {"role": "assistant", "content": parts("Paris.", spelling="text"), "loss_weight": 1.0},
            {"role": "user", "content": "Translate to French: good morning"},
            {"role": "assistant", "content": [{"type": "text", "value": "Bonjour."}]},
        ]
    }
    conv = normalize(record)
    assert [m["content"] for m in conv.messages] == [
        "Be brief.",
        "What is the capital of France?",
        "Paris.",
        "Translate to French: good morning",
        "Bonjour.",
    ]
    assert [m.get("loss_weight") for m in conv.messages] == [None, 0.0, 1.0, None, None]


def test_a_part_of_an_unknown_type_is_refused_with_its_place_and_the_types_read() -> None:
    record = {
        "messages": [
            {"role": "user", "content": [{"type": "table", "value": "x"}]},
            {"role": "assistant", "content": "ok"},
        ]
    }
    with pytest.raises(
        RecordError,
        match=r"^'messages' turn 1 'content' part 1 has type 'table'; the parts read "
        r"are text, reasoning, tool_call and image",
    ):
        normalize(record)


def test_tool_call_parts_become_tool_calls_written_as_tool_call_blocks_for_a_template_without_them(
    tokenizer: Any,
) -> None:
    record = {
        "messages": [
            {"role": "user", "content": "I have rice."},
            {
                "role": "assistant",
                "content": [{"type": "tool_call", "value": '{"name": "search", "arguments": {"q": 1}}'}],
            },
            {"role": "tool", "content": "[]"},
            {"role": "assistant", "content": "Nothing found."},
        ]
    }
    conv = normalize(record)
    assert conv.messages[1]["tool_calls"] == [
        {"type": "function", "function": {"name": "search", "arguments": {"q": 1}}}
    ]
    trained = trained_text(tokenizer, conv)
    assert trained == (
        '<tool_call>\n{"name": "search", "arguments": {"q": 1}}\n</tool_call><|im_end|>Nothing found.<|im_end|>'
    )


# ---- reasoning -----------------------------------------------------------------------------------


REASONING_RECORD = {
    "messages": [
        {"role": "user", "content": "What is 2 + 2?"},
        {
            "role": "assistant",
            "content": [{"type": "reasoning", "value": "Two and two make four."}, {"type": "text", "value": "4"}],
        },
    ]
}


def test_reasoning_without_a_place_in_the_template_is_a_think_block_before_the_answer_and_is_trained(
    tokenizer: Any,
) -> None:
    conv = normalize(REASONING_RECORD)
    assert conv.messages[1] == {"role": "assistant", "content": "4", "reasoning": "Two and two make four."}
    assert think_block("Two and two make four.") == "<think>\nTwo and two make four.\n</think>\n\n"
    assert trained_text(tokenizer, conv) == "<think>\nTwo and two make four.\n</think>\n\n4<|im_end|>"


def test_masked_reasoning_stays_in_the_input_and_out_of_the_loss(tokenizer: Any) -> None:
    conv = normalize(REASONING_RECORD)
    encoded = encode(tokenizer, conv, EncodeOptions(reasoning="mask"))
    assert encoded.input_ids == encode(tokenizer, conv).input_ids  # the same text
    assert trained_text(tokenizer, conv, reasoning="mask") == "4<|im_end|>"
    assert "<think>\nTwo and two make four.\n</think>" in masked_text(tokenizer, conv, reasoning="mask")


def test_a_template_with_reasoning_content_renders_it_its_own_way_masked_or_trained() -> None:
    tokenizer = make_tokenizer(chat_template=REASONING_TEMPLATE)
    record = {
        "messages": [
            {"role": "user", "content": "What is 2 + 2?"},
            {"role": "assistant", "content": "4", "reasoning_content": "Two and two make four."},
        ]
    }
    conv = normalize(record)
    text = tokenizer.decode(encode(tokenizer, conv).input_ids)
    assert text.count("Two and two make four.") == 1 and "<think>\nTwo and two make four.\n</think>\n\n4" in text
    assert trained_text(tokenizer, conv) == "<think>\nTwo and two make four.\n</think>\n\n4<|im_end|>"
    assert trained_text(tokenizer, conv, reasoning="mask") == "4<|im_end|>"


def test_reasoning_on_a_user_turn_is_refused() -> None:
    record = {
        "messages": [
            {"role": "user", "content": "q", "reasoning_content": "hmm"},
            {"role": "assistant", "content": "a"},
        ]
    }
    with pytest.raises(RecordError, match="'messages' turn 1 is a user turn with reasoning"):
        normalize(record)


# ---- loss_weight ---------------------------------------------------------------------------------


CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
    {"role": "user", "content": "Translate to French: good morning"},
    {"role": "assistant", "content": "Bonjour."},
]


def test_loss_weight_0_masks_an_assistant_turn_and_1_trains_a_user_turn_with_its_header(tokenizer: Any) -> None:
    messages = [dict(m) for m in CHAT]
    messages[1]["loss_weight"] = 0
    messages[2]["loss_weight"] = 1
    conv = normalize({"messages": messages})
    assert trained_text(tokenizer, conv) == (
        "<|im_start|>user\nTranslate to French: good morning<|im_end|>\nBonjour.<|im_end|>"
    )
    plain = normalize({"messages": CHAT})
    assert trained_text(tokenizer, plain) == "The capital of France is Paris.<|im_end|>Bonjour.<|im_end|>"
    # the weights change the labels, never the tokens
    assert encode(tokenizer, conv).input_ids == encode(tokenizer, plain).input_ids


def test_loss_weight_0_masks_a_turn_under_train_on_prompt_too(tokenizer: Any) -> None:
    messages = [dict(m) for m in CHAT]
    messages[1]["loss_weight"] = 0.0
    conv = normalize({"messages": messages})
    masked = masked_text(tokenizer, conv, train_on_prompt=True)
    assert "The capital of France is Paris." in masked and "Bonjour" not in masked
    assert "Translate to French" in trained_text(tokenizer, conv, train_on_prompt=True)


def test_axolotl_train_flags_are_loss_weights_and_a_mapped_name_is_read() -> None:
    record = {
        "conversations": [{"from": "human", "value": "q", "train": False}, {"from": "gpt", "value": "a", "train": True}]
    }
    assert [m.get("loss_weight") for m in normalize(record).messages] == [0.0, 1.0]
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "w": 0}]}
    fields = resolve_fields("messages", [record], {"loss_weight": "w"})
    assert normalize_record(record, "messages", fields).messages[1]["loss_weight"] == 0.0


def test_a_fractional_loss_weight_is_refused_because_the_loss_cannot_honour_it_exactly() -> None:
    record = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "loss_weight": 0.5}]}
    with pytest.raises(
        RecordError,
        match=r"'messages' turn 2 'loss_weight' is 0.5: only 0 \(masked\) and 1 "
        r"\(trained\) are honoured",
    ):
        normalize(record)


def test_a_conversation_whose_every_turn_is_masked_has_nothing_to_train(tokenizer: Any) -> None:
    from runner.data import to_example

    messages = [dict(m, loss_weight=0) for m in CHAT]
    encoded = encode(tokenizer, normalize({"messages": messages}))
    with pytest.raises(RecordError, match="no trainable tokens: every message is masked"):
        to_example(encoded, 512)


# ---- media ---------------------------------------------------------------------------------------


MULTIMODAL = {
    "messages": [
        {"role": "user", "content": "<image>Who are they?"},
        {"role": "assistant", "content": "Two footballers."},
        {"role": "user", "content": [{"type": "image", "image": "b.jpg"}, {"type": "text", "text": "And here?"}]},
        {"role": "assistant", "content": "A stadium."},
    ],
    "images": ["a.jpg"],
}


def test_images_are_refused_by_default_with_the_setting_that_drops_them() -> None:
    with pytest.raises(RecordError) as info:
        normalize(MULTIMODAL)
    assert str(info.value).startswith(
        "holds 2 images or other media (image parts, an 'images' list or <image> "
        "markers, as in LLaMA-Factory's multimodal layout); a causal LM here reads "
        'text only: set data.images = "drop"'
    )


def test_dropped_images_leave_their_text_and_are_counted() -> None:
    conv = normalize(MULTIMODAL, options=RecordOptions.of(images="drop"))
    assert [m["content"] for m in conv.messages] == ["Who are they?", "Two footballers.", "And here?", "A stadium."]
    assert conv.media_dropped == 2


# ---- roles ---------------------------------------------------------------------------------------


def test_data_roles_name_more_roles() -> None:
    record = {"conversations": [{"from": "me", "value": "q"}, {"from": "bot", "value": "a"}]}
    conv = normalize(record, "sharegpt", RecordOptions.of(roles={"user": ["me"], "assistant": ["bot"]}))
    assert [m["role"] for m in conv.messages] == ["user", "assistant"]


# ---- Axolotl segments ----------------------------------------------------------------------------


# the example of Axolotl's template-free (input_output) documentation
SEGMENTS = {
    "segments": [
        {"label": True, "text": "<|endoftext|>Hello\n"},
        {"label": True, "text": "hi there!. "},
        {"label": False, "text": "goodbye "},
        {"label": True, "text": "farewell<|im_end|>"},
    ]
}


def test_segments_are_detected_and_concatenated_as_written_with_the_false_ones_masked(tokenizer: Any) -> None:
    fmt, reason = detect_format([SEGMENTS])
    assert (fmt, reason) == (
        "segments",
        "'segments' key holding text segments (Axolotl input_output) (1 of 1 sampled records)",
    )
    conv = normalize(SEGMENTS)
    encoded = encode(tokenizer, conv)
    assert tokenizer.decode(encoded.input_ids) == "<|endoftext|>Hello\nhi there!. goodbye farewell<|im_end|>"
    assert trained_text(tokenizer, conv) == "<|endoftext|>Hello\nhi there!. farewell<|im_end|>"
    assert masked_text(tokenizer, conv) == "goodbye "


def test_a_segment_without_a_label_is_refused() -> None:
    with pytest.raises(RecordError, match=r"'segments' item 1 'label' must be true \(trained\) or false \(masked\)"):
        normalize({"segments": [{"text": "x"}]}, "segments")


# ---- TRL prompt-completion -----------------------------------------------------------------------


def test_conversational_prompt_completion_trains_the_completion_only(tokenizer: Any) -> None:
    record = {
        "prompt": [
            {"role": "user", "content": "What is the capital of France?"},
            {"role": "assistant", "content": "The capital of France is Paris."},
            {"role": "user", "content": "Translate to French: good morning"},
        ],
        "completion": [{"role": "assistant", "content": "Bonjour."}],
    }
    assert detect_format([record])[0] == "prompt-completion"
    conv = normalize(record)
    assert trained_text(tokenizer, conv) == "Bonjour.<|im_end|>"


def test_plain_prompt_completion_is_text_with_the_prompt_masked_and_an_eos(tokenizer: Any) -> None:
    record = {"prompt": "The quick brown fox", "completion": " jumps over the lazy dog."}
    assert detect_format([record])[0] == "alpaca"  # strings: the chat template applies unless set by hand
    conv = normalize(record, "prompt-completion")
    encoded = encode(tokenizer, conv)
    assert tokenizer.decode(encoded.input_ids) == "The quick brown fox jumps over the lazy dog.<|im_end|>"
    assert trained_text(tokenizer, conv) == " jumps over the lazy dog.<|im_end|>"


# ---- refusals that teach -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "record", "hint"),
    [
        (
            "alpaca",
            SEGMENTS,
            "it looks like segments (Axolotl input_output 'segments'): set data.format = \"segments\"",
        ),
        (
            "alpaca",
            {"prompt": [{"role": "user", "content": "q"}], "completion": [{"role": "assistant", "content": "a"}]},
            "it looks like prompt-completion (TRL conversational 'prompt' and 'completion' message lists): set "
            'data.format = "prompt-completion"',
        ),
        (
            "alpaca",
            {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
            "it looks like sharegpt ('conversations' with from/value turns): set data.format = \"sharegpt\"",
        ),
        (
            "messages",
            {"dialogue": [{"speaker": "user", "text": "q"}, {"speaker": "assistant", "text": "a"}]},
            "it looks like chat (a list of turns under 'dialogue' with keys 'speaker'/'text'): set data.format = "
            '"messages" and data.fields = {conversations = "dialogue", role = "speaker", content = "text"}',
        ),
        (
            "sharegpt",
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "a"},
                "rejected": {"from": "gpt", "value": "b"},
            },
            "it looks like preference ('chosen' and 'rejected'): preference pairs train a preference job",
        ),
        (
            "alpaca",
            {"input_ids": [1, 2], "labels": [1, 2]},
            "it looks like tokenised ('input_ids'): records are read as text, not token ids: export the text instead",
        ),
    ],
)
def test_a_record_in_another_layout_is_refused_with_that_layout_and_the_setting_that_reads_it(
    fmt: str, record: dict[str, Any], hint: str
) -> None:
    with pytest.raises(RecordError) as info:
        normalize_record(record, fmt, resolve_fields(fmt, [record]))
    assert hint in str(info.value)


def test_detection_that_finds_nothing_names_what_the_first_record_looks_like() -> None:
    from runner.data.report import DataError

    record = {"dialogue": [{"speaker": "user", "text": "q"}, {"speaker": "assistant", "text": "a"}]}
    with pytest.raises(DataError) as info:
        detect_format([record])
    assert str(info.value).endswith(
        "The first record: it looks like chat (a list of turns under 'dialogue' with "
        "keys 'speaker'/'text'): set data.format = \"messages\" and data.fields = "
        '{conversations = "dialogue", role = "speaker", content = "text"}.'
    )
