"""Reading data files: layouts, merge order, locations, and errors that say where and how to fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.data import DataFileError, read_file, read_records

from .helpers import write_json, write_jsonl

A = {"instruction": "a", "output": "A"}
B = {"instruction": "b", "output": "B"}
C = {"instruction": "c", "output": "C"}


def test_json_array_records_carry_index_and_starting_line(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", [A, B])  # indent=2: "[", then 4 lines per record
    result = read_file(path)
    assert [r.data for r in result.records] == [A, B]
    assert [(r.location.index, r.location.line) for r in result.records] == [(0, 2), (1, 6)]
    assert str(result.records[1].location) == f"{path}[1]"


def test_json_object_holding_one_list_is_read_as_that_list(tmp_path: Path) -> None:
    path = write_json(tmp_path / "wrapped.json", {"version": 2, "data": [A, B]})
    result = read_file(path)
    assert [r.data for r in result.records] == [A, B]
    assert result.records[0].location.index == 0


def test_json_object_with_several_lists_names_the_keys(tmp_path: Path) -> None:
    path = write_json(tmp_path / "both.json", {"train": [A], "test": [B]})
    with pytest.raises(DataFileError, match=r"several lists \(keys 'train', 'test'\)"):
        read_file(path)


def test_jsonl_records_carry_their_line_and_blank_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "one"}\n\n{"text": "two"}\n', encoding="utf-8")
    result = read_file(path)
    assert [str(r.location) for r in result.records] == [f"{path}:1", f"{path}:3"]


def test_several_files_of_different_layouts_merge_in_order(tmp_path: Path) -> None:
    files = [
        write_json(tmp_path / "a.json", [A]),
        write_json(tmp_path / "b.json", {"data": [B]}),
        write_jsonl(tmp_path / "c.jsonl", [C]),
    ]
    result = read_records(files)
    assert [r.data for r in result.records] == [A, B, C]
    assert [Path(r.location.file).name for r in result.records] == ["a.json", "b.json", "c.jsonl"]


def test_a_json_file_that_is_really_jsonl_is_read_as_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "mislabelled.json"
    path.write_text('{"text": "one"}\n{"text": "two"}\n', encoding="utf-8")
    assert [r.location.line for r in read_file(path).records] == [1, 2]


def test_a_broken_jsonl_line_is_a_bad_record_not_a_fatal_error(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "one"}\n{"text": "tw\n{"text": "three"}\n', encoding="utf-8")
    result = read_file(path)
    assert [r.data["text"] for r in result.records] == ["one", "three"]
    [bad] = result.bad
    assert str(bad).startswith(f"{path}:2: invalid JSON at column 10")


def test_a_record_that_is_not_an_object_is_a_bad_record_at_its_index(tmp_path: Path) -> None:
    path = write_json(tmp_path / "train.json", [A, "oops", None, B])
    result = read_file(path)
    assert len(result.records) == 2
    assert [str(b) for b in result.bad] == [
        f"{path}[1]: record is a JSON str; expected an object {{...}}",
        f"{path}[2]: record is a JSON null; expected an object {{...}}",
    ]


def test_truncated_json_names_file_line_column_and_a_fix(tmp_path: Path) -> None:
    path = tmp_path / "cut.json"
    path.write_text('[\n  {"instruction": "a", "output": "A"},\n  {"instruction": "b", "out', encoding="utf-8")
    with pytest.raises(DataFileError) as info:
        read_file(path)
    message = str(info.value)
    assert message.startswith(f"{path}:3:")
    assert "truncated" in message and "fix:" in message
    assert info.value.line == 3 and info.value.column is not None


def test_invalid_json_in_the_middle_points_at_the_spot(tmp_path: Path) -> None:
    path = tmp_path / "comma.json"
    path.write_text('[\n  {"a": 1}\n  {"b": 2}\n]\n', encoding="utf-8")
    with pytest.raises(DataFileError, match=r":3:3: invalid JSON: Expecting ',' delimiter"):
        read_file(path)


def test_bad_utf8_reports_line_and_column_of_the_first_bad_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes('[\n  {"instruction": "café", "output": "x"}\n]\n'.encode("latin-1"))
    with pytest.raises(DataFileError) as info:
        read_file(path)
    column_of_e_acute = len('  {"instruction": "caf') + 1
    assert (info.value.line, info.value.column) == (2, column_of_e_acute)
    assert "not valid UTF-8 (byte 0xe9)" in str(info.value) and "iconv" in str(info.value)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(DataFileError, match=r"empty\.jsonl:1:1: file is empty"):
        read_file(path)


def test_missing_file_is_an_error_with_the_resolved_path(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"nope\.json: file not found\n  fix: check the path \(resolved to /"):
        read_records([tmp_path / "nope.json"])


def test_a_utf8_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + b'[{"text": "x"}]')
    assert read_file(path).records[0].data == {"text": "x"}


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    path = tmp_path / "u2028.jsonl"
    path.write_text(json.dumps({"text": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert [r.data["text"] for r in read_file(path).records] == ["a\u2028b"]


whitespace = st.text(alphabet=" \t\n\r", max_size=4)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(st.dictionaries(st.sampled_from("abc"), st.text(max_size=5), max_size=2), min_size=1, max_size=5),
    gaps=st.lists(whitespace, min_size=12, max_size=12),
    indent=st.sampled_from([None, 0, 2]),
)
def test_json_array_element_lines_match_where_each_element_starts(
    tmp_path: Path, values: list[dict[str, str]], gaps: list[str], indent: int | None
) -> None:
    text, expected_lines = "[" + gaps[0], []
    for i, value in enumerate(values):
        if i:
            text += gaps[i] + "," + gaps[i + 5]
        expected_lines.append(text.count("\n") + 1)
        text += json.dumps(value, indent=indent)
    text += gaps[11] + "]"
    path = tmp_path / "any.json"
    path.write_text(text, encoding="utf-8")
    records = read_file(path).records
    assert [r.data for r in records] == values
    assert [r.location.line for r in records] == expected_lines
