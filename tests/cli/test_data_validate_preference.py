"""`runner data validate` knows preference data: the four layouts detected, every bad record listed
with its place, and (with a tokenizer) the token lengths of prompts, chosen and rejected replies."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.commands import main
from runner.data.kinds import detect_format
from runner.data.report import DataError

from ..train.tiny import save_tiny_causal_lm

ROOT = Path(__file__).resolve().parents[2]
PREFERENCE = ROOT / "examples" / "data" / "preference"


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("pairs-train.jsonl", "alpaca-preference"),
        ("sharegpt-train.jsonl", "sharegpt-preference"),
        ("messages-train.jsonl", "preference"),
        ("unpaired-train.jsonl", "unpaired-preference"),
    ],
)
def test_each_shipped_preference_layout_is_detected_and_usable(
    name: str, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "validate", str(PREFERENCE / name)]) == 0
    out = capsys.readouterr().out
    assert f"format: {fmt}" in out and " 0 bad" in out


def test_bad_pairs_are_listed_with_their_lines_and_lengths_come_per_part(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_tiny_causal_lm(tmp_path / "model")
    good = {"instruction": "What is 2 + 2?", "input": "", "chosen": "2 + 2 = 4.", "rejected": "I cannot say."}
    rows: list[dict[str, Any]] = [good, {**good, "rejected": good["chosen"]}, {**good, "chosen": ""}, good]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["data", "validate", str(data), "--tokenizer", f"local:{model}", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "alpaca-preference" and report["records_ok"] == 2
    bad = [str(b) for b in report["bad_records"]]
    assert bad[0].startswith(f"{data}:2: the chosen and rejected replies are identical")
    assert bad[1].startswith(f"{data}:3: empty 'chosen' reply")
    assert set(report["parts"]) == {"prompt", "chosen", "rejected"}
    assert main(["data", "validate", str(data), "--tokenizer", f"local:{model}"]) == 1
    out = capsys.readouterr().out
    assert "prompt tokens: min" in out and "rejected tokens: min" in out


def test_a_kto_job_checks_its_data_as_labelled_completions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = save_tiny_causal_lm(tmp_path / "model")
    assert (
        main(
            [
                "data",
                "validate",
                "--job",
                str(ROOT / "jobs" / "pref-kto.toml"),
                "--json",
                "--tokenizer",
                f"local:{model}",
            ]
        )
        == 0
    )
    report = json.loads(capsys.readouterr().out)
    assert report["format"] == "unpaired-preference" and report["examples"] == report["records_ok"]


def test_an_unknown_preference_field_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "data",
            "validate",
            str(PREFERENCE / "pairs-train.jsonl"),
            "--format",
            "alpaca-preference",
            "--fields",
            "output=answer",
        ]
    )
    assert code == 2
    assert "'output' is not a field of format 'alpaca-preference'" in capsys.readouterr().err


def test_sft_detection_names_preference_data_instead_of_failing_every_record() -> None:
    rows = [json.loads(line) for line in (PREFERENCE / "sharegpt-train.jsonl").read_text().splitlines()[:5]]
    with pytest.raises(DataError, match=r"the records are preference data .*sharegpt-preference.*loss.type"):
        detect_format(rows)
