"""The tokenised-data cache: a hit returns exactly what tokenising returns; any change is a miss."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.data import prepare_data
from runner.data.cache import cache_key, cached

from .helpers import make_tokenizer


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


ROWS = [{"instruction": f"What is {i} plus 1?", "output": f"The answer is {i + 1}."} for i in range(10)]
SETTINGS = {"max_length": 64, "eval_fraction": 0.2, "seed": 3, "on_bad_record": "skip"}


def build_for(files: list[Path], tokenizer: Any, settings: dict[str, Any]) -> Any:
    def build() -> Any:
        done = prepare_data(files, tokenizer, **settings)
        return done.train, done.eval, done.train_report, done.eval_report

    return build


def test_a_hit_equals_a_fresh_tokenisation(tmp_path: Path, tokenizer: Any) -> None:
    data = write(tmp_path / "d.jsonl", [*ROWS, {"instruction": "no answer"}])
    calls = []

    def build() -> Any:
        calls.append(1)
        return build_for([data], tokenizer, SETTINGS)()

    first, hit1 = cached([data], tokenizer, SETTINGS, build, folder=tmp_path / "cache")
    second, hit2 = cached([data], tokenizer, SETTINGS, build, folder=tmp_path / "cache")
    assert (hit1, hit2, len(calls)) == (False, True, 1)
    assert second[0] == first[0] and second[1] == first[1]  # train and eval examples, exactly
    assert second[2] == first[2] and second[3] == first[3]  # reports, bad records with their locations
    assert len(second[2].bad_records) == 1


def test_same_content_elsewhere_hits_and_reports_the_new_location(tmp_path: Path, tokenizer: Any) -> None:
    rows = [*ROWS, {"instruction": "no answer"}]
    a = write((tmp_path / "a").mkdir() or tmp_path / "a" / "d.jsonl", rows)
    b = write((tmp_path / "b").mkdir() or tmp_path / "b" / "d.jsonl", rows)
    cached([a], tokenizer, SETTINGS, build_for([a], tokenizer, SETTINGS), folder=tmp_path / "cache")
    result, hit = cached([b], tokenizer, SETTINGS, build_for([b], tokenizer, SETTINGS), folder=tmp_path / "cache")
    assert hit
    assert result[2].bad_records[0].location.file == str(b)


@pytest.mark.parametrize("change", ["data", "setting", "template"])
def test_any_change_is_a_miss(tmp_path: Path, tokenizer: Any, change: str) -> None:
    data = write(tmp_path / "d.jsonl", ROWS)
    before = cache_key([data], tokenizer, SETTINGS)
    other_tokenizer, settings = tokenizer, SETTINGS
    if change == "data":
        write(data, [*ROWS[:-1], {"instruction": "What is 9 plus 1?", "output": "Ten."}])
    elif change == "setting":
        settings = {**SETTINGS, "max_length": 65}
    else:
        other_tokenizer = make_tokenizer(chat_template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}")
    assert cache_key([data], other_tokenizer, settings) != before


def test_switched_off_by_the_caller_it_neither_reads_nor_writes(
    tmp_path: Path, tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUNNER_DATA_CACHE", "1")  # no longer read: the job's train.speed.data_cache decides
    data = write(tmp_path / "d.jsonl", ROWS)
    build = build_for([data], tokenizer, SETTINGS)
    cached([data], tokenizer, SETTINGS, build, folder=tmp_path / "cache")  # an entry exists
    _, hit = cached([data], tokenizer, SETTINGS, build, enabled=False, folder=tmp_path / "cache")
    assert not hit
    other = tmp_path / "other-cache"
    cached([data], tokenizer, SETTINGS, build, enabled=False, folder=other)
    assert not other.exists()
