"""Preference data: the layouts users have (LLaMA-Factory's sharegpt and alpaca pairs, TRL's
explicit and implicit prompts, unpaired completions for KTO), detected and mapped like SFT data;
every bad record located by file and line or index; the prompt tokenised once for both replies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from runner.data.preference import (
    PreferencePair,
    UnpairedCompletion,
    detect_format,
    normalize_preference,
    resolve_preference_fields,
)
from runner.data.preference_tokens import encode_prompt_and_replies, prepare_preference_data
from runner.data.report import BadRecordsError, DataError

from .helpers import write_json, write_jsonl

SHAREGPT = {  # LLaMA-Factory's dpo_en_demo layout
    "conversations": [{"from": "human", "value": "What is the capital of France?"}],
    "chosen": {"from": "gpt", "value": "The capital of France is Paris."},
    "rejected": {"from": "gpt", "value": "I do not know."},
}
ALPACA = {"instruction": "Translate to French:", "input": "good morning", "chosen": "Bonjour.", "rejected": "Hello."}
TRL_TEXT = {"prompt": "The capital of France is", "chosen": " Paris.", "rejected": " Rome."}
TRL_MESSAGES = {
    "prompt": [{"role": "user", "content": "Hello!"}],
    "chosen": [{"role": "assistant", "content": "Hello! How can I help you today?"}],
    "rejected": [{"role": "assistant", "content": "What?"}],
}
TRL_IMPLICIT = {
    "chosen": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello!"},
    ],
    "rejected": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hello! I am a small assistant. How can I help you today?"},
    ],
}
UNPAIRED = {
    "prompt": [{"role": "user", "content": "Hello!"}],
    "completion": [{"role": "assistant", "content": "Hi!"}],
    "label": True,
}


def _normal(record: dict[str, Any], fields: dict[str, str] | None = None) -> PreferencePair | UnpairedCompletion:
    fmt, _ = detect_format([record], fields)
    return normalize_preference(record, fmt, resolve_preference_fields(fmt, [record], fields))


@pytest.mark.parametrize(
    ("record", "fmt"),
    [
        (SHAREGPT, "sharegpt-preference"),
        (ALPACA, "alpaca-preference"),
        (TRL_TEXT, "preference"),
        (TRL_MESSAGES, "preference"),
        (TRL_IMPLICIT, "preference"),
        (UNPAIRED, "unpaired-preference"),
    ],
)
def test_each_layout_is_detected(record: dict[str, Any], fmt: str) -> None:
    assert detect_format([record])[0] == fmt


def test_a_sharegpt_pair_becomes_the_prompt_turns_and_two_assistant_replies() -> None:
    pair = _normal({**SHAREGPT, "system": "Be brief."})
    assert isinstance(pair, PreferencePair) and not pair.is_text
    assert pair.prompt == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert pair.chosen == [{"role": "assistant", "content": "The capital of France is Paris."}]
    assert pair.rejected == [{"role": "assistant", "content": "I do not know."}]


def test_an_alpaca_pair_joins_instruction_and_input_as_sft_does() -> None:
    pair = _normal(ALPACA)
    assert pair.prompt == [{"role": "user", "content": "Translate to French:\ngood morning"}]
    assert pair.chosen[0]["content"] == "Bonjour." and pair.rejected[0]["content"] == "Hello."


def test_trl_strings_are_plain_text_and_trl_messages_use_the_chat_template() -> None:
    text = _normal(TRL_TEXT)
    assert text.is_text and text.chosen == [{"role": "text", "content": " Paris."}]
    chat = _normal(TRL_MESSAGES)
    assert not chat.is_text and chat.prompt == [{"role": "user", "content": "Hello!"}]


def test_the_implicit_prompt_is_what_both_conversations_share() -> None:
    pair = _normal(TRL_IMPLICIT)
    assert [m["role"] for m in pair.prompt] == ["system", "user"]
    assert pair.chosen == [{"role": "assistant", "content": "Hello!"}]
    assert len(pair.rejected) == 1 and pair.rejected[0]["content"].startswith("Hello! I am")


def test_unpaired_completions_carry_their_label_and_fields_map_other_names() -> None:
    one = _normal(UNPAIRED)
    assert isinstance(one, UnpairedCompletion) and one.desirable and one.completion[0]["content"] == "Hi!"
    renamed = {"question": "Which is better?", "good": "This one.", "bad": "No idea."}
    pair = _normal(renamed, {"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert pair.is_text and pair.chosen[0]["content"] == "This one."


def test_the_prompt_is_tokenised_once_and_each_reply_follows_it(tokenizer: Any) -> None:
    pair = _normal(SHAREGPT)
    prompt, (chosen, rejected) = encode_prompt_and_replies(tokenizer, pair.prompt, [pair.chosen, pair.rejected])
    whole = tokenizer.apply_chat_template([*pair.prompt, *pair.chosen], tokenize=False)
    assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(prompt + chosen) == whole.rstrip()  # the reply ends with its end-of-turn token
    assert tokenizer.decode(rejected) == "I do not know.<|im_end|>"
    text = _normal(TRL_TEXT)
    _, (reply,) = encode_prompt_and_replies(tokenizer, text.prompt, [text.chosen])
    assert reply[-1] == tokenizer.eos_token_id


def test_bad_records_are_located_by_line_and_index_with_their_reason(tmp_path: Path, tokenizer: Any) -> None:
    jsonl = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            ALPACA,
            {**ALPACA, "rejected": ALPACA["chosen"]},  # line 2: identical replies
            {**ALPACA, "chosen": "  "},  # line 3: empty reply
            {k: v for k, v in ALPACA.items() if k != "rejected"},  # line 4: missing field
            {**ALPACA, "instruction": "word " * 200},  # line 5: prompt longer than max_length
        ],
    )
    array = write_json(tmp_path / "more.json", [SHAREGPT, {**SHAREGPT, "chosen": {"from": "human", "value": "x"}}])
    with pytest.raises(BadRecordsError) as caught:
        prepare_preference_data([jsonl], tokenizer, max_length=64, format="alpaca-preference")
    message = str(caught.value)
    assert "pairs.jsonl:2: the chosen and rejected replies are identical" in message
    assert "pairs.jsonl:3: empty 'chosen' reply" in message
    assert "pairs.jsonl:4: missing 'rejected'" in message
    assert "pairs.jsonl:5: the prompt has" in message and "max_length=64" in message
    with pytest.raises(BadRecordsError, match=r"more.json\[1\]: 'chosen' is a 'human' turn"):
        prepare_preference_data([array], tokenizer, max_length=256)


def test_skipped_bad_records_are_counted_and_the_report_gives_each_parts_lengths(
    tmp_path: Path, tokenizer: Any
) -> None:
    rows = [SHAREGPT] * 6 + [{**SHAREGPT, "rejected": SHAREGPT["chosen"]}]
    data = prepare_preference_data(
        [write_jsonl(tmp_path / "p.jsonl", rows)],
        tokenizer,
        max_length=256,
        on_bad_record="skip",
        eval_fraction=0.3,
        seed=1,
    )
    report = data.train_report
    assert report.format == "sharegpt-preference"
    assert len(data.train) + len(data.eval) == 6
    assert len(report.bad_records) + len(data.eval_report.bad_records) == 1
    assert set(report.part_lengths()) == {"prompt", "chosen", "rejected"}
    assert "prompt tokens: min" in report.summary()
    assert set(data.train[0]) == {"prompt", "chosen", "rejected"}


def test_replies_that_become_identical_when_cut_to_max_length_are_bad(tmp_path: Path, tokenizer: Any) -> None:
    same_start = {
        "prompt": "Hi",
        "chosen": "one two three four five six seven eight nine ten A",
        "rejected": "one two three four five six seven eight nine ten B",
    }
    with pytest.raises(BadRecordsError, match=r"identical in their first .* tokens"):
        prepare_preference_data([write_jsonl(tmp_path / "p.jsonl", [same_start])], tokenizer, max_length=8)


def test_kto_splits_pairs_into_a_desirable_and_an_undesirable_completion_with_mismatched_kl_completions(
    tmp_path: Path, tokenizer: Any
) -> None:
    rows = [{**ALPACA, "input": f"word {i}"} for i in range(4)]
    data = prepare_preference_data([write_jsonl(tmp_path / "p.jsonl", rows)], tokenizer, max_length=256, unpaired=True)
    assert len(data.train) == 8 and sorted(e["label"] for e in data.train) == [0] * 4 + [1] * 4
    assert all(e["kl_completion"] for e in data.train)
    assert sum(e["kl_completion"] != e["completion"] for e in data.train) >= 4


def test_unpaired_data_trains_only_with_kto(tmp_path: Path, tokenizer: Any) -> None:
    path = write_jsonl(tmp_path / "u.jsonl", [UNPAIRED, {**UNPAIRED, "label": "yes"}])
    with pytest.raises(DataError, match=r"only loss.type = \"kto\""):
        prepare_preference_data([path], tokenizer, max_length=256)
    with pytest.raises(BadRecordsError, match=r"u.jsonl:2: 'label' is 'yes'; expected true"):
        prepare_preference_data([path], tokenizer, max_length=256, unpaired=True)


def test_a_sharegpt_prompt_that_ends_with_an_assistant_turn_is_refused(tmp_path: Path, tokenizer: Any) -> None:
    record = {**SHAREGPT, "conversations": [*SHAREGPT["conversations"], {"from": "gpt", "value": "Paris."}]}
    with pytest.raises(BadRecordsError, match="must end with a human"):
        prepare_preference_data([write_json(tmp_path / "p.json", [record])], tokenizer, max_length=256)


def test_implicit_prompts_that_share_no_user_turn_are_refused(tmp_path: Path, tokenizer: Any) -> None:
    record = {
        "chosen": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}],
        "rejected": [{"role": "user", "content": "C"}, {"role": "assistant", "content": "D"}],
    }
    with pytest.raises(BadRecordsError, match="share no prompt"):
        prepare_preference_data([write_json(tmp_path / "p.json", [record])], tokenizer, max_length=256)


def test_unknown_field_names_are_a_data_error(tmp_path: Path, tokenizer: Any) -> None:
    with pytest.raises(DataError, match=r"data.fields: unknown field"):
        prepare_preference_data(
            [write_json(tmp_path / "p.json", [ALPACA])],
            tokenizer,
            max_length=256,
            fields={"output": "chosen"},
            format="alpaca-preference",
        )
