"""`runner data validate`: the pipeline's own data checks as a command, with locations and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.commands import main

ROOT = Path(__file__).resolve().parents[2]


def test_good_file_reports_format_and_count(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", str(ROOT / "examples/data/sft/sharegpt.json")]) == 0
    out = capsys.readouterr().out
    assert "format: sharegpt" in out and "120 read, 120 usable, 0 bad" in out


def test_every_bad_record_is_listed_with_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.jsonl"
    data.write_text(
        '{"question": "a", "answer": "b"}\n'
        '{"question": "c"}\n'
        '{"question": "e", "answer": "f"\n'
        '{"question": "g", "answer": "h"}\n'
    )
    assert (
        main(
            [
                "data",
                "validate",
                str(data),
                "--format",
                "alpaca",
                "--fields",
                "instruction=question",
                "--fields",
                "output=answer",
            ]
        )
        == 1
    )
    out = capsys.readouterr().out
    assert f"{data}:2:" in out and f"{data}:3:" in out
    assert "4 read, 2 usable, 2 bad" in out


def test_unreadable_file_is_a_located_error_not_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "broken.json"
    data.write_bytes(b'[{"instruction": "a", "output": "b"},\n {"instruction": "\xff"}]')
    assert main(["data", "validate", str(data)]) == 1
    err = capsys.readouterr().err
    assert f"{data}:2:" in err and "UTF-8" in err


def test_json_output_for_machines(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "--json", str(ROOT / "examples/data/sft/text.jsonl")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "text" and report["records_ok"] == 120 and report["bad_records"] == []


def test_bad_field_mapping_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "validate", "x.jsonl", "--fields", "instruction"]) == 2
