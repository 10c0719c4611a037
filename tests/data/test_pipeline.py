"""From files to examples: bad-record policy with locations, the data report, eval split."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.data import BadRecordsError, build_examples, prepare_data, read_records, split_eval

from .helpers import write_json, write_jsonl


def qa(i: int) -> dict[str, str]:
    return {"instruction": f"What is {i} plus 1?", "output": f"The answer is {i + 1}."}


@pytest.fixture
def messy_files(tmp_path: Path) -> list[Path]:
    """Two good records per file, and one bad record of each kind."""
    json_file = write_json(tmp_path / "a.json", [qa(1), {"instruction": "no answer"}, qa(2)])
    jsonl_file = tmp_path / "b.jsonl"
    lines = [
        '{"instruction": "x", "output": "y"}',
        '{"instruction": "broken',
        '["not", "an object"]',
        '{"instruction": "z", "output": "w"}',
    ]
    jsonl_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [json_file, jsonl_file]


def test_error_policy_raises_once_with_every_bad_record_and_its_location(
    tokenizer: Any, messy_files: list[Path]
) -> None:
    a, b = messy_files
    with pytest.raises(BadRecordsError) as info:
        prepare_data(messy_files, tokenizer, max_length=256)
    assert [str(bad) for bad in info.value.bad_records] == [  # in file order, whatever the stage
        f"{a}[1]: missing 'output'",
        f"{b}:2: invalid JSON at column 17: Unterminated string starting at",
        f"{b}:3: record is a JSON list; expected an object {{...}}",
    ]
    message = str(info.value)
    assert message.startswith("3 bad records:\n")
    assert all(str(bad) in message.splitlines() for bad in info.value.bad_records)
    assert 'on_bad_record = "skip"' in message


def test_skip_policy_keeps_going_and_counts_them(tokenizer: Any, messy_files: list[Path]) -> None:
    prepared = prepare_data(messy_files, tokenizer, max_length=256, on_bad_record="skip")
    report = prepared.train_report
    assert len(prepared.train) == 4
    assert (report.records_read, report.records_kept, report.records_bad) == (7, 4, 3)
    assert "7 read, 4 kept, 3 bad" in report.summary()


def test_files_of_three_layouts_make_one_dataset_in_order(tokenizer: Any, tmp_path: Path) -> None:
    files = [
        write_json(tmp_path / "array.json", [qa(1)]),
        write_json(tmp_path / "object.json", {"data": [qa(2)]}),
        write_jsonl(tmp_path / "lines.jsonl", [qa(3)]),
    ]
    prepared = prepare_data(files, tokenizer, max_length=256)
    texts = [tokenizer.decode(e["input_ids"]) for e in prepared.train]
    assert ["1 plus 1" in texts[0], "2 plus 1" in texts[1], "3 plus 1" in texts[2]] == [True] * 3
    assert prepared.train_report.format == "alpaca"
    assert prepared.train_report.format_reason == "'instruction' and 'output' keys (3 of 3 sampled records)"
    assert prepared.eval == [] and prepared.eval_report is None


def test_report_has_length_stats_and_counts_truncation(tokenizer: Any, tmp_path: Path) -> None:
    long = {"instruction": "Describe crepes.", "output": " ".join(["Mix flour, eggs and milk."] * 30)}
    path = write_json(tmp_path / "d.json", [qa(1), qa(2), long])
    examples, report = build_examples(read_records([path]).records, tokenizer, max_length=128)
    lengths = sorted(len(e["input_ids"]) for e in examples)
    assert report.truncated == 1 and lengths[-1] == 128
    assert report.lengths is not None
    assert (report.lengths.min, report.lengths.max, report.lengths.p50, report.lengths.p95) == (
        lengths[0],
        128,
        lengths[1],
        128,
    )
    assert report.lengths.mean == pytest.approx(sum(lengths) / 3)
    assert report.trainable_tokens == sum(sum(1 for x in e["labels"][1:] if x != -100) for e in examples)
    assert json.loads(json.dumps(report.to_dict()))["lengths"]["max"] == 128  # JSON-ready for the run outputs


def test_an_example_whose_response_is_truncated_away_is_reported(tokenizer: Any, tmp_path: Path) -> None:
    long_prompt = {"instruction": " ".join(["Describe crepes."] * 40), "output": "Thin pancakes."}
    path = write_json(tmp_path / "d.json", [qa(1), long_prompt])
    with pytest.raises(BadRecordsError) as info:
        build_examples(read_records([path]).records, tokenizer, max_length=128)
    [bad] = info.value.bad_records
    assert str(bad).startswith(f"{path}[1]: no response tokens left after truncation to max_length=128")
    assert str(bad).endswith("raise data.max_length")


def test_eval_fraction_split_is_deterministic_and_disjoint(tokenizer: Any, tmp_path: Path) -> None:
    path = write_json(tmp_path / "d.json", [qa(i) for i in range(20)])
    records = read_records([path]).records
    train, held_out = split_eval(records, 0.25, seed=7)
    assert (len(train), len(held_out)) == (15, 5)
    assert {r.location.index for r in train}.isdisjoint(r.location.index for r in held_out)
    assert split_eval(records, 0.25, seed=7) == (train, held_out)
    assert split_eval(records, 0.25, seed=8)[1] != held_out
    assert [r.location.index for r in held_out] == sorted(r.location.index for r in held_out)  # file order kept

    prepared = prepare_data([path], tokenizer, max_length=256, eval_fraction=0.25, seed=7)
    assert (len(prepared.train), len(prepared.eval)) == (15, 5)
    assert prepared.eval_report is not None and prepared.eval_report.format == "alpaca"


def test_separate_eval_files_are_detected_and_tokenised_on_their_own(tokenizer: Any, tmp_path: Path) -> None:
    train = write_json(tmp_path / "train.json", [qa(1), qa(2)])
    chat = {"messages": [{"role": "user", "content": "Hello!"}, {"role": "assistant", "content": "Bonjour."}]}
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [chat])
    prepared = prepare_data([train], tokenizer, max_length=256, eval_files=[evaluation])
    assert len(prepared.eval) == 1 and prepared.eval_report is not None
    assert prepared.eval_report.format == "messages"


def test_tools_the_chat_template_cannot_show_go_to_the_system_prompt_and_the_report_says_so(
    tokenizer: Any, tmp_path: Path
) -> None:
    record = {
        "tools": '[{"name": "search_recipes"}]',
        "conversations": [{"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Bonjour."}],
    }
    path = write_json(tmp_path / "tools.json", [record])
    examples, report = build_examples(read_records([path]).records, tokenizer, max_length=1024)  # SmolLM2 template
    assert report.tools == {"system-prompt": 1}
    assert report.warnings == [
        "1 of 1 records define tools that the chat template does not render: their definitions were put in the "
        "system prompt (a Hermes/Qwen-style <tools> block) and their tool calls written as <tool_call> blocks "
        '(data.tools = "render")'
    ]
    assert "warning: 1 of 1 records define tools" in report.summary()
    assert '"search_recipes"' in tokenizer.decode(examples[0]["input_ids"])


def test_bad_records_of_train_and_eval_files_are_reported_together(tokenizer: Any, tmp_path: Path) -> None:
    train = write_json(tmp_path / "train.json", [qa(1), {"instruction": "no answer"}])
    evaluation = write_jsonl(tmp_path / "eval.jsonl", [qa(2), {"output": "no question"}])
    with pytest.raises(BadRecordsError) as info:
        prepare_data([train], tokenizer, max_length=256, eval_files=[evaluation])
    assert [str(b) for b in info.value.bad_records] == [
        f"{train}[1]: missing 'output'",
        f"{evaluation}:2: missing 'instruction'",
    ]


def test_max_records_keeps_the_first_n_of_train_and_of_eval(tokenizer: Any, tmp_path: Path) -> None:
    train = write_json(tmp_path / "train.json", [qa(i) for i in range(10)])
    evaluation = write_json(tmp_path / "eval.json", [qa(i) for i in range(100, 106)])
    prepared = prepare_data(
        [train], tokenizer, max_length=256, eval_files=[evaluation], max_records=3, eval_max_records=2
    )
    assert len(prepared.train) == 3 and len(prepared.eval) == 2
    assert tokenizer.decode(prepared.train[0]["input_ids"]).count("What is 0 plus 1?") == 1
    assert "What is 100 plus 1?" in tokenizer.decode(prepared.eval[0]["input_ids"])

    split = prepare_data([train], tokenizer, max_length=256, eval_fraction=0.5, max_records=2, eval_max_records=1)
    assert (len(split.train), len(split.eval)) == (2, 1)
