"""Data files written to hurt, through `runner data validate` and `runner run`: deep nesting, huge
integers, NaN, lone surrogates, misspelt options, turns out of order, images outside their folder,
absurd scores. Each ends in a located message (file and line, the reason, the fix), never a
traceback, and a run never ends as a `crash`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.commands import main

ALPACA = {"instruction": "What is 1 + 1?", "output": "2"}


def _jsonl(path: Path, *lines: str | dict[str, Any]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8"
    )
    return path


def _data_validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["data", "validate", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out, out.err


# ---- bounded decoding ------------------------------------------------------------------------------


def test_a_jsonl_record_nested_100000_deep_is_a_bad_record_on_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _jsonl(
        tmp_path / "d.jsonl", ALPACA, '{"instruction": "q", "output": ' + "[" * 100_000 + "]" * 100_000 + "}", ALPACA
    )
    code, out, _ = _data_validate(capsys, str(data))
    assert code == 1
    assert "3 read, 2 usable, 1 bad" in out
    assert f"{data}:2: nested more than 64 levels deep at column 95" in out


def test_a_json_array_with_a_deep_record_is_a_located_file_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "d.json"
    data.write_text('[\n{"instruction": "q", "output": "a"},\n{"x": ' + '{"y": ' * 5_000 + "1" + "}" * 5_001 + "\n]")
    code, _, err = _data_validate(capsys, str(data))
    assert code == 1
    assert f"{data}:3:" in err and "JSON nested more than 64 levels deep inside a record" in err


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_5000_digit_integer_is_a_bad_record_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    records = [ALPACA, '{"instruction": "q", "output": "a", "id": ' + "7" * 5_000 + "}"]
    data = tmp_path / f"d{suffix}"
    if suffix == ".json":
        data.write_text("[\n" + json.dumps(ALPACA) + ",\n" + str(records[1]) + "\n]")
    else:
        _jsonl(data, *records)
    code, out, _ = _data_validate(capsys, str(data))
    assert code == 1
    where = f"{data}:2" if suffix == ".jsonl" else f"{data}[1]"
    assert f"{where}: an integer of 5000 digits (at most 30); write large numbers as strings" in out


@pytest.mark.parametrize(
    "value, reason",
    [
        ("NaN", "NaN is not a JSON number; numbers must be finite"),
        ("-Infinity", "-Infinity is not a JSON number"),
        ("1e999", "the number 1e999 overflows to infinity"),
    ],
)
def test_non_finite_numbers_in_records_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], value: str, reason: str
) -> None:
    data = _jsonl(tmp_path / "d.jsonl", ALPACA, '{"instruction": "q", "output": "a", "weight": ' + value + "}")
    code, out, _ = _data_validate(capsys, str(data))
    assert code == 1 and f"{data}:2: {reason}" in out


# ---- lone surrogates: refused when read, so a tokenizer never sees them ---------------------------------


SURROGATE = '{"instruction": "bad \\ud800 half", "output": "a"}'


def test_a_lone_surrogate_is_a_bad_record_when_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _jsonl(
        tmp_path / "d.jsonl", ALPACA, SURROGATE, '{"instruction": "a pair \\ud83d\\ude00 is fine", "output": "b"}'
    )
    code, out, _ = _data_validate(capsys, str(data))
    assert code == 1
    assert "3 read, 2 usable, 1 bad" in out
    assert (
        f"{data}:2: 'instruction' holds a lone surrogate ('\\ud800'): half of a UTF-16 pair is not a character" in out
    )


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.train.tiny import save_tiny_causal_lm

    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")


def _causal_job(folder: Path, model: Path, policy: str) -> Path:
    _jsonl(folder / "train.jsonl", *([ALPACA] * 7), SURROGATE, *([ALPACA] * 8))
    job = folder / "surrogate.toml"
    job.write_text(
        f'[model]\nsource = "local:{model}"\n[data]\ntrain = "train.jsonl"\nmax_length = 64\n'
        f'on_bad_record = "{policy}"\n[train]\nmax_steps = 1\nbatch_size = 4\n'
    )
    return job


def test_a_lone_surrogate_with_the_jobs_tokenizer_is_located_not_a_crash(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _causal_job(tmp_path, tiny_model, "error")
    code, out, _ = _data_validate(capsys, "--job", str(job))
    assert code == 1 and f"{tmp_path / 'train.jsonl'}:8: 'instruction' holds a lone surrogate" in out


@pytest.mark.parametrize("policy", ["error", "skip"])
def test_a_run_with_a_lone_surrogate_fails_as_data_or_skips_it_never_crashes(
    tmp_path: Path, tiny_model: Path, capsys: pytest.CaptureFixture[str], policy: str
) -> None:
    job = _causal_job(tmp_path, tiny_model, policy)
    runs = tmp_path / "runs"
    code = main(["run", str(job), "--runs-dir", str(runs)])
    capsys.readouterr()
    (run,) = (runs / "surrogate").iterdir()
    status = json.loads((run / "status.json").read_text())
    if policy == "error":
        assert code == 1 and status["state"] == "failed" and status["reason"] == "data"
        assert f"{tmp_path / 'train.jsonl'}:8: 'instruction' holds a lone surrogate" in status["error"]
    else:
        assert code == 0 and status["state"] == "succeeded", status


# ---- the command line: usage errors name the valid choices ---------------------------------------------


def test_an_unknown_format_is_a_usage_error_naming_the_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _jsonl(tmp_path / "d.jsonl", ALPACA)
    code, _, err = _data_validate(capsys, "--format", "alpacca", str(data))
    assert code == 2
    assert (
        "runner data validate: error: --format 'alpacca': expected one of auto, alpaca, sharegpt, messages, text, "
        "segments, prompt-completion, pairs, triplets, scored-pairs, image-text, preference, sharegpt-preference, "
        "alpaca-preference, unpaired-preference (did you mean 'alpaca'?)"
    ) in err


def test_a_field_mapping_written_the_wrong_way_round_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _jsonl(tmp_path / "d.jsonl", {"ask": "q", "output": "a"})
    code, _, err = _data_validate(capsys, "--fields", "ask=instruction", str(data))
    assert code == 2
    assert "--fields ask=instruction: 'ask' is not a field of any format (did you mean instruction=ask? " in err
    code, _, err = _data_validate(capsys, "--format", "alpaca", "--fields", "query=q", str(data))
    assert code == 2 and "'query' is not a field of format 'alpaca'; expected one of instruction, input, output" in err


def test_a_field_of_another_format_is_a_usage_error_once_the_format_is_detected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _jsonl(tmp_path / "d.jsonl", ALPACA)  # 'prompt' is a field of prompt-completion, not of alpaca
    code, _, err = _data_validate(capsys, "--fields", "prompt=instruction", str(data))
    assert code == 2
    assert (
        "runner data validate: error: --fields: unknown field(s) ['prompt'] for format 'alpaca'; "
        "expected some of ['instruction', 'input', 'output', 'system', 'history']"
    ) in err


def test_a_data_file_named_on_the_command_line_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = _data_validate(capsys, str(tmp_path / "nope.jsonl"))
    assert code == 2 and f"{tmp_path / 'nope.jsonl'}: no such file or folder" in err


@pytest.mark.parametrize("fmt", ["sharegpt", "pairs"])
def test_when_every_record_is_bad_the_reasons_are_counted_and_the_likely_format_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str
) -> None:
    data = _jsonl(tmp_path / "d.jsonl", *([ALPACA] * 10))
    code, out, err = _data_validate(capsys, "--format", fmt, str(data))
    assert code == 1
    text = out + err
    assert f"all 10 records are bad as format '{fmt}'; most common reasons: " in text
    assert "(10 records). The records look like alpaca ('instruction' and 'output' keys" in text
    assert 'set data.format = "alpaca" (--format alpaca), or "auto"' in text


# ---- chat turns in order ----------------------------------------------------------------------------


def _turns(*pairs: tuple[str, str]) -> dict[str, Any]:
    return {"conversations": [{"from": role, "value": text} for role, text in pairs]}


@pytest.mark.parametrize(
    "turns, reason",
    [
        (
            _turns(("human", "a"), ("human", "b"), ("gpt", "c")),
            "'conversations' turn 2 is a second user turn in a row (after turn 1); merge them",
        ),
        (
            _turns(("human", "a"), ("gpt", "b"), ("gpt", "c")),
            "'conversations' turn 3 is a second assistant turn in a row (after turn 2); merge them",
        ),
        (
            _turns(("human", "a"), ("function_call", "{}"), ("observation", "1"), ("observation", "2"), ("gpt", "c")),
            "'conversations' turn 4 is a second tool result in a row (after turn 3)",
        ),
        (
            _turns(("human", "a"), ("function_call", "{}"), ("observation", "1"), ("human", "b"), ("gpt", "c")),
            "'conversations' turn 4 is a user turn right after a tool result (turn 3)",
        ),
    ],
)
def test_sharegpt_turns_out_of_order_are_bad_records_on_their_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], turns: dict[str, Any], reason: str
) -> None:
    good = _turns(("system", "s"), ("human", "a"), ("function_call", "{}"), ("observation", "1"), ("gpt", "c"))
    data = _jsonl(tmp_path / "d.jsonl", good, turns)
    code, out, _ = _data_validate(capsys, "--format", "sharegpt", str(data))
    assert code == 1 and "2 read, 1 usable, 1 bad" in out
    assert f"{data}:2: {reason}" in out


def test_openai_messages_may_hold_parallel_tool_results_but_not_two_user_turns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{}"}}],
    }
    parallel = {
        "messages": [
            {"role": "user", "content": "a"},
            call,
            {"role": "tool", "content": "1"},
            {"role": "tool", "content": "2"},
            {"role": "assistant", "content": "b"},
        ]
    }
    twice = {
        "messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"},
        ]
    }
    data = _jsonl(tmp_path / "d.jsonl", parallel, twice)
    code, out, _ = _data_validate(capsys, "--format", "messages", str(data))
    assert code == 1 and "2 read, 1 usable, 1 bad" in out
    assert f"{data}:2: 'messages' turn 2 is a second user turn in a row" in out


# ---- images stay in their folder, scores on their scale -------------------------------------------------


def test_image_paths_outside_the_image_folder_are_refused_unopened_with_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (4, 4), "red").save(folder / "ok.png")
    Image.new("RGB", (4, 4), "blue").save(tmp_path / "outside.png")
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    data = _jsonl(
        folder / "it.jsonl",
        {"image": "ok.png", "text": "red"},
        {"image": "../outside.png", "text": "a"},
        {"image": "../missing.png", "text": "b"},
        {"image": "/etc/hostname", "text": "c"},
        {"image": "link.png", "text": "d"},
    )
    opened: list[str] = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a, **k: opened.append(str(path)) or real_open(path, *a, **k))
    code, out, _ = _data_validate(capsys, "--format", "image-text", str(data))
    assert code == 1 and "5 read, 1 usable, 4 bad" in out
    for line, value in [(2, "../outside.png"), (3, "../missing.png"), (4, "/etc/hostname"), (5, "link.png")]:
        assert (
            f"{data}:{line}: 'image': image path {value!r} leads outside the image folder (data.image_root, "
            "by default the data file's folder); keep images under it"
        ) in out
    assert opened == [str(folder / "ok.png")]
    assert str(tmp_path) not in out.replace(str(data), "")  # no server-side folder in the reasons


def test_scores_beyond_the_range_are_refused_and_mixed_scales_are_reported(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [{"sentence1": f"a{i}", "sentence2": f"b{i}", "score": i / 20} for i in range(20)]
    rows += [{"sentence1": "x", "sentence2": "y", "score": 4.0}, {"sentence1": "x", "sentence2": "z", "score": 1e9}]
    data = _jsonl(tmp_path / "s.jsonl", *rows)
    code, out, _ = _data_validate(capsys, "--format", "scored-pairs", str(data))
    assert code == 1 and "22 read, 21 usable, 1 bad" in out
    assert f"{data}:22: 'score' is 1e+09, outside the range of scores (-1000 to 1000)" in out
    assert (
        f"warning: 1 of 21 scores lie outside 0 to 1, where the other 95% lie (first: {data}:21, score 4); "
        "do the files mix scales?"
    ) in out
