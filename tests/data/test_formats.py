"""Formats: every supported shape normalises to chat messages; detection explains itself."""

from __future__ import annotations

import json
from typing import Any

import pytest

from runner.data import TEXT_ROLE, DataError, DomainPrefix, RecordError, detect_format, normalize_record, resolve_fields


def normalize(record: dict[str, Any], fields: dict[str, str] | None = None, **kw: Any):
    fmt, _ = detect_format([record], fields)
    return normalize_record(record, fmt, resolve_fields(fmt, [record], fields), **kw)


def roles(conv) -> list[str]:
    return [m["role"] for m in conv.messages]


# --- the four formats -------------------------------------------------------------------


def test_alpaca_joins_instruction_and_input_and_keeps_system_and_history() -> None:
    record = {
        "system": "Be brief.",
        "history": [["Hi", "Hello!"]],
        "instruction": "Translate to French:",
        "input": "good morning",
        "output": "Bonjour.",
    }
    assert normalize(record).messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Translate to French:\ngood morning"},
        {"role": "assistant", "content": "Bonjour."},
    ]


def test_alpaca_with_empty_input_is_just_the_instruction() -> None:
    conv = normalize({"instruction": "hi", "input": "", "output": "Hello!"})
    assert conv.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]


def test_sharegpt_maps_roles_parses_tools_given_as_a_json_string_and_function_calls_become_tool_calls() -> None:
    tools = [{"name": "search_recipes", "parameters": {"type": "object"}}]
    record = {
        "system": "You can cook.",
        "tools": json.dumps(tools),
        "conversations": [
            {"from": "human", "value": "I have rice."},
            {"from": "function_call", "value": '{"name": "search_recipes"}'},
            {"from": "observation", "value": '{"recipes": []}'},
            {"from": "gpt", "value": "No recipes found."},
        ],
    }
    conv = normalize(record)
    assert roles(conv) == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2] == {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "search_recipes", "arguments": {}}}],
    }
    assert conv.tools == tools


def test_sharegpt_also_accepts_user_and_assistant_roles() -> None:
    record = {"conversations": [{"from": "user", "value": "q"}, {"from": "assistant", "value": "a"}]}
    assert roles(normalize(record)) == ["user", "assistant"]


def test_messages_openai_style_passes_tool_calls_through() -> None:
    call = [{"type": "function", "function": {"name": "f", "arguments": "{}"}}]
    record = {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "q"},
            {"role": "assistant", "content": None, "tool_calls": call},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
            {"role": "assistant", "content": "It is 42."},
        ]
    }
    conv = normalize(record)
    assert roles(conv) == ["system", "user", "assistant", "tool", "assistant"]
    assert conv.messages[2] == {"role": "assistant", "content": "", "tool_calls": call}
    assert conv.messages[3]["tool_call_id"] == "c1"


def test_text_is_a_single_plain_text_message() -> None:
    conv = normalize({"text": "Once upon a time."})
    assert conv.is_text
    assert conv.messages == [{"role": TEXT_ROLE, "content": "Once upon a time."}]


# --- detection ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"instruction": "i", "input": "", "output": "o"}, ("alpaca", "'instruction' and 'output' keys")),
        ({"question": "q", "answer": "a"}, ("alpaca", "'question' and 'answer' keys")),
        (
            {"conversations": [{"from": "human", "value": "q"}]},
            ("sharegpt", "'conversations' key with 'from'/'value' turns"),
        ),
        ({"messages": [{"role": "user", "content": "q"}]}, ("messages", "'messages' key with 'role'/'content' turns")),
        ({"text": "t"}, ("text", "'text' key holding a string")),
    ],
)
def test_detect_format_says_what_it_chose_and_why(record: dict[str, Any], expected: tuple[str, str]) -> None:
    fmt, reason = detect_format([record] * 3)
    assert (fmt, reason) == (expected[0], f"{expected[1]} (3 of 3 sampled records)")


def test_detection_is_a_majority_vote_so_a_stray_record_does_not_flip_it() -> None:
    records = [{"text": "x"}] + [{"instruction": "i", "output": "o"}] * 4
    assert detect_format(records)[0] == "alpaca"


def test_undetectable_records_raise_with_the_keys_seen_and_the_fix() -> None:
    with pytest.raises(DataError, match=r"keys \['foo', 'q'\].*Set data\.format"):
        detect_format([{"q": 1, "foo": 2}])


# --- field names -------------------------------------------------------------------------


def test_the_field_mapping_renames_record_keys() -> None:
    record = {"q": "What is 2+2?", "a": "4", "sys": "Math tutor."}
    fields = {"instruction": "q", "output": "a", "system": "sys"}
    assert detect_format([record], fields)[0] == "alpaca"
    assert normalize(record, fields).messages == [
        {"role": "system", "content": "Math tutor."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"},
    ]


def test_field_mapping_for_chat_turn_keys() -> None:
    record = {"dialog": [{"speaker": "human", "text": "q"}, {"speaker": "gpt", "text": "a"}]}
    fields = {"conversations": "dialog", "role": "speaker", "content": "text"}
    assert detect_format([record], fields) == (
        "sharegpt",
        "'dialog' key with mapped 'speaker'/'text' turns (1 of 1 sampled records)",
    )
    assert roles(normalize(record, fields)) == ["user", "assistant"]


@pytest.mark.parametrize(
    ("prompt_key", "response_key", "input_key"),
    [("question", "answer", "context"), ("prompt", "completion", "input"), ("query", "response", "context")],
)
def test_common_field_names_are_found_without_a_mapping(prompt_key: str, response_key: str, input_key: str) -> None:
    record = {prompt_key: "Summarise:", input_key: "long text", response_key: "short"}
    fields = resolve_fields("alpaca", [record])
    assert (fields["instruction"], fields["input"], fields["output"]) == (prompt_key, input_key, response_key)
    assert normalize(record).messages[-2:] == [
        {"role": "user", "content": "Summarise:\nlong text"},
        {"role": "assistant", "content": "short"},
    ]


def test_an_unknown_canonical_field_in_the_mapping_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['answer'\] for format 'alpaca'"):
        resolve_fields("alpaca", [], {"answer": "a"})


# --- domain prefix -----------------------------------------------------------------------


def test_domain_prefix_is_rendered_before_the_first_user_message() -> None:
    record = {"domain": "medical", "history": [["first", "ok"]], "instruction": "second", "output": "ok"}
    conv = normalize(record, domain=DomainPrefix("domain", "[{value}] "))
    assert [m["content"] for m in conv.messages if m["role"] == "user"] == ["[medical] first", "second"]


def test_domain_prefix_applies_to_plain_text_and_accepts_a_hash() -> None:
    conv = normalize({"text": "body", "hash": "ab12"}, domain=DomainPrefix("hash", "<{value}>\n"))
    assert conv.messages[0]["content"] == "<ab12>\nbody"


def test_domain_prefix_missing_field_is_a_record_error() -> None:
    with pytest.raises(RecordError, match="missing domain field 'domain'"):
        normalize({"text": "body"}, domain=DomainPrefix("domain"))


# --- records that cannot be normalised ---------------------------------------------------


def chat(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"conversations": [{"from": r, "value": v} for r, v in turns]}


@pytest.mark.parametrize(
    ("fmt", "record", "reason"),
    [
        ("alpaca", {"instruction": "i"}, "missing 'output'"),
        ("alpaca", {"instruction": "i", "output": "  "}, "empty assistant turn: 'output' is empty"),
        ("alpaca", {"instruction": "i", "output": ["o"]}, "'output' is a list; expected a string"),
        (
            "alpaca",
            {"instruction": "i", "output": "o", "history": [["only one"]]},
            "'history' item 1 is not a [user, assistant] pair of strings",
        ),
        ("sharegpt", {"conversations": []}, "'conversations' is empty"),
        ("sharegpt", {"other": 1}, "missing 'conversations'"),
        (
            "sharegpt",
            chat(("human", "q"), ("gpt", "a"), ("bot", "?")),
            "'conversations' turn 3 has role 'bot'; expected one of human, user, gpt, assistant, "
            'function_call, system, observation, tool (more names for a role: data.roles, e.g. {assistant = ["bot"]})',
        ),
        ("sharegpt", chat(("human", "q"), ("gpt", "")), "empty assistant turn ('conversations' turn 2)"),
        (
            "sharegpt",
            chat(("human", "q"), ("gpt", "a"), ("human", "more?")),
            "conversation does not end with an assistant turn",
        ),
        ("sharegpt", chat(("gpt", "hi"), ("human", "q"), ("gpt", "a")), "conversation does not start with a user turn"),
        (
            "sharegpt",
            chat(("human", "q"), ("gpt", "a"), ("system", "late"), ("gpt", "b")),
            "'conversations' turn 3 is a system turn; only the first turn may be one",
        ),
        (
            "sharegpt",
            chat(("human", "q"), ("observation", "{}"), ("gpt", "a")),
            "'conversations' turn 2 is a tool result ('observation') that does not follow an assistant turn",
        ),
        (
            "sharegpt",
            {**chat(("human", "q"), ("gpt", "a")), "tools": "{not json"},
            "'tools' is a string but not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        ),
        ("text", {"text": ""}, "empty 'text'"),
    ],
)
def test_unusable_records_raise_a_precise_reason(fmt: str, record: dict[str, Any], reason: str) -> None:
    fields = resolve_fields(fmt, [record])
    with pytest.raises(RecordError) as info:
        normalize_record(record, fmt, fields)
    assert str(info.value) == reason


def test_the_list_key_may_be_mapped_as_messages_or_conversations() -> None:
    record = {"chat": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    for name in ("messages", "conversations"):
        assert resolve_fields("messages", [record], {name: "chat"})["conversations"] == "chat"
        assert detect_format([record], {name: "chat"})[1].startswith("'chat' key with 'role'/'content' turns")
    assert roles(normalize(record, {"messages": "chat"})) == ["user", "assistant"]


def test_records_no_format_fits_are_refused_naming_their_keys_and_the_fix() -> None:
    from runner.data.kinds import detect_format
    from runner.data.report import DataError

    keys = r"cannot detect the data format: the first records have keys \[.body., .id.\]"
    with pytest.raises(DataError, match=keys + r".*data.format.*data.fields"):
        detect_format([{"id": 1, "body": "x"}, {"id": 2, "body": "y"}])


def test_the_majority_of_sampled_records_decides_the_format() -> None:
    from runner.data.kinds import detect_format

    records = [{"instruction": "q", "output": "a"}] * 3 + [{"text": "t"}]
    fmt, reason = detect_format(records)
    assert fmt == "alpaca" and reason.endswith("(3 of 4 sampled records)")
