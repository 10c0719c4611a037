"""`runner validate` and `runner init` as a user and a pre-commit hook call them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from runner.commands import main

ROOT = Path(__file__).resolve().parents[2]
INVALID = Path(__file__).parent / "invalid"


def test_valid_folder_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(ROOT / "jobs")]) == 0
    out = capsys.readouterr()
    assert "quickstart-sft.toml" in out.out
    assert "job file(s) valid" in out.err


def test_invalid_file_exits_one_with_located_messages(capsys: pytest.CaptureFixture[str]) -> None:
    bad = INVALID / "02-unknown-adapter-key.toml"
    assert main(["validate", str(ROOT / "jobs"), str(bad)]) == 1
    out = capsys.readouterr().out
    assert f"{bad}:7:1: adapter.rnak: unknown key 'rnak' (did you mean 'r'?)" in out.splitlines()


def test_usage_errors_exit_two(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["validate"])
    assert exited.value.code == 2
    with pytest.raises(SystemExit) as exited:
        main(["validate", "--format", "yaml", "x.toml"])
    assert exited.value.code == 2


def test_missing_file_is_a_usage_error_not_a_traceback(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml: no such file or folder" in capsys.readouterr().err


def test_json_format_lists_every_problem(capsys: pytest.CaptureFixture[str]) -> None:
    bad = INVALID / "35-several-errors.toml"
    assert main(["validate", "--format", "json", str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["valid"] is False
    (entry,) = report["files"]
    assert [(e["line"], e["column"], e["path"]) for e in entry["errors"]] == [
        (10, 1, "adapter.rnak"),
        (11, 9, "adapter.alpha"),
        (13, 14, "train.batch_size"),
        (14, 17, "train.learning_rate"),
    ]


def test_console_script_runs_without_importing_torch() -> None:
    code = (
        "import sys; from runner.commands import main; rc = main(['validate', '-q', 'jobs']);"
        "assert 'torch' not in sys.modules, 'validate must stay light'; sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_init_writes_a_starter_that_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path)]) == 0
    assert (tmp_path / "jobs" / "example.toml").is_file()
    assert (tmp_path / ".taplo.toml").is_file()
    assert (tmp_path / "schemas" / "job.schema.json").is_file()
    assert main(["validate", str(tmp_path / "jobs")]) == 0
    capsys.readouterr()
    assert main(["init", str(tmp_path)]) == 0
    assert "nothing written" in capsys.readouterr().err
